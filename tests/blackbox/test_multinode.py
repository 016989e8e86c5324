"""Several `inlet serve` nodes on one PostgreSQL, and a node killed (SPEC §8, issue 12 item 8).

The test starts its own throwaway cluster (scripts/pg-test-cluster), so that what it does to the
database is nobody else's business.

- test_node_killed_under_load: three nodes (the route is made before the second and third start,
  so that none of this depends on route propagation), one catch-all forward() to a receiver that
  records every POST with its X-Inlet-Delivery and its start and end times (each POST takes a
  little while, so that two at once would overlap); 600 messages spread over the three SMTP ports
  by senders that move to another node when one fails them; one node SIGKILLed after about a
  third were accepted.  Then: every message that got a 250 reaches the receiver (what the dead
  node had accepted and not routed, or claimed and not delivered, is taken by the others once its
  leases ran out); no two POSTs with the same X-Inlet-Delivery overlap in time; a message stored
  through one node is served by another.  Leases are short here (--lease-seconds 5) to keep the
  test short.
- test_long_attempt_keeps_its_lease: a POST longer than the lease (3 s) is made once, to its end:
  its node renews the lease meanwhile and the other node never takes the delivery.
- test_attempt_aborted_when_the_database_goes_away: PostgreSQL stopped during a long POST: the
  node, unable to renew, aborts the POST before its lease could run out; once the database is back
  the delivery is made again, never two POSTs at once.

PostgreSQL stopped for 10 s under a load: test_pg_outage.py, with the helpers here (Cluster,
Senders).  Routes across nodes: test_route_sync.py.
"""

import http.server
import json
import os
import re
import select
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse

import harness
from harness import InletTestCase, timeout

POST_SECONDS = 0.05     # how long the receiver takes for one POST (overlaps need a width)
TOKEN_RE = re.compile(r"mn-[0-9a-f]{16}")


class Recorder:
    """An HTTP receiver on port 0: every POST as (X-Inlet-Delivery, token of the message, start,
    end, path); answers 200 after POST_SECONDS, or after the next delay of delays[path] (a list,
    taken in turn).  A POST whose client goes away while it waits is recorded too, ending when the
    client closed (`aborted` holds its (X-Inlet-Delivery, start)); `started` holds (X-Inlet-Delivery,
    start) of every POST as soon as its body is read."""

    def __init__(self):
        self.lock = threading.Lock()
        self.posts = []
        self.started = []
        self.aborted = []
        self.delays = {}
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def wait(self, seconds):
                """Sleeps `seconds`; False as soon as the client closed the connection."""
                end = time.monotonic() + seconds
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        return True
                    r, _, _ = select.select([self.connection], [], [], min(left, 0.02))
                    if r and not self.connection.recv(1, socket.MSG_PEEK):
                        return False

            def do_POST(self):
                start = time.monotonic()
                did = self.headers.get("X-Inlet-Delivery", "")
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                m = TOKEN_RE.search(body.decode("utf-8", "replace"))
                with rec.lock:
                    rec.started.append((did, start))
                    queue = rec.delays.get(self.path)
                    delay = queue.pop(0) if queue else POST_SECONDS
                ok = self.wait(delay)
                if ok:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                end = time.monotonic()
                with rec.lock:
                    rec.posts.append((did, m.group(0) if m else "", start, end, self.path))
                    if not ok:
                        rec.aborted.append((did, start))
                if not ok:
                    self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/hook"):
        return "http://127.0.0.1:%d%s" % (self.server.server_address[1], path)

    def tokens(self, path=None):
        """Tokens of the messages of the POSTs answered 200 (to `path`)."""
        with self.lock:
            aborted = set(self.aborted)
            return {p[1] for p in self.posts
                    if (path is None or p[4] == path) and (p[0], p[2]) not in aborted}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Cluster:
    """A private PostgreSQL cluster and its databases."""

    def __init__(self, top):
        self.top = top
        self.script = os.environ.get("INLET_PG_CLUSTER", "")
        if not self.script:
            raise AssertionError("INLET_PG_CLUSTER is not set (meson sets it)")
        out = self._run("start")
        env = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
        self.base = env["INLET_TEST_PG_URL"]
        self.pgpass = env["PGPASSFILE"]

    def _run(self, what):
        r = subprocess.run([self.script, what, self.top], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=timeout(120))
        if r.returncode != 0:
            raise AssertionError("pg-test-cluster %s: %s%s" % (what, r.stdout, r.stderr))
        return r.stdout

    def start(self):
        self._run("start")

    def stop(self):
        self._run("stop")

    def create_database(self, name):
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                            harness.pg_url_with_db(self.base, "postgres"), "-c", "CREATE DATABASE %s" % name],
                           env=dict(harness.clean_env(), PGPASSFILE=self.pgpass), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout(30))
        if r.returncode != 0:
            raise AssertionError("CREATE DATABASE: %s" % r.stderr)
        return harness.pg_url_with_db(self.base, name)


