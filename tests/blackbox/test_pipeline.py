"""The routing pipeline (SPEC §4 "Evaluation", "Deliveries", §2 postmaster, §6 storage keys): routes
created through the API, messages sent over SMTP, the outcome read back from the database; and
recovery of messages committed but not routed (INLET_TEST_PAUSE_PIPELINE=1 is the test hook that
keeps the workers from taking anything until SIGUSR1, so that messages stay 'accepted'), and the
retry of an outcome that could not be written."""

import json
import os
import re
import signal
import time
import urllib.parse

import harness
from harness import InletTestCase, make_message, queued_id

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{24}$")
PAUSE = {"INLET_TEST_PAUSE_PIPELINE": "1"}


def create_route(d, expression, actions, priority=0, description=""):
    """POST /v3/routes (urlencoded); returns the route id."""
    fields = [("priority", str(priority)), ("description", description), ("expression", expression)]
    fields += [("action", a) for a in actions]
    status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, (status, body)
    return json.loads(body)["route"]["id"]


def delete_route(d, route_id):
    status, _, body = d.http("DELETE", "/v3/routes/" + route_id)
    assert status == 200, (status, body)


def send(d, rcpts, body=None, sender="alice@sender.test"):
    with d.session() as s:
        code, lines = s.transaction(sender, rcpts, body or make_message())
        assert code == 250, lines
        s.cmd("QUIT")
    return queued_id(lines)


def wait_routed(d, msg_id, wait_s=10):
    return d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("routed ") and l.kv.get("id") == msg_id,
                      wait_s, "'engine routed id=%s'" % msg_id)


