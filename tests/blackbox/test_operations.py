"""Black-box: what an operator relies on (issue 7) — per-recipient events after a receiver outage,
the dead-letter list and its replay, Prometheus metrics that move with the mail, and `inlet backup`
giving a database that `inlet serve` starts from."""

import json
import os
import re
import shutil
import smtplib
import time
import unittest
import urllib.parse

import harness
from harness import InletTestCase, timeout
from receivers import WebhookReceiver

SIGNING_KEY = "operations-test-signing-key"


def form(fields):
    return urllib.parse.urlencode(fields).encode(), "application/x-www-form-urlencoded"


def api(d, method, path, fields=None):
    headers, body = {}, None
    if fields is not None:
        body, ctype = form(fields)
        headers["Content-Type"] = ctype
    status, hdrs, raw = d.http(method, path, body=body, headers=headers)
    return status, hdrs, raw


def api_json(d, method, path, fields=None):
    status, hdrs, raw = api(d, method, path, fields)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        raise AssertionError("not JSON (%d): %r" % (status, raw[:300]))


def add_route(d, expression, *actions, priority=0):
    fields = [("priority", str(priority)), ("expression", expression)] + [("action", a) for a in actions]
    status, body = api_json(d, "POST", "/v3/routes", fields)
    assert status == 200, (status, body)
    return body["route"]["id"]


def send(d, sender, rcpts, subject="Hello"):
    msg = ("From: Alice <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\nBody\r\n"
           % (sender, ", ".join(rcpts), subject, subject.replace(" ", "-")))
    with smtplib.SMTP(d.smtp_host, d.smtp_port, timeout=timeout(10)) as s:
        s.sendmail(sender, rcpts, msg.encode())
    ids = re.findall(r"queued id=([0-9a-f]{24})", d.log_text())
    return ids[-1]


def wait(pred, wait_s, what):
    deadline = time.monotonic() + timeout(wait_s)
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("%s not reached within %ss" % (what, wait_s))


# A sample line of the text format: name{labels} value
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$')


