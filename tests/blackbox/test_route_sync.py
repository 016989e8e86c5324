"""Several `inlet serve` nodes on one PostgreSQL: routes, keys and the API agree (SPEC §8, issue 12
item 5).  PostgreSQL only by nature: on SQLite one process owns the database.

- test_keys_agree: two nodes started together on one empty database generate no second pair of
  keys: both use the pair one of them stored first (store_set_meta_if_absent), and
  `inlet keys --database postgresql://...` prints that pair.
- test_route_changes_reach_every_node: a route created, changed and deleted through node A's API
  is used by node B's SMTP (RCPT with --reject-unrouted yes) within a second of A's answer, each
  time measured; a message B accepts is routed by it.
- test_listen_connection_lost: the listening connections are terminated (pg_terminate_backend)
  while the database refuses new connections (ALLOW_CONNECTIONS false): a change on A still reaches
  B within a second (the fallback poll of routes_version through B's read connection); when
  connections are allowed again the listeners come back (LISTEN, pg_stat_activity), reload once,
  and a change is again seen at notification speed.
- test_reconnect_reloads: a change that neither NOTIFY nor the poll can see (SQL with the trigger
  disabled) reaches B when its listening connection is cut and comes back (the reload after
  reconnecting, which covers what was notified while nobody listened).
- test_api_answers_the_same_on_every_node: with one --public-url (a load balancer's address), a
  stored copy, the events, the dead-letter list and its replay answer the same on B as on A.
"""

import json
import subprocess
import time
import urllib.parse

import harness
from harness import InletTestCase, timeout

BOUND_S = 1.0  # SPEC §8: a route change is used by every node within a second


def one_second():
    """The bound, stretched in sanitizer builds (everything there runs several times slower)."""
    return BOUND_S * (2.0 if harness.SANITIZED else 1.0)


