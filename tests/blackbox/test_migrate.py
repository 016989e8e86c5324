"""`inlet migrate --from <data-dir or SQLite file> --to <URL>` (SPEC §8, issue 12 item 6).

The source is always a single node on SQLite.  The target is what the suite runs on: a fresh
PostgreSQL database (suite postgres) or another SQLite file (suite sqlite).  A node started on the
target must then answer as the single node did: the same routes in the same order, the same keys,
the stored copy under its key, the failed delivery in the dead-letter list, the pending one still
pending with its id, the events; and a copy interrupted half-way finishes when run again."""

import json
import os
import re
import signal
import smtplib
import subprocess
import time
import unittest

import harness
import receivers as rc
from harness import InletTestCase, run_cli, timeout


def api_json(d, method, path, fields=None, auth=True):
    import urllib.parse
    body = urllib.parse.urlencode(fields or []).encode() if fields is not None else None
    hdrs = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    status, _, raw = d.http(method, path, body=body, headers=hdrs, auth=auth)
    return status, (json.loads(raw) if raw else None)


def add_route(d, expression, *actions, priority=0):
    fields = [("priority", str(priority)), ("expression", expression)] + [("action", a) for a in actions]
    status, body = api_json(d, "POST", "/v3/routes", fields)
    assert status == 200, (status, body)
    return body["route"]["id"]


def send(d, subject, body="Body", rcpt="bob@example.com"):
    msg = ("From: Alice <alice@example.org>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\n%s\r\n"
           % (rcpt, subject, os.urandom(6).hex(), body))
    with smtplib.SMTP(d.smtp_host, d.smtp_port, timeout=timeout(30)) as s:
        s.sendmail("alice@example.org", [rcpt], msg.encode())


def wait(pred, wait_s, what):
    deadline = time.monotonic() + timeout(wait_s)
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("%s not reached within %ss" % (what, wait_s))