def message(token, rcpt="user@example.com"):
    return ("From: <sender@example.org>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\n"
            "body of %s\r\n" % (rcpt, token, token, token)).encode()


class Senders:
    """Messages sent by `threads` senders over the nodes' SMTP ports, round robin; a message that
    a node does not accept (refused connection, 4xx, a dropped session) is tried again on the
    next node, a little later, until `deadline_s`.  `accepted` holds the tokens that got a 250;
    `replies` counts the final replies seen by code."""

    def __init__(self, nodes, count, threads=6, deadline_s=240, rcpt="user@example.com"):
        self.nodes, self.count, self.rcpt = nodes, count, rcpt
        self.accepted, self.failed = [], []
        self.replies = {}
        self.lock = threading.Lock()
        self.next_index = 0
        self.deadline = time.monotonic() + timeout(deadline_s)
        self.threads = [threading.Thread(target=self._worker, args=(w,), daemon=True) for w in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self):
        for t in self.threads:
            t.join(max(1, self.deadline - time.monotonic() + 30))
        assert not [t for t in self.threads if t.is_alive()], "senders still running"

    def _take(self):
        with self.lock:
            if self.next_index >= self.count:
                return None
            self.next_index += 1
            return self.next_index - 1

    def _count(self, code):
        with self.lock:
            self.replies[code] = self.replies.get(code, 0) + 1

    def _send_once(self, node, token):
        host, port = node.smtp_addrs[0]
        with smtplib.SMTP(host, port, local_hostname="sender.example.org", timeout=timeout(30)) as s:
            code, _ = s.ehlo()
            if code != 250:
                return code
            try:
                s.sendmail("sender@example.org", [self.rcpt], message(token, self.rcpt))
            except smtplib.SMTPDataError as e:
                return e.smtp_code
            except smtplib.SMTPRecipientsRefused as e:
                return list(e.recipients.values())[0][0]
            except smtplib.SMTPSenderRefused as e:
                return e.smtp_code
            return 250

    def _worker(self, w):
        while True:
            i = self._take()
            if i is None:
                return
            token = "mn-" + os.urandom(8).hex()
            attempt = 0
            while time.monotonic() < self.deadline:
                node = self.nodes[(i + attempt) % len(self.nodes)]
                attempt += 1
                try:
                    code = self._send_once(node, token)
                except (OSError, smtplib.SMTPException):
                    code = "conn"
                self._count(code)
                if code == 250:
                    with self.lock:
                        self.accepted.append(token)
                    break
                if isinstance(code, int) and code >= 500:
                    with self.lock:
                        self.failed.append((token, code))
                    break
                time.sleep(0.2)
            else:
                with self.lock:
                    self.failed.append((token, "deadline"))