@harness.unittest.skipUnless(harness.PG, "several nodes need the PostgreSQL backend")
class RouteSync(InletTestCase):
    def setUp(self):
        super().setUp()
        self.db = harness.pg_create_database()
        self.pg_databases["shared by the nodes"] = self.db  # dropped by the harness at the end
        self.dbname = urllib.parse.urlsplit(self.db).path.lstrip("/")

    def node(self, start=True, **kw):
        return self.daemon(database_url=self.db, start=start, **kw)

    def api(self, d, method, path, fields=None):
        body = urllib.parse.urlencode(fields).encode() if fields is not None else None
        hdrs = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        status, _, raw = d.http(method, path, body=body, headers=hdrs)
        return status, (json.loads(raw) if raw else None)

    def admin(self, sql):
        """A statement on the cluster's maintenance database (never on the nodes' own)."""
        return harness.pg_query(harness.pg_url_with_db(harness.pg_base_url(), "postgres"), sql)

    def listeners(self):
        return self.admin("SELECT pid, query FROM pg_stat_activity WHERE datname = '%s'"
                          " AND application_name = 'inlet-listen'" % self.dbname)

    def wait_listeners(self, n, wait_s=10):
        deadline = time.monotonic() + timeout(wait_s)
        while time.monotonic() < deadline:
            rows = self.listeners()
            if len(rows) == n:
                return rows
            time.sleep(0.05)
        self.fail("expected %d listening connections, have %r" % (n, self.listeners()))

    def rcpt_code(self, d, rcpt):
        """What node d answers to RCPT TO:<rcpt>, on a session kept between calls (a new one when
        the server closed it, e.g. 421 after too many refused recipients)."""
        s = getattr(self, "_probe", None)
        if s is None or s.eof:
            s = self._probe = d.session()
            self.addCleanup(s.close)
            self.assertEqual(s.cmd("EHLO client.example.test")[0], 250)
        for cmd in ("RSET", "MAIL FROM:<sender@example.org>"):
            code, lines = s.cmd(cmd)
            if code != 250:
                self.assertEqual(code, 421, lines)
                s.close()
                self._probe = None
                return self.rcpt_code(d, rcpt)
        code, lines = s.cmd("RCPT TO:<%s>" % rcpt)
        if code == 421:
            s.close()
            self._probe = None
            return self.rcpt_code(d, rcpt)
        return code

    def until_rcpt(self, d, rcpt, want, since, wait_s=10):
        """Seconds from `since` until node d answers RCPT `rcpt` with `want` (asked every 10 ms)."""
        deadline = time.monotonic() + timeout(wait_s)
        while time.monotonic() < deadline:
            if self.rcpt_code(d, rcpt) == want:
                return time.monotonic() - since
            time.sleep(0.01)
        self.fail("the node never answered %d to RCPT %s" % (want, rcpt))

    def change(self, a, method, path, fields=None):
        status, body = self.api(a, method, path, fields)
        self.assertEqual(status, 200, body)
        return body, time.monotonic()

    def route_fields(self, pattern, *actions):
        return [("priority", "0"), ("expression", 'match_recipient("%s")' % pattern)] + \
               [("action", x) for x in (actions or ("store()", "stop()"))]

    # -------------------------------------------------------------------------------------------
    def test_keys_agree(self):
        a = self.node(start=False)
        b = self.node(start=False)
        a.spawn()
        b.spawn()
        a.wait_ready()
        b.wait_ready()
        self.assertEqual(a.keys(), b.keys(), "two nodes started together use one pair of keys")
        self.assertRegex(a.keys()["api_key"], r"^[0-9a-f]{64}$")
        rows = harness.pg_query(self.db, "SELECT key, value FROM meta WHERE key LIKE '%_key' ORDER BY key")
        self.assertEqual({r["key"]: r["value"] for r in rows}, a.keys())
        r = subprocess.run([harness.INLET_BIN, "keys", "--data-dir", self.tmp_path("elsewhere"),
                            "--database", self.db], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout(20), env=harness.clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(dict(l.split("=", 1) for l in r.stdout.splitlines()), a.keys())
        # Both nodes take requests with that key.
        for d in (a, b):
            status, _ = self.api(d, "GET", "/v3/routes")
            self.assertEqual(status, 200)

    def test_route_changes_reach_every_node(self):
        a = self.node(args=["--reject-unrouted", "yes"])
        b = self.node(args=["--reject-unrouted", "yes"])
        self.wait_listeners(2)
        took = {}
        self.assertEqual(self.rcpt_code(b, "sync-1@example.com"), 550)
        body, t0 = self.change(a, "POST", "/v3/routes", self.route_fields("^sync-1@"))
        rid = body["route"]["id"]
        took["created"] = self.until_rcpt(b, "sync-1@example.com", 250, t0)

        _, t0 = self.change(a, "PUT", "/v3/routes/" + rid, [("expression", 'match_recipient("^sync-2@")')])
        took["changed"] = self.until_rcpt(b, "sync-2@example.com", 250, t0)
        self.assertEqual(self.rcpt_code(b, "sync-1@example.com"), 550, "the old expression is gone")

        # B routes by it too (not only its RCPT check): the message is stored by this route.
        with b.smtp() as c:
            c.sendmail("sender@example.org", ["sync-2@example.com"], harness.make_message(to="sync-2@example.com"))
        deadline = time.monotonic() + timeout(10)
        rows = []
        while not rows and time.monotonic() < deadline:
            rows = b.query("SELECT route_id FROM stored")
            time.sleep(0.05)
        self.assertEqual([r["route_id"] for r in rows], [rid])

        _, t0 = self.change(a, "DELETE", "/v3/routes/" + rid)
        took["deleted"] = self.until_rcpt(b, "sync-2@example.com", 550, t0)
        report = " ".join("%s=%.3fs" % kv for kv in took.items())
        print("# route propagation A -> B: %s" % report)
        for what, secs in took.items():
            self.assertLessEqual(secs, one_second(), "route %s on A reached B after %.3f s" % (what, secs))

    def test_listen_connection_lost(self):
        a = self.node(args=["--reject-unrouted", "yes"])
        b = self.node(args=["--reject-unrouted", "yes"])
        self.wait_listeners(2)
        self.addCleanup(self.admin, "ALTER DATABASE %s ALLOW_CONNECTIONS true" % self.dbname)
        # Down: the listeners are cut and cannot come back; the nodes' other connections stay.
        self.admin("ALTER DATABASE %s ALLOW_CONNECTIONS false" % self.dbname)
        self.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'"
                   " AND application_name = 'inlet-listen'" % self.dbname)
        self.wait_listeners(0)
        b.wait_log(lambda l: l.topic == "storage" and l.rest.startswith("routes listen lost"),
                   what="the listener's loss")
        body, t0 = self.change(a, "POST", "/v3/routes", self.route_fields("^poll-1@"))
        rid = body["route"]["id"]
        by_poll = self.until_rcpt(b, "poll-1@example.com", 250, t0)
        self.assertEqual(self.listeners(), [], "no listener came back while refused")
        b.wait_log(lambda l: l.topic == "engine" and "seen_by=poll" in l.rest,
                   what="a reload seen by the poll")

        # Back: the listeners reconnect (within the backoff's 5 s), reload once, and a change
        # is seen through NOTIFY again.
        mark = len(b.lines())
        self.admin("ALTER DATABASE %s ALLOW_CONNECTIONS true" % self.dbname)
        self.wait_listeners(2, wait_s=15)
        b.wait_log(lambda l: l.topic == "engine" and "seen_by=reconnect" in l.rest, after=mark,
                   what="the reload after reconnecting")
        _, t0 = self.change(a, "PUT", "/v3/routes/" + rid, [("expression", 'match_recipient("^poll-2@")')])
        by_notify = self.until_rcpt(b, "poll-2@example.com", 250, t0)
        b.wait_log(lambda l: l.topic == "engine" and "seen_by=notify" in l.rest, after=mark,
                   what="a reload seen by NOTIFY")
        print("# listener down: change seen by poll after %.3fs; back: by notify after %.3fs"
              % (by_poll, by_notify))
        self.assertLessEqual(by_poll, one_second(), "the fallback poll took %.3f s" % by_poll)
        self.assertLessEqual(by_notify, one_second(), "NOTIFY after reconnecting took %.3f s" % by_notify)

    def test_reconnect_reloads(self):
        """A change neither NOTIFY nor the poll can see (made by SQL with the trigger off) is picked
        up when the listening connection comes back: the reload after reconnecting is what covers
        the notifications lost while it was down."""
        self.node(args=["--reject-unrouted", "yes"])
        b = self.node(args=["--reject-unrouted", "yes"])
        self.wait_listeners(2)
        harness.pg_query(self.db, "ALTER TABLE routes DISABLE TRIGGER routes_changed")
        harness.pg_query(self.db, "INSERT INTO routes (id, priority, description, expression, actions, created_at)"
                                  " VALUES ('aaaaaaaaaaaaaaaaaaaaaaaa', 0, 'by hand', 'match_recipient(\"^quiet@\")',"
                                  " '[\"store()\"]', 1)")
        harness.pg_query(self.db, "ALTER TABLE routes ENABLE TRIGGER routes_changed")
        deadline = time.monotonic() + 1.5  # three polls' worth: nothing can tell B
        while time.monotonic() < deadline:
            self.assertEqual(self.rcpt_code(b, "quiet@example.com"), 550, "B saw a change nothing announced")
            time.sleep(0.1)
        mark = len(b.lines())
        self.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'"
                   " AND application_name = 'inlet-listen'" % self.dbname)
        t0 = time.monotonic()
        b.wait_log(lambda l: l.topic == "storage" and l.rest.startswith("routes listen lost"), after=mark,
                   what="the listener's loss")
        took = self.until_rcpt(b, "quiet@example.com", 250, t0)
        print("# listener cut: back and reloaded after %.3fs" % took)
        self.assertLessEqual(took, one_second() + 0.5, "the reload after reconnecting took %.3f s" % took)

    def test_api_answers_the_same_on_every_node(self):
        dead = self.hold_port()  # nobody listens: the forward fails
        lb = "http://lb.example.test:8080"
        common = ["--public-url", lb, "--retry-schedule", "1"]
        a = self.node(args=common)
        b = self.node(args=common)
        self.wait_listeners(2)
        self.change(a, "POST", "/v3/routes", self.route_fields("^keep@"))
        self.change(a, "POST", "/v3/routes", self.route_fields(
            "^fail@", 'forward("http://127.0.0.1:%d/hook")' % dead.port, "stop()"))
        # B's API lists its own route table (the one its SMTP and routing use).
        deadline = time.monotonic() + timeout(10)
        while self.api(b, "GET", "/v3/routes")[1]["total_count"] != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(self.api(b, "GET", "/v3/routes"), self.api(a, "GET", "/v3/routes"))
        with b.smtp() as c:
            c.sendmail("sender@example.org", ["keep@example.com"],
                       harness.make_message(subject="kept on B", to="keep@example.com"))
            c.sendmail("sender@example.org", ["fail@example.com"],
                       harness.make_message(subject="failed on B", to="fail@example.com"))

        # The dead letter: two attempts (1 + the schedule's one retry), then failed.
        deadline = time.monotonic() + timeout(30)
        failed = []
        while not failed and time.monotonic() < deadline:
            failed = a.query("SELECT id FROM deliveries WHERE state = 'failed'")
            time.sleep(0.1)
        self.assertEqual(len(failed), 1, "the forward to a closed port failed")

        def both(path):
            sa, _, ra = a.http("GET", path)
            sb, _, rb = b.http("GET", path)
            self.assertEqual((sa, ra), (sb, rb), "GET %s differs between the nodes" % path)
            self.assertEqual(sa, 200, ra)
            return json.loads(ra)

        events = both("/v3/example.com/events?ascending=yes&limit=50")
        kinds = sorted(e["event"] for e in events["items"])
        self.assertIn("stored", kinds)
        self.assertIn("failed", kinds)
        self.assertTrue(events["paging"]["next"].startswith(lb + "/"), events["paging"])
        url = [e for e in events["items"] if e["event"] == "stored"][0]["storage"]["url"]
        self.assertTrue(url.startswith(lb + "/v3/domains/example.com/messages/"), url)
        path = url[len(lb):]
        self.assertEqual(both(path)["subject"], "kept on B")
        dl = both("/v3/deliveries?state=failed")
        self.assertEqual([x["id"] for x in dl["items"]], [failed[0]["id"]])

        # The replay through B is seen by A.
        status, body = self.api(b, "POST", "/v3/deliveries/%s/retry" % failed[0]["id"])
        self.assertEqual(status, 200, body)
        # Pending again (or failed again after its one more attempt): the attempts grew on A's view.
        deadline = time.monotonic() + timeout(20)
        attempts = 0
        while time.monotonic() < deadline:
            rows = a.query("SELECT attempts, state FROM deliveries WHERE id = ?", (failed[0]["id"],))
            attempts = rows[0]["attempts"]
            if attempts >= 3 and rows[0]["state"] == "failed":
                break
            time.sleep(0.1)
        self.assertGreaterEqual(attempts, 3, "the replay made one more attempt")
        both("/v3/deliveries?state=failed")


if __name__ == "__main__":
    harness.main()
