"""POP3 maildrop locks across nodes on one PostgreSQL (SPEC §9): a lock is a lease of --lease-seconds
(3 s here) by the database server's clock, in its session's name, renewed while the session lives.
A node killed while its session held a lock frees the mailbox within the lease, or at once when it
starts again on its data dir; a node stalled past its lease (SIGSTOP) commits none of its DELEs once
another session took the lock; a node whose clock is an hour ahead (libfaketime) still finds
another node's lock held.  PostgreSQL only by nature
(registered as bb-pop3-nodes-pg); the single-node behaviour of the lock is test_pop3.py's."""

import os
import poplib
import signal
import time

import harness
from test_pop3 import Pop3Case, filed, message, pop3_port, send_many, wait_filed


class NodesTest(Pop3Case):
    def test_dead_nodes_lock_ends_with_its_lease(self):
        """A node killed while its session held the lock: another node's poller gets the maildrop
        once the lease ran out (it was an hour before the lease became short and renewed)."""
        d = self.start(["--lease-seconds", str(self.LEASE)])
        send_many(d, [message(1)])
        wait_filed(d, 1)
        a = self.login(d)
        other = self.daemon(database_url=d.database_url, args=["--pop3-listen", "127.0.0.1:0"] + self.extra)
        port = pop3_port(other)
        self.assertTrue(self.in_use(port))
        d.kill9()
        a.close()
        killed = time.monotonic()
        deadline = killed + harness.timeout(self.LEASE + 10)
        while self.in_use(port):
            self.assertLess(time.monotonic(), deadline, "the dead node's lock outlived its lease")
            time.sleep(0.2)
        self.assertLess(time.monotonic() - killed, harness.timeout(self.LEASE + 5))
        b = self.login(other, port)
        self.assertEqual(b.stat()[0], 1)
        b.quit()

    def test_restarted_node_lets_go_of_its_dead_runs_locks(self):
        """A node killed while its session held the lock and started again on its data dir: the
        lock of its dead run goes at its start (as its claims do), not when its lease (60 s
        here) runs out."""
        d = self.start(["--lease-seconds", "60"])
        send_many(d, [message(1)])
        wait_filed(d, 1)
        a = self.login(d)
        d.kill9()
        a.close()
        d.restart()
        b = self.login(d, pop3_port(d))  # -ERR [IN-USE] for the rest of the lease without it
        self.assertEqual(b.stat()[0], 1)
        b.quit()
        self.assertTrue(any(line.topic == "engine" and line.rest.startswith("released claims")
                            and line.kv.get("mailboxes") == "1" for line in d.lines()), d.log_text())

    def test_session_that_lost_its_lock_commits_nothing(self):
        """A node stalled past its lease (SIGSTOP): another node's session takes the lock; the
        stalled session's QUIT then commits none of its DELEs."""
        d = self.start(["--lease-seconds", str(self.LEASE)])
        send_many(d, [message(1)])
        wait_filed(d, 1)
        a = self.login(d)
        a.dele(1)
        other = self.daemon(database_url=d.database_url, args=["--pop3-listen", "127.0.0.1:0"] + self.extra)
        port = pop3_port(other)
        d.send_signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + harness.timeout(self.LEASE + 10)
            while self.in_use(port):  # the stalled node's lease runs out; this login keeps nothing
                self.assertLess(time.monotonic(), deadline, "the stalled node's lock outlived its lease")
                time.sleep(0.2)
            b = self.login(other, port)  # and this one holds the lock when the stalled node wakes up
        finally:
            d.send_signal(signal.SIGCONT)
        with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[SYS/TEMP\] Maildrop lock lost: no message was deleted"):
            a.quit()
        self.assertEqual(b.stat()[0], 1)
        b.quit()
        self.assertEqual(len(filed(d)), 1)
        d.wait_log(lambda l: l.level == "warn" and l.topic == "pop3" and l.rest.startswith("maildrop close failed")
                   and l.kv.get("mailbox") == "support", what="the lost lock's close logged")

    def test_lock_goes_by_the_databases_clock(self):
        """A second node whose clock is an hour ahead (libfaketime) still finds the first node's
        lock held: the lease is written and read by the database server's clock, as the claims
        are, not by each node's."""
        lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
        self.assertTrue(os.path.exists(lib), "%s missing: scripts/install-deps --test installs faketime" % lib)
        d = self.start(["--lease-seconds", str(self.LEASE)])
        send_many(d, [message(1)])
        wait_filed(d, 1)
        a = self.login(d)
        asan = os.environ.get("ASAN_OPTIONS", "")
        ahead = self.daemon(database_url=d.database_url, args=["--pop3-listen", "127.0.0.1:0"] + self.extra,
                            env={"LD_PRELOAD": lib, "FAKETIME": "+1h", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                                 "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"})
        port = pop3_port(ahead)
        self.assertTrue(self.in_use(port))
        time.sleep(self.LEASE * 1.6)  # renewed by the first node meanwhile
        self.assertTrue(self.in_use(port))
        a.quit()
        self.assertFalse(self.in_use(port))