class MultiNodeCase(InletTestCase):
    """Base of the multi-node tests: a private cluster, one database, a Recorder."""

    LEASE_SECONDS = 5

    def setUp(self):
        # The cluster is stopped after the nodes (cleanups run last-registered first, and the
        # harness registers the nodes' in its setUp).
        top = tempfile.mkdtemp(prefix="inlet-mn-pg-", dir=os.environ.get("INLET_BB_TMPDIR") or None)
        os.chmod(top, 0o755)  # the server's user (postgres, when we are root) must enter
        self.addCleanup(shutil.rmtree, top, True)
        self.cluster = Cluster(os.path.join(top, "cluster"))
        self.addCleanup(self.cluster.stop)
        # The harness's psql (Daemon.query) reads the password from PGPASSFILE: this cluster's.
        self.addCleanup(os.environ.__setitem__, "PGPASSFILE", os.environ.get("PGPASSFILE", ""))
        os.environ["PGPASSFILE"] = self.cluster.pgpass
        super().setUp()
        self.db = self.cluster.create_database("inlet_mn")
        self.recorder = Recorder()
        self.addCleanup(self.recorder.stop)

    def node(self, lease=None, **kw):
        return self.daemon(database_url=self.db, env={"PGPASSFILE": self.cluster.pgpass},
                           args=["--retry-schedule", "1,1,2,2,5,5,10,10,30,30",
                                 "--lease-seconds", str(lease or self.LEASE_SECONDS)], **kw)

    def send(self, node, rcpt="user@example.com"):
        token = "mn-" + os.urandom(8).hex()
        with smtplib.SMTP(*node.smtp_addrs[0], timeout=timeout(30)) as s:
            s.sendmail("sender@example.org", [rcpt], message(token, rcpt))
        return token

    def wait_started(self, count, wait_s):
        deadline = time.monotonic() + timeout(wait_s)
        while len(self.recorder.started) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertGreaterEqual(len(self.recorder.started), count, "POSTs started")
        return self.recorder.started[count - 1]

    def api(self, d, method, path, fields=None):
        body = urllib.parse.urlencode(fields).encode() if fields is not None else None
        hdrs = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        status, _, raw = d.http(method, path, body=body, headers=hdrs)
        return status, (json.loads(raw) if raw else None)

    def add_route(self, d, expression, *actions, priority=10):
        fields = [("priority", str(priority)), ("expression", expression)] + [("action", a) for a in actions]
        status, body = self.api(d, "POST", "/v3/routes", fields)
        self.assertEqual(status, 200, body)
        return body["route"]["id"]

    def wait_delivered(self, tokens, wait_s, path="/hook"):
        deadline = time.monotonic() + timeout(wait_s)
        missing = set(tokens)
        while time.monotonic() < deadline:
            missing = set(tokens) - self.recorder.tokens(path)
            if not missing:
                return
            time.sleep(0.2)
        raise AssertionError("%d of %d accepted messages never reached the receiver, e.g. %s"
                             % (len(missing), len(tokens), sorted(missing)[:5]))

    def assertNoOverlap(self):
        by_id = {}
        with self.recorder.lock:
            for did, _, start, end, _ in self.recorder.posts:
                self.assertTrue(did, "a POST without X-Inlet-Delivery")
                by_id.setdefault(did, []).append((start, end))
        for did, spans in by_id.items():
            spans.sort()
            for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
                self.assertGreaterEqual(s2, e1, "two POSTs of delivery %s overlap: %r" % (did, spans))