class Migrate(InletTestCase):
    TABLES = ("routes", "messages", "recipients", "deliveries", "attempts", "stored", "events")

    def source(self, **kw):
        """A single node on SQLite, whatever the suite's backend."""
        return self.daemon(database_url="", **kw)

    def target_url(self):
        """An empty database of the suite's backend (dropped when the test ends)."""
        if harness.PG:
            url = harness.pg_create_database()
            self.pg_databases[self.tmp_path("target-%s" % os.urandom(4).hex())] = url
            return url
        path = self.tmp_path("target-%s" % os.urandom(4).hex(), "inlet.db")
        os.makedirs(os.path.dirname(path), mode=0o700)
        return "sqlite:" + path

    def node_on(self, url, **kw):
        """A node started on database `url` (its data dir holds nothing but its keys file)."""
        return self.daemon(database_url=url, **kw)

    def migrate(self, src, url, expect=0):
        r = run_cli(["migrate", "--from", src, "--to", url], timeout_s=120)
        self.assertEqual(r.returncode, expect, r.stdout + r.stderr)
        return r

    def counts(self, d):
        return {t: d.query("SELECT count(*) AS n FROM %s" % t)[0]["n"] for t in self.TABLES}

    def test_a_node_on_the_target_answers_as_the_single_node_did(self):
        failing = rc.WebhookReceiver(default=406)
        later = rc.WebhookReceiver(default=503)
        self.addCleanup(failing.stop)
        self.addCleanup(later.stop)
        src = self.source(args=["--retry-schedule", "3600"])
        keys = src.keys()
        routes = [add_route(src, 'match_header("subject", "fail")', 'forward("%s")' % failing.url(), priority=1),
                  add_route(src, 'match_header("subject", "later")', 'forward("%s")' % later.url(), priority=1),
                  add_route(src, "catch_all()", "store()", priority=5)]
        for subject in ("fail", "later", "kept"):
            send(src, subject)
        wait(lambda: src.query("SELECT 1 FROM deliveries WHERE state = 'failed'"), 20, "the failed delivery")
        wait(lambda: src.query("SELECT 1 FROM deliveries WHERE state = 'pending' AND attempts = 1"), 20,
             "the pending delivery's first attempt")
        wait(lambda: src.query("SELECT 1 FROM stored"), 20, "the stored copy")
        (key,) = [r["key"] for r in src.query("SELECT key FROM stored")]
        (failed_id,) = [r["id"] for r in src.query("SELECT id FROM deliveries WHERE state = 'failed'")]
        (pending_id,) = [r["id"] for r in src.query("SELECT id FROM deliveries WHERE state = 'pending'")]
        before = self.counts(src)
        events_before = api_json(src, "GET", "/v3/example.com/events?limit=300")[1]["items"]
        self.assertEqual(src.stop(), 0)

        url = self.target_url()
        r = self.migrate(src.data_dir, url)
        for t in ("meta",) + self.TABLES:
            self.assertRegex(r.stdout, r"(?m)^  %s +\d+ rows$" % t)

        node = self.node_on(url)
        self.assertEqual(self.counts(node), before)
        # Keys: the single node's, from the database (the node's own data dir had none).
        self.assertEqual(node.keys(), keys)
        self.assertEqual(node.http("GET", "/v3/routes", auth=keys["api_key"])[0], 200)
        status, body = api_json(node, "GET", "/v3/routes")
        self.assertEqual([r["id"] for r in body["items"]], routes)
        # The stored copy, under its key.
        status, body = api_json(node, "GET", "/v3/domains/example.com/messages/%s" % key)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["subject"], "kept")
        # The dead-letter list, and the pending delivery with its id.
        status, body = api_json(node, "GET", "/v3/deliveries?state=failed")
        self.assertEqual([d["id"] for d in body["items"]], [failed_id])
        status, body = api_json(node, "GET", "/v3/deliveries?state=pending")
        self.assertEqual([d["id"] for d in body["items"]], [pending_id])
        # The events, the same ones.
        status, body = api_json(node, "GET", "/v3/example.com/events?limit=300")
        self.assertEqual(status, 200, body)
        strip = lambda evs: [(e.get("event"), e.get("recipient"), e.get("timestamp")) for e in evs]
        self.assertEqual(strip(body["items"]), strip(events_before))
        # New routes get a place after the copied ones (the generated keys moved past them).
        new = add_route(node, "catch_all()", "stop()", priority=5)
        status, body = api_json(node, "GET", "/v3/routes")
        self.assertEqual([r["id"] for r in body["items"]], routes + [new])
        self.assertEqual(node.stop(), 0)

        # Run again: nothing to do.  Another source into the same target: refused.
        r = self.migrate(src.data_dir, url)
        self.assertIn("nothing to do", r.stdout)
        other = self.source()
        self.assertEqual(other.stop(), 0)
        r = self.migrate(other.data_dir, url, expect=1)
        self.assertIn("already holds a migration from", r.stderr)

    def test_refuses_a_target_that_holds_data(self):
        src = self.source()
        add_route(src, "catch_all()", "store()")
        self.assertEqual(src.stop(), 0)
        url = self.target_url()
        node = self.node_on(url)  # a node started first: its keys and nothing else
        self.assertEqual(node.stop(), 0)
        r = self.migrate(src.data_dir, url, expect=1)
        self.assertIn("already holds data", r.stderr)
        self.assertEqual(node.query("SELECT count(*) AS n FROM routes")[0]["n"], 0)

    def test_refuses_a_running_source_and_bad_arguments(self):
        src = self.source()
        url = self.target_url()
        r = self.migrate(src.data_dir, url, expect=1)
        self.assertIn("in use by another inlet", r.stderr)
        r = self.migrate(self.tmp_path("nothing-here"), url, expect=1)
        self.assertIn("nothing-here", r.stderr)
        for args in (["--from", src.data_dir], ["--to", url], ["--from", src.data_dir, "--to", "mysql://u:pw-x@h/d"]):
            r = run_cli(["migrate"] + args)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertNotIn("pw-x", r.stdout + r.stderr)

    def test_interrupted_copy_finishes_when_run_again(self):
        # Enough message bytes for several pages (STORE_COPY_PAGE_BYTES, 4 MiB): the copy is
        # killed right after its first page of messages committed.
        src = self.source()
        add_route(src, "catch_all()", "store()")
        filler = ("x" * 76 + "\r\n") * 1300  # ~100 KiB a message
        n = 120
        for i in range(n):
            send(src, "big %d" % i, body=filler)
        wait(lambda: src.query("SELECT count(*) AS n FROM stored")[0]["n"] == n, 60, "every copy stored")
        before = self.counts(src)
        raw_before = {r["id"]: r["raw"] for r in src.query("SELECT id, raw FROM messages")}
        self.assertEqual(src.stop(), 0)

        url = self.target_url()
        p = subprocess.Popen([harness.INLET_BIN, "migrate", "--from", src.data_dir, "--to", url],
                             env=harness.clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            lines = []
            deadline = time.monotonic() + timeout(60)
            while time.monotonic() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if re.match(r"^  messages +\d+ rows copied$", line):
                    p.send_signal(signal.SIGKILL)
                    break
        finally:
            if p.poll() is None:
                p.kill()
            p.wait(timeout(10))
            p.stdout.close()
            p.stderr.close()
        self.assertEqual(p.returncode, -signal.SIGKILL, "".join(lines))
        probe = self.node_on(url, start=False)
        partial = probe.query("SELECT count(*) AS n FROM messages")[0]["n"]
        self.assertLess(partial, n, "the copy was not interrupted half-way")
        self.assertEqual(probe.query("SELECT count(*) AS n FROM meta WHERE key = 'migration_done'")[0]["n"], 0)

        r = self.migrate(src.data_dir, url)
        self.assertIn("resuming the interrupted migration", r.stdout)
        node = self.node_on(url)
        self.assertEqual(self.counts(node), before)
        raw_after = {r["id"]: r["raw"] for r in node.query("SELECT id, raw FROM messages")}
        self.assertEqual(raw_after, raw_before)


if __name__ == "__main__":
    unittest.main(verbosity=2)