def parse_metrics(text):
    """Parses Prometheus text format 0.0.4 strictly: every line a comment (# HELP / # TYPE) or a
    sample; every sample's family declared by a TYPE line before it.  {name{labels}: value}."""
    types, out = {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        m = SAMPLE_RE.match(line)
        assert m, "not a sample line: %r" % line
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or family in types, "sample before its TYPE: %r" % line
        out[name + (m.group(2) or "")] = float(m.group(3))
    return out


class OperationsTest(InletTestCase):

    def events(self, d, **q):
        status, body = api_json(d, "GET", "/v3/example.com/events?" + urllib.parse.urlencode(q))
        self.assertEqual(status, 200, body)
        return body["items"]

    def test_outage_events_dead_letter_and_replay(self):
        good = WebhookReceiver()
        bad = WebhookReceiver(default=500)
        self.addCleanup(good.stop)
        self.addCleanup(bad.stop)
        d = self.daemon(args=["--signing-key", SIGNING_KEY, "--retry-schedule", "1"])
        add_route(d, 'match_recipient("ok@example.com")', 'forward("%s")' % good.url("/ok"))
        add_route(d, 'match_recipient("down@example.com")', 'forward("%s")' % bad.url("/down"))
        mid = send(d, "alice@example.org", ["ok@example.com", "down@example.com"], "outage")

        good.wait_for(1, timeout(10))
        bad.wait_for(2, timeout(15))  # the first attempt and the one retry of the schedule

        def failed_list():
            status, body = api_json(d, "GET", "/v3/deliveries?state=failed")
            self.assertEqual(status, 200, body)
            return body["items"]
        items = wait(failed_list, 15, "the delivery to be failed")
        self.assertEqual(len(items), 1, items)
        dl = items[0]
        self.assertEqual(dl["recipient"], "down@example.com")
        self.assertEqual(dl["target"], bad.url("/down"))
        self.assertEqual(dl["attempts"], 2)
        self.assertEqual(dl["last_status"], 500)
        self.assertIn("500", dl["last_error"])

        # Per-recipient events, oldest first.
        down = [(e["event"], e.get("severity", "")) for e in
                self.events(d, recipient="down@example.com", ascending="yes")]
        self.assertEqual(down, [("accepted", ""), ("failed", "temporary"), ("failed", "permanent")], down)
        ok_events = self.events(d, recipient="ok@example.com", ascending="yes")
        ok = [e["event"] for e in ok_events]
        self.assertEqual(ok, ["accepted", "delivered"], ok)
        self.assertEqual(ok_events[0]["outcome"], "routed")
        failed = self.events(d, event="failed", ascending="yes")
        self.assertEqual(len(failed), 2)
        for e in failed:
            self.assertEqual(e["delivery-status"]["code"], 500, e)
            self.assertIsInstance(e["timestamp"], float)
        # The message's own id filters too.
        self.assertEqual(len(self.events(d, **{"inlet-id": mid})), 5)

        # The receiver is back: the replay delivers the dead letter, with the same delivery id.
        bad.set_script([], default=200)
        status, body = api_json(d, "POST", "/v3/deliveries/%s/retry" % dl["id"])
        self.assertEqual(status, 200, body)
        reqs = bad.wait_for(3, timeout(10))
        self.assertEqual(reqs[2].header("X-Inlet-Delivery"), dl["id"])
        down = wait(lambda: (lambda ev: ev if ev[-1] == "delivered" else None)(
            [e["event"] for e in self.events(d, recipient="down@example.com", ascending="yes")]),
            10, "the delivered event")
        self.assertEqual(down, ["accepted", "failed", "failed", "delivered"], down)
        self.assertEqual(failed_list(), [])
        # A delivery that is not failed cannot be replayed.
        status, body = api_json(d, "POST", "/v3/deliveries/%s/retry" % dl["id"])
        self.assertEqual(status, 404, body)
        self.assertEqual(body, {"message": "Delivery not found"})

    def test_metrics_move_with_the_mail(self):
        hook = WebhookReceiver()
        self.addCleanup(hook.stop)
        d = self.daemon(args=["--signing-key", SIGNING_KEY])
        add_route(d, "catch_all()", 'forward("%s")' % hook.url())
        status, hdrs, raw = api(d, "GET", "/metrics")
        self.assertEqual(status, 200, raw)
        self.assertTrue(hdrs.get("Content-Type", "").startswith("text/plain"), hdrs)
        before = parse_metrics(raw.decode())
        for name in ("inlet_store_committed_messages_total", "inlet_messages_routed_total",
                     'inlet_delivery_attempts_total{outcome="delivered"}', "inlet_deliveries_in_flight",
                     "inlet_deliveries_pending", "inlet_stored_copies", "inlet_database_bytes",
                     "inlet_smtp_connections_total"):
            self.assertIn(name, before, sorted(before))
        for i in range(3):
            send(d, "alice@example.org", ["bob@example.com"], "metrics %d" % i)
        hook.wait_for(3, timeout(10))

        def moved():
            m = parse_metrics(api(d, "GET", "/metrics")[2].decode())
            return m if m['inlet_delivery_attempts_total{outcome="delivered"}'] >= 3 else None
        after = wait(moved, 10, "the delivered counter to reach 3")
        self.assertEqual(after["inlet_store_committed_messages_total"]
                         - before["inlet_store_committed_messages_total"], 3)
        self.assertEqual(after["inlet_messages_routed_total"] - before["inlet_messages_routed_total"], 3)
        self.assertGreaterEqual(after["inlet_smtp_connections_total"] - before["inlet_smtp_connections_total"], 3)
        # Per message: EHLO, MAIL, RCPT and the end of DATA answer 250; DATA 354, QUIT 221.
        self.assertGreaterEqual(after['inlet_smtp_replies_total{code="250"}'], 3 * 4)
        self.assertGreaterEqual(after['inlet_smtp_replies_total{code="354"}'], 3)
        self.assertGreater(after["inlet_database_bytes"], 0)
        # Without credentials: 401, like every API endpoint but /healthz.
        status, _, _ = d.http("GET", "/metrics", auth=None)
        self.assertEqual(status, 401)

    def test_dropped_recipient_event_and_sighup(self):
        d = self.daemon()
        add_route(d, 'match_recipient("kept@example.com")', "store()")
        send(d, "alice@example.org", ["kept@example.com", "nobody@example.com"], "dropped")
        def accepted():
            ev = self.events(d, event="accepted", ascending="yes")
            return ev if len(ev) == 2 else None
        ev = {e["recipient"]: e for e in wait(accepted, 10, "two accepted events")}
        self.assertEqual(ev["kept@example.com"]["outcome"], "routed")
        self.assertEqual(ev["nobody@example.com"]["outcome"], "dropped")
        # SIGHUP does not stop the engine (settings are read at start): it says so and serves on.
        import signal
        d.send_signal(signal.SIGHUP)
        d.wait_log(lambda l: "SIGHUP ignored" in l.raw, 5, "the SIGHUP warning")
        self.assertTrue(d.running())
        send(d, "alice@example.org", ["kept@example.com"], "after sighup")

    def test_threads_are_named(self):
        """top -H, ps -L and perf tell inlet's threads apart by name (log_thread_name())."""
        d = self.daemon()
        want = {"writer": 1, "route-first": 2, "route": 2, "checkpointer": 0 if harness.PG else 1,
                "pg-listen": 1 if harness.PG else 0}

        def names():
            out = []
            for tid in os.listdir("/proc/%d/task" % d.proc.pid):
                with open("/proc/%d/task/%s/comm" % (d.proc.pid, tid)) as f:
                    out.append(f.read().strip())
            return out

        # A thread names itself when it begins to run, which may come after the daemon's "ready".
        deadline = time.monotonic() + timeout(5)
        while {k: names().count(k) for k in want} != want and time.monotonic() < deadline:
            time.sleep(0.05)
        got = names()
        self.assertEqual({k: got.count(k) for k in want}, want, got)

    @harness.sqlite_only("inlet backup copies the SQLite database; PostgreSQL has pg_dump")
    def test_backup_restores_routes_and_stored_copies(self):
        d = self.daemon()
        rid = add_route(d, "catch_all()", "store()")
        send(d, "alice@example.org", ["keep@example.com"], "backed up")
        key = wait(lambda: harness.query(d, "SELECT key FROM stored"), 10, "a stored copy")[0][0]
        backup = self.tmp_path("backup.db")
        r = harness.run_cli(["backup", backup, "--data-dir", d.data_dir])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.getsize(backup) > 0)
        # A second backup to the same file is refused: nothing is overwritten by mistake.
        r2 = harness.run_cli(["backup", backup, "--data-dir", d.data_dir])
        self.assertNotEqual(r2.returncode, 0)
        d.stop()

        restored_dir = self.tmp_path("restored")
        os.makedirs(restored_dir, mode=0o700)
        shutil.copy(backup, os.path.join(restored_dir, "inlet.db"))
        os.chmod(os.path.join(restored_dir, "inlet.db"), 0o600)
        shutil.copy(os.path.join(d.data_dir, "keys"), os.path.join(restored_dir, "keys"))
        d2 = self.daemon(data_dir=restored_dir)
        status, body = api_json(d2, "GET", "/v3/routes")
        self.assertEqual(status, 200)
        self.assertEqual([r["id"] for r in body["items"]], [rid])
        status, body = api_json(d2, "GET", "/v3/domains/example.com/messages/%s" % key)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["subject"], "backed up")


if __name__ == "__main__":
    unittest.main()