class Outcome(InletTestCase):
    """One message, several recipients, several routes: what each recipient gets."""

    def setUp(self):
        super().setUp()
        d = self.d = self.daemon(domains=["example.com", "other.test"], args=["--store-ttl", "1000"])
        self.ra = create_route(d, r'match_recipient("(?P<user>[a-z]+)@example\.com")',
                               [r'forward("https://hooks.test/u/\g<user>?r=\1")', 'forward("https://hooks.test/all")'],
                               priority=0)
        self.rb = create_route(d, r'match_recipient("(.*)@example\.com")',
                               ['forward("https://hooks.test/all")', r'store(notify="https://hooks.test/n/\1")'],
                               priority=1)
        self.rc = create_route(d, r'match_recipient("vip@example\.com")', ["stop()"], priority=2)
        self.rd = create_route(d, "catch_all()", ['forward("https://hooks.test/catch/mime?x=1")'], priority=3)
        self.re_ = create_route(d, 'match_header("subject", "(?i).*urgent")', ['forward("ops@example.org")'],
                                priority=4)
        self.t0 = time.time()
        self.msg_id = send(d, ["bob@example.com", "vip@example.com", "x@other.test"],
                           make_message(subject="Urgent news"))
        line = wait_routed(d, self.msg_id)
        self.assertEqual(line.kv["rcpts"], "3")
        self.assertEqual(line.kv["dropped"], "0")

    def rows(self, table, rcpt):
        return harness.query(self.d, "SELECT * FROM %s WHERE message_id = ? AND recipient = ?" % table,
                             (self.msg_id, rcpt))

    def deliveries(self, rcpt):
        return sorted((r["kind"], r["target"], r["format"], tuple(json.loads(r["route_ids"])))
                      for r in self.rows("deliveries", rcpt))

    def test_message_state_routed(self):
        self.assertEqual(self.message(self.d, self.msg_id)["state"], "routed")
        rcpts = harness.query(self.d, "SELECT recipient, outcome FROM recipients WHERE message_id = ?",
                              (self.msg_id,))
        self.assertEqual(sorted((r[0], r[1]) for r in rcpts),
                         [("bob@example.com", "routed"), ("vip@example.com", "routed"), ("x@other.test", "routed")])

    def test_matched_routes_captures_and_resolved_actions(self):
        (row,) = self.rows("recipients", "bob@example.com")
        routes = json.loads(row["routes"])
        self.assertEqual([r["id"] for r in routes], [self.ra, self.rb, self.re_])
        self.assertEqual(routes[0]["captures"], {"1": "bob", "user": "bob"})
        self.assertEqual(routes[0]["actions"],
                         ['forward("https://hooks.test/u/bob?r=bob")', 'forward("https://hooks.test/all")'])
        self.assertEqual(routes[1]["captures"], {"1": "bob"})
        self.assertEqual(routes[1]["actions"][1], 'store(notify="https://hooks.test/n/bob")')
        self.assertEqual(routes[2]["captures"], {})
        self.assertEqual(json.loads(row["warnings"]), [])

    def test_deliveries_deduplicated_and_formats(self):
        self.assertEqual(self.deliveries("bob@example.com"), sorted([
            ("url", "https://hooks.test/u/bob?r=bob", "", (self.ra,)),
            ("url", "https://hooks.test/all", "", (self.ra, self.rb)),   # two routes, one delivery
            ("address", "ops@example.org", "", (self.re_,)),
            ("notify", "https://hooks.test/n/bob", "", (self.rb,)),      # store(notify=...)
        ]))
        for r in harness.query(self.d, "SELECT * FROM deliveries WHERE message_id = ?", (self.msg_id,)):
            self.assertRegex(r["id"], r"^[0-9a-f]{24}$")
            # The deliverer may have tried already (hooks.test does not resolve; no relay).
            self.assertIn(r["state"], ("pending", "failed"))

    def test_stop_ends_evaluation(self):
        # vip: a, b, then c's stop(): the header route after it is never evaluated.
        (row,) = self.rows("recipients", "vip@example.com")
        self.assertEqual([r["id"] for r in json.loads(row["routes"])], [self.ra, self.rb, self.rc])
        self.assertEqual(self.deliveries("vip@example.com"), sorted([
            ("url", "https://hooks.test/u/vip?r=vip", "", (self.ra,)),
            ("url", "https://hooks.test/all", "", (self.ra, self.rb)),
            ("notify", "https://hooks.test/n/vip", "", (self.rb,)),
        ]))

    def test_catch_all_per_recipient_and_mime_format(self):
        # Nothing matched x@other.test before catch_all(): it matches for this recipient only.
        (row,) = self.rows("recipients", "x@other.test")
        self.assertEqual([r["id"] for r in json.loads(row["routes"])], [self.rd, self.re_])
        self.assertEqual(self.deliveries("x@other.test"), sorted([
            ("url", "https://hooks.test/catch/mime?x=1", "mime", (self.rd,)),  # the path ends in mime
            ("address", "ops@example.org", "", (self.re_,)),
        ]))
        self.assertEqual(self.rows("stored", "x@other.test"), [])

    def test_stored_copies(self):
        for rcpt in ("bob@example.com", "vip@example.com"):
            (c,) = self.rows("stored", rcpt)
            self.assertRegex(c["key"], KEY_RE)
            self.assertEqual(c["domain"], "example.com")
            self.assertEqual(c["route_id"], self.rb)
            self.assertEqual(c["notify"], "https://hooks.test/n/" + rcpt.split("@")[0])
            self.assertEqual(c["format"], "")
            self.assertAlmostEqual(c["expires_at"], self.t0 + 1000, delta=60)
        keys = [r[0] for r in harness.query(self.d, "SELECT key FROM stored")]
        self.assertEqual(len(set(keys)), len(keys))


