"""PostgreSQL stopped for ten seconds under a load (SPEC §8, issue 12 items 3 and 8).

Two `inlet serve` nodes on one database of a throwaway cluster of this test's own
(scripts/pg-test-cluster: the test stops PostgreSQL, which the suite's shared cluster must not
feel).  Senders keep sending at a steady pace over both nodes' SMTP ports, moving to the other
node (a little later) when one answers 4xx.  Then PostgreSQL is stopped for 10 s:

- SMTP answers `451 4.3.0 Error: queue file write error` after DATA, never 250; nothing more is
  accepted while it is down (what was committing at the stop may have made it);
- /healthz answers 503 {"status": "unavailable", "message": <the database's reason>};
- started again, the same processes (no restart) accept again by themselves and /healthz is 200;
- nothing is lost or half-written: every message that got a 250 is in the database, complete
  (its bytes, its recipient) and routed by the catch-all store() route into a stored copy.

Deliveries between nodes (claims, no two POSTs of one delivery at once) are test_multinode.py's.
"""

import json
import os
import shutil
import smtplib
import tempfile
import time

import harness
from harness import InletTestCase, timeout
from test_multinode import Cluster, Senders, message

DOWN_S = 10
LOAD = 240
PACE_S = 0.1  # each sender waits this long after every answer: the load lasts past the stop


class PacedSenders(Senders):
    """Senders at a steady pace (4 threads: at most 40 messages a second), so that the load is
    still running when PostgreSQL has stopped, however fast the nodes are."""

    def _send_once(self, node, token):
        try:
            return super()._send_once(node, token)
        finally:
            time.sleep(PACE_S)


@harness.unittest.skipUnless(harness.PG, "the PostgreSQL backend")
class DatabaseOutage(InletTestCase):
    def setUp(self):
        # The cluster stops after the nodes (cleanups run last-registered first, and the harness
        # registers the nodes' in its setUp).
        top = tempfile.mkdtemp(prefix="inlet-outage-pg-", dir=os.environ.get("INLET_BB_TMPDIR") or None)
        os.chmod(top, 0o755)  # the server's user (postgres, when we are root) must enter
        self.addCleanup(shutil.rmtree, top, True)
        self.cluster = Cluster(os.path.join(top, "cluster"))
        self.addCleanup(self.cluster.stop)
        # The harness's psql (Daemon.query) reads the password from PGPASSFILE: this cluster's.
        self.addCleanup(os.environ.__setitem__, "PGPASSFILE", os.environ.get("PGPASSFILE", ""))
        os.environ["PGPASSFILE"] = self.cluster.pgpass
        super().setUp()
        self.db = self.cluster.create_database("inlet_outage")

    def node(self):
        return self.daemon(database_url=self.db, env={"PGPASSFILE": self.cluster.pgpass})

    def health(self, d):
        status, _, body = d.http_get("/healthz")
        return status, json.loads(body)

    def one_message(self, d, token):
        """The SMTP answer to one message through node d: 250, or (code, text) of a refusal."""
        with smtplib.SMTP(*d.smtp_addrs[0], timeout=timeout(30)) as s:
            try:
                s.sendmail("sender@example.org", ["user@example.com"], message(token))
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error
        return 250

    def test_database_stopped_for_ten_seconds(self):
        nodes = [self.node()]
        nodes.append(self.node())
        status, _, body = nodes[0].http("POST", "/v3/routes", body="expression=catch_all()&action=store()",
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)
        deadline = time.monotonic() + timeout(10)
        while nodes[1].http("GET", "/v3/routes")[2].count(b'"id"') != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = [n.proc.pid for n in nodes]

        senders = PacedSenders(nodes, LOAD, threads=4, deadline_s=120).start()
        deadline = time.monotonic() + timeout(60)
        while len(senders.accepted) < LOAD // 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        before_451 = senders.replies.get(451, 0)
        self.cluster.stop()
        down_at = time.monotonic()
        accepted_at_stop = len(senders.accepted)

        # Down: 451 after DATA with SPEC §2's text, /healthz 503 with the database's reason.
        for d in nodes:
            self.assertEqual(self.one_message(d, "outage-" + os.urandom(8).hex()),
                             (451, b"4.3.0 Error: queue file write error"))
        deadline = time.monotonic() + timeout(5)
        while self.health(nodes[1])[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        for d in nodes:
            status, body = self.health(d)
            self.assertEqual(status, 503, body)
            self.assertEqual(body["status"], "unavailable")
            self.assertIn("database", body["message"])
        print("# /healthz while down: 503 %s" % json.dumps(body))
        while time.monotonic() - down_at < DOWN_S:
            time.sleep(0.1)
        # Nothing more was accepted (what was committing at the stop may have made it), and the
        # senders were told 451.
        self.assertLessEqual(len(senders.accepted), accepted_at_stop + 8)
        self.assertGreater(senders.replies.get(451, 0), before_451, senders.replies)

        # Back: the same processes accept again by themselves.
        self.cluster.start()
        up_at = time.monotonic()
        senders.join()
        resumed = time.monotonic() - up_at
        self.assertEqual(senders.failed, [], "messages refused for good: %r" % senders.failed[:5])
        self.assertEqual(len(senders.accepted), LOAD)
        self.assertEqual([n.proc.pid for n in nodes], pids)
        self.assertTrue(all(n.running() for n in nodes), "a node exited when the database went away")
        for d in nodes:
            deadline = time.monotonic() + timeout(5)
            while self.health(d)[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(self.health(d), (200, {"status": "ok"}))

        # Nothing lost or half-written: every 250 is a complete message, routed and stored.
        deadline = time.monotonic() + timeout(30)
        rows = []
        while time.monotonic() < deadline:
            rows = nodes[0].query("SELECT m.id, m.state, m.size, m.raw, m.recipients, count(s.key) AS copies"
                                  " FROM messages m LEFT JOIN stored s ON s.message_id = m.id"
                                  " GROUP BY m.id, m.state, m.size, m.raw, m.recipients")
            if rows and all(r["state"] != "accepted" for r in rows):
                break
            time.sleep(0.2)
        by_token = {}
        for r in rows:
            self.assertEqual(len(r["raw"]), r["size"], "message %s is whole" % r["id"])
            self.assertEqual(json.loads(r["recipients"]), ["user@example.com"])
            self.assertNotEqual(r["state"], "accepted", "message %s was routed" % r["id"])
            self.assertEqual(r["copies"], 1, "message %s has its stored copy" % r["id"])
            subject = [l for l in bytes(r["raw"]).split(b"\r\n") if l.startswith(b"Subject: ")]
            by_token.setdefault(subject[0][9:].decode(), []).append(r["id"])
        lost = set(senders.accepted) - set(by_token)
        self.assertEqual(lost, set(), "messages answered 250 and not in the database")
        print("# %d messages, PostgreSQL down %d s: %d answers 451; every sender done %.1f s after the"
              " start; %d rows for %d accepted (a 451 whose COMMIT had reached the server gives one more)"
              % (LOAD, DOWN_S, senders.replies.get(451, 0), resumed, len(rows), len(senders.accepted)))


if __name__ == "__main__":
    harness.main()