class MultiNode(MultiNodeCase):
    def test_node_killed_under_load(self):
        nodes = [self.node()]  # the first makes the schema and the keys
        self.add_route(nodes[0], "catch_all()", 'forward("%s")' % self.recorder.url("/hook"))
        nodes += [self.node(), self.node()]  # they load the route at start
        keys = nodes[0].keys()
        for n in nodes[1:]:
            self.assertEqual(n.keys(), keys, "every node uses the database's keys")
        started = time.monotonic()
        senders = Senders(nodes, 600).start()
        deadline = time.monotonic() + timeout(120)
        while len(senders.accepted) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertGreaterEqual(len(senders.accepted), 200, "a third of the load was not accepted in time")
        nodes[1].kill9()
        killed_at = time.monotonic()
        senders.join()
        self.assertEqual(senders.failed, [], "messages refused for good: %r" % senders.failed[:5])
        self.assertEqual(len(senders.accepted), 600)
        # The dead node's claims run out (its lease) and the others route and deliver what it held.
        self.wait_delivered(senders.accepted, 60)
        done_at = time.monotonic()
        self.assertNoOverlap()
        # What the killed node had in hand when it died: accepted and not routed by it (routed by
        # another once its lease ran out), and attempts it had started.
        log = nodes[1].log_text()
        queued = set(re.findall(r"queued id=([0-9a-f]+)", log))
        routed = set(re.findall(r"(?<!not )routed id=([0-9a-f]+)", log))
        self.assertTrue(queued, "the killed node had accepted messages")
        print("# 600 messages: node 1 killed %.1f s after the start, having accepted %d (%d of them not "
              "routed by it); every message delivered %.1f s after the kill; %d POSTs"
              % (killed_at - started, len(queued), len(queued - routed), done_at - killed_at,
                 len(self.recorder.posts)))

        # A message stored through one node is served by another.
        self.add_route(nodes[0], 'match_recipient("^keep-.*@example.com$")', "store()", "stop()", priority=0)
        token = "mn-" + os.urandom(8).hex()
        with smtplib.SMTP(*nodes[0].smtp_addrs[0], timeout=timeout(30)) as s:
            s.sendmail("sender@example.org", ["keep-1@example.com"], message(token, "keep-1@example.com"))
        rows = []
        deadline = time.monotonic() + timeout(30)
        while not rows and time.monotonic() < deadline:
            rows = nodes[0].query("SELECT key FROM stored")
            time.sleep(0.1)
        self.assertEqual(len(rows), 1, "the stored copy")
        status, body = self.api(nodes[2], "GET", "/v3/domains/example.com/messages/%s" % rows[0]["key"])
        self.assertEqual(status, 200, body)
        self.assertEqual(body["subject"], token)

    def test_long_attempt_keeps_its_lease(self):
        # An attempt longer than the lease (3 s): its node renews the lease while the POST runs, so
        # the other node never takes the delivery, and the POST is made once, to its end.
        nodes = [self.node(lease=3)]
        self.add_route(nodes[0], "catch_all()", 'forward("%s")' % self.recorder.url("/slow"))
        nodes.append(self.node(lease=3))
        self.recorder.delays["/slow"] = [5.0]
        token = self.send(nodes[0])
        self.wait_delivered([token], 30, "/slow")
        time.sleep(1.0)  # a second POST, if the lease had been lost, would have started by now
        self.assertEqual(self.recorder.aborted, [], "an attempt was aborted")
        with self.recorder.lock:
            spans = [(p[0], p[3] - p[2]) for p in self.recorder.posts]
        self.assertEqual(len(spans), 1, "one POST: %r" % spans)
        self.assertGreaterEqual(spans[0][1], 5.0)
        self.assertEqual([r["state"] for r in nodes[0].query("SELECT state FROM deliveries")], ["delivered"])

    def test_attempt_aborted_when_the_database_goes_away(self):
        # The database stops during a long POST: the node cannot renew the lease, so it aborts
        # the POST before the lease (3 s) could run out; once the database is back the delivery
        # is made again (same X-Inlet-Delivery, never two at once).
        node = self.node(lease=3)
        self.add_route(node, "catch_all()", 'forward("%s")' % self.recorder.url("/slow"))
        self.recorder.delays["/slow"] = [60.0]
        token = self.send(node)
        did, _ = self.wait_started(1, 30)
        self.cluster.stop()
        # No renewal can succeed once the database is down, so the lease the node holds ends at
        # most 3 s after this moment; from the POST's start it may end later (a renewal after
        # the start moved it: 3.13 s was seen under load, aborted in time).
        down = time.monotonic()
        deadline = time.monotonic() + timeout(10)
        while not self.recorder.aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual([a[0] for a in self.recorder.aborted], [did], "the POST was not aborted")
        with self.recorder.lock:
            ended = [p[3] for p in self.recorder.posts if p[0] == did]
        self.assertLess(ended[0] - down, 3.0, "aborted before the lease could run out")
        self.assertIn("lease ending id=%s" % did, node.log_text())
        self.cluster.start()
        self.wait_delivered([token], 60, "/slow")
        self.assertNoOverlap()
        self.assertEqual({p[0] for p in self.recorder.posts}, {did})


if __name__ == "__main__":
    harness.main()