class DroppedAndPostmaster(InletTestCase):
    def test_dropped_and_postmaster_stored(self):
        d = self.daemon()
        route = create_route(d, r'match_recipient("bob@example\.com")', ['forward("https://hooks.test/bob")'])
        with d.session() as s:
            code, lines = s.transaction("alice@sender.test", ["bob@example.com", "carol@example.com",
                                                              "PostMaster@Example.COM"], make_message())
            self.assertEqual(code, 250, lines)
            msg_id = queued_id(lines)
            code, lines = s.transaction("alice@sender.test", ["postmaster"], make_message(), ehlo=None)
            self.assertEqual(code, 250, lines)
            bare_id = queued_id(lines)
        line = wait_routed(d, msg_id)
        self.assertEqual((line.kv["rcpts"], line.kv["deliveries"], line.kv["stored"], line.kv["dropped"]),
                         ("3", "1", "1", "1"))
        d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("dropped ") and l.kv.get("id") == msg_id
                   and l.kv.get("rcpt") == "carol@example.com", 5, "'engine dropped ... rcpt=carol@example.com'")
        rows = {r["recipient"]: r for r in harness.query(
            d, "SELECT * FROM recipients WHERE message_id = ?", (msg_id,))}
        self.assertEqual(rows["bob@example.com"]["outcome"], "routed")
        self.assertEqual(rows["carol@example.com"]["outcome"], "dropped")
        self.assertEqual(json.loads(rows["carol@example.com"]["routes"]), [])
        # Postmaster (RFC 5321 §4.5.1) matched by no route: kept, so not dropped either.
        self.assertEqual(rows["PostMaster@Example.COM"]["outcome"], "routed")
        (copy,) = harness.query(d, "SELECT * FROM stored WHERE message_id = ?", (msg_id,))
        self.assertEqual((copy["recipient"], copy["route_id"], copy["domain"]),
                         ("PostMaster@Example.COM", "", "example.com"))
        self.assertRegex(copy["key"], KEY_RE)
        (dl,) = harness.query(d, "SELECT * FROM deliveries WHERE message_id = ?", (msg_id,))
        self.assertEqual((dl["recipient"], dl["target"], json.loads(dl["route_ids"])),
                         ("bob@example.com", "https://hooks.test/bob", [route]))
        # The bare <postmaster> too.
        line = wait_routed(d, bare_id)
        self.assertEqual((line.kv["stored"], line.kv["dropped"]), ("1", "0"))
        self.assertEqual(self.message(d, msg_id)["state"], "routed")

    def test_no_routes_everything_dropped(self):
        d = self.daemon()
        msg_id = send(d, ["a@example.com", "b@example.com"])
        line = wait_routed(d, msg_id)
        self.assertEqual((line.kv["deliveries"], line.kv["stored"], line.kv["dropped"]), ("0", "0", "2"))
        self.assertEqual(self.message(d, msg_id)["state"], "routed")
        self.assertEqual(sorted(r[0] for r in harness.query(
            d, "SELECT outcome FROM recipients WHERE message_id = ?", (msg_id,))), ["dropped", "dropped"])


class ParseWarnings(InletTestCase):
    def test_parse_warnings_recorded(self):
        d = self.daemon()
        body = (b"From: <a@sender.test>\r\nSubject: odd\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\ncaf\xe9\r\n")
        msg_id = send(d, ["bob@example.com"], body)
        wait_routed(d, msg_id)
        row = self.message(d, msg_id)
        path = self.tmp_path("m.eml")
        with open(path, "wb") as f:
            f.write(bytes(row["raw"]))
        out = harness.run_cli(["parse", path])
        self.assertEqual(out.returncode, 0, out.stderr)
        expected = json.loads(out.stdout)["parse-warnings"]
        self.assertTrue(expected, "the message was meant to give a parse warning")
        self.assertEqual(json.loads(row["parse_warnings"]), expected)


class RouteChanges(InletTestCase):
    def test_next_message_follows_a_change(self):
        d = self.daemon()
        first = create_route(d, "catch_all()", ['forward("https://hooks.test/one")'])
        id1 = send(d, ["bob@example.com"])
        wait_routed(d, id1)
        delete_route(d, first)
        second = create_route(d, "catch_all()", ['forward("https://hooks.test/two")'])
        id2 = send(d, ["bob@example.com"])   # the very next message
        wait_routed(d, id2)
        got = {r["message_id"]: (r["target"], json.loads(r["route_ids"])) for r in harness.query(
            d, "SELECT * FROM deliveries")}
        self.assertEqual(got, {id1: ("https://hooks.test/one", [first]), id2: ("https://hooks.test/two", [second])})


class Recovery(InletTestCase):
    def test_accepted_messages_routed_at_next_start(self):
        d = self.daemon(env=PAUSE)
        d.wait_log(lambda l: l.topic == "engine" and "paused" in l.rest, 5, "'pipeline paused'")
        create_route(d, "catch_all()", ["store()"])
        ids = [send(d, ["r%d@example.com" % i]) for i in range(3)]
        time.sleep(harness.timeout(0.3))
        self.assertEqual({self.message(d, i)["state"] for i in ids}, {"accepted"})
        # SIGTERM: queued messages are left 'accepted', the exit is clean.
        self.assertEqual(d.stop(), 0)
        d.extra_env = {}
        d.start()
        rec = [l for l in d.find_lines("info", "engine") if "recovered" in l.kv]
        self.assertEqual([l.kv["recovered"] for l in rec], ["3"])
        for i in ids:
            line = wait_routed(d, i)
            self.assertEqual(line.kv.get("via"), "scan")
            self.assertEqual(line.kv["stored"], "1")
        fin = d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("recovery finished"), 10,
                         "'recovery finished'")
        self.assertEqual(fin.kv["routed"], "3")
        text = [l.raw for l in d.lines()]
        first_routed = min(i for i, l in enumerate(text) if " routed id=" in l)
        self.assertLess(min(i for i, l in enumerate(text) if "recovered=3" in l), first_routed)
        self.assertEqual({self.message(d, i)["state"] for i in ids}, {"routed"})
        self.assertEqual(len(harness.query(d, "SELECT * FROM stored")), 3)

    def test_kill9_before_routing(self):
        d = self.daemon(env=PAUSE)
        msg_id = send(d, ["bob@example.com"])
        d.kill9()
        d.extra_env = {}
        d.start()
        rec = [l for l in d.find_lines("info", "engine") if "recovered" in l.kv]
        self.assertEqual(rec[0].kv["recovered"], "1")
        wait_routed(d, msg_id)
        self.assertEqual(self.message(d, msg_id)["state"], "routed")
        # Routed once: a third start has nothing to recover.
        self.assertEqual(d.stop(), 0)
        d.start()
        rec = [l for l in d.find_lines("info", "engine") if "recovered" in l.kv]
        self.assertEqual(rec[0].kv["recovered"], "0")

    def test_many_pages(self):
        """More accepted messages than fit in memory at once are routed page by page (the page
        is 1000 ids; 40 messages only show that every one of them is found)."""
        d = self.daemon(env=PAUSE)
        results = harness.run_concurrent(
            d, 4, 10, lambda w, i: ("s@sender.test", ["r%d-%d@example.com" % (w, i)], make_message(), None))
        self.assertEqual(d.stop(), 0)
        d.extra_env = {}
        d.start()
        d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("recovery finished"), 30,
                   "'recovery finished'")
        states = harness.query(d, "SELECT state, count(*) FROM messages GROUP BY state")
        self.assertEqual([tuple(r) for r in states], [("routed", len(results))])


def metric(d, name):
    """One value of GET /metrics."""
    status, _, body = d.http("GET", "/metrics")
    assert status == 200, (status, body)
    for l in body.decode().splitlines():
        if l.startswith(name + " "):
            return float(l.split()[1])
    raise AssertionError("no %s in /metrics" % name)


class OneCommit(InletTestCase):
    """Issue 13: a message a worker can route at once is routed before its commit, and the message
    and its outcome go to the disk in one transaction: one commit per message, not two, and the
    250 means the outcome is durable too."""

    def test_message_and_its_outcome_are_one_commit(self):
        d = self.daemon()
        create_route(d, "catch_all()", ["store()"])
        before = metric(d, "inlet_store_commits_total")
        ids = []
        for i in range(5):  # one at a time, each routed before the next: no batch holds two
            ids.append(send(d, ["r%d@example.com" % i]))
            wait_routed(d, ids[-1])
        self.assertEqual(metric(d, "inlet_store_commits_total") - before, 5)
        for i in ids:
            self.assertEqual(self.message(d, i)["state"], "routed")

    def test_outcome_durable_at_the_250(self):
        """kill -9 right after the 250: the next start has nothing to recover, the copy is there."""
        d = self.daemon()
        create_route(d, "catch_all()", ["store()"])
        msg_id = send(d, ["bob@example.com"])
        d.kill9()
        d.start()
        rec = [l for l in d.find_lines("info", "engine") if "recovered" in l.kv]
        self.assertEqual(rec[-1].kv["recovered"], "0")
        self.assertEqual(self.message(d, msg_id)["state"], "routed")
        self.assertEqual(len(harness.query(d, "SELECT * FROM stored WHERE message_id = ?", (msg_id,))), 1)

    def test_outcome_failing_in_the_messages_commit_is_retried(self):
        """The outcome fails inside the message's own transaction (a trigger refuses the state
        change): the message alone commits, its sender gets the 250, and the routing is retried
        like any failed outcome (INLET_TEST_RETRY_SECONDS=1)."""
        d = self.daemon(env=dict(INLET_TEST_RETRY_SECONDS="1"))
        create_route(d, "catch_all()", ["store()"])
        if harness.PG:
            harness.query(d, "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
                             " BEGIN RAISE EXCEPTION 'refused by test_refuse'; END $$")
            harness.query(d, "CREATE TRIGGER test_refuse BEFORE UPDATE ON messages FOR EACH ROW"
                             " EXECUTE FUNCTION test_refuse()")
        else:
            harness.query(d, "CREATE TRIGGER main.test_refuse BEFORE UPDATE ON main.messages"
                             " BEGIN SELECT RAISE(ABORT, 'refused by test_refuse'); END")
        msg_id = send(d, ["bob@example.com"])
        warn = d.wait_log(lambda l: l.level == "warn" and l.topic == "engine" and l.rest.startswith("not routed")
                          and l.kv.get("id") == msg_id, 10, "'engine not routed id=%s'" % msg_id)
        self.assertIn("stays accepted", warn.rest)
        self.assertEqual(self.message(d, msg_id)["state"], "accepted")
        harness.query(d, "DROP TRIGGER test_refuse ON messages" if harness.PG else "DROP TRIGGER main.test_refuse")
        line = wait_routed(d, msg_id, 15)
        self.assertEqual(line.kv["stored"], "1")
        self.assertEqual(self.message(d, msg_id)["state"], "routed")


class Retry(InletTestCase):
    def test_outcome_write_fails_then_is_retried(self):
        """A full disk while the outcome is written: a warning, the message stays 'accepted', and
        the retry timer routes it once space returns (INLET_TEST_RETRY_SECONDS=1 shortens the
        period; PIPELINE_RETRY_SECONDS is 30).  ENOSPC comes from the LD_PRELOAD shim."""
        flag = self.tmp_path("enospc")
        # No flag file yet: no ENOSPC.  The pipeline waits for SIGUSR1 (test hook).  On
        # PostgreSQL the server says "disk full" (SQLSTATE 53100) from a trigger instead.
        d = self.daemon(env=dict(PAUSE, INLET_TEST_RETRY_SECONDS="1"), shim=not harness.PG,
                        shim_enospc=None if harness.PG else flag)
        create_route(d, "catch_all()", ["store()"])
        msg_id = send(d, ["bob@example.com"])
        if harness.PG:
            harness.query(d, "CREATE FUNCTION test_full() RETURNS trigger LANGUAGE plpgsql AS $$"
                             " BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'"
                             " USING ERRCODE = 'disk_full'; END $$")
            harness.query(d, "CREATE TRIGGER test_full BEFORE UPDATE ON messages FOR EACH ROW"
                             " EXECUTE FUNCTION test_full()")
        else:
            open(flag, "w").close()
        d.send_signal(signal.SIGUSR1)
        warn = d.wait_log(lambda l: l.level == "warn" and l.topic == "engine" and l.rest.startswith("not routed")
                          and l.kv.get("id") == msg_id, 10, "'engine not routed id=%s'" % msg_id)
        self.assertEqual(warn.kv["reason"], "disk-full")
        self.assertEqual(self.message(d, msg_id)["state"], "accepted")
        if harness.PG:
            harness.query(d, "DROP TRIGGER test_full ON messages")
        else:
            os.unlink(flag)
        line = wait_routed(d, msg_id, 15)
        self.assertEqual(line.kv["stored"], "1")
        self.assertEqual(self.message(d, msg_id)["state"], "routed")
        self.assertEqual(len(harness.query(d, "SELECT * FROM stored WHERE message_id = ?", (msg_id,))), 1)


if __name__ == "__main__":
    harness.main()
