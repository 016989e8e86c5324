"""The POP3 server of mailboxes (SPEC §9) with real clients: Python's poplib (every command, USER/PASS
and SASL PLAIN, STLS, implicit TLS) and fetchmail draining 500 messages twice, with `keep` and
without.  Semantics: the maildrop lock (-ERR [IN-USE]; a lease renewed while its session lives, a
dead node's lock gone with its lease, a session that lost its lock committing nothing: the last two
on PostgreSQL, with a second node), stable UIDs, RETR's exact bytes
(dot-stuffed), DELE only at QUIT, a dropped connection (also in the middle of a RETR) deletes
nothing, expiry only between sessions, retrieved/deleted events, the delay after wrong passwords,
limits (line length, idle time, connections per address)."""

import base64
import json
import os
import poplib
import re
import shutil
import socket
import subprocess
import time
import unittest

import harness
from harness import InletTestCase
from test_mailboxes import PASSWORD, create_mailbox
from test_starttls import client_context, make_cert
from test_storage_api import create_route, wait_routed

ERR_RE = re.compile(rb"^-ERR ")


def pop3_port(d, tls=False):
    want = "implicit" if tls else None
    for line in d.lines():
        if line.topic == "pop3" and line.rest.startswith("listening "):
            if (line.kv.get("tls") == "implicit") == (want == "implicit"):
                return int(line.kv["addr"].rsplit(":", 1)[1])
    raise AssertionError("no pop3 listener in the log")


def message(i, extra=b""):
    return (b"From: Sender <s@sender.test>\r\nTo: support@example.com\r\nSubject: message %d\r\n"
            b"Message-ID: <m%d@sender.test>\r\n\r\nbody of %d\r\n.leading dot\r\n..two dots\r\n...three dots\r\n%s"
            % (i, i, i, extra))


def send_many(d, bodies, rcpt="support@example.com"):
    """One SMTP session, one transaction per body; the inlet ids."""
    ids = []
    with d.session() as s:
        for b in bodies:
            code, lines = s.transaction("s@sender.test", [rcpt], b)
            assert code == 250, lines
            ids.append(harness.queued_id(lines))
        s.cmd("QUIT")
    return ids


def filed(d, mailbox="support"):
    return harness.query(d, "SELECT key, message_id FROM stored WHERE mailbox = ? ORDER BY created_at, key",
                         (mailbox,))


def wait_filed(d, n, mailbox="support", wait_s=20):
    deadline = time.monotonic() + harness.timeout(wait_s)
    while time.monotonic() < deadline:
        rows = filed(d, mailbox)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError("%d messages filed, %d expected" % (len(filed(d, mailbox)), n))


def stored_bytes(d, key):
    status, _, body = d.http("GET", "/v3/domains/example.com/messages/%s/raw" % key)
    assert status == 200, (status, body[:200])
    return body


class Pop3Case(InletTestCase):
    extra = ["--pop3-plaintext-login", "loopback"]

    def start(self, extra=None, **kw):
        d = self.daemon(args=["--pop3-listen", "127.0.0.1:0"] + self.extra + list(extra or []), **kw)
        create_mailbox(d, "support")
        create_route(d, r'match_recipient("support@example\.com")', ['store(mailbox="support")'])
        self.port = pop3_port(d)
        return d

    def login(self, d, port=None):
        p = poplib.POP3("127.0.0.1", port or self.port, timeout=harness.timeout(10))
        p.user("support")
        p.pass_(PASSWORD)
        return p

    LEASE = 3

    def in_use(self, port):
        """Whether a login now gets -ERR [IN-USE] (True) or the maildrop (False, session closed)."""
        p = poplib.POP3("127.0.0.1", port, timeout=harness.timeout(10))
        p.user("support")
        try:
            p.pass_(PASSWORD)
        except poplib.error_proto as e:
            self.assertRegex(str(e), r"-ERR \[IN-USE\]")
            p.close()
            return True
        p.quit()
        return False


class CommandsTest(Pop3Case):
    def test_every_command(self):
        d = self.start()
        ids = send_many(d, [message(i) for i in range(3)])
        rows = wait_filed(d, 3)
        p = poplib.POP3("127.0.0.1", self.port, timeout=harness.timeout(10))
        self.assertEqual(p.getwelcome(), b"+OK inlet POP3 server ready")
        capa = p.capa()
        for c in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "PIPELINING"):
            self.assertIn(c, capa)
        self.assertEqual(capa["SASL"], ["PLAIN"])
        self.assertNotIn("STLS", capa)  # no certificate
        with self.assertRaisesRegex(poplib.error_proto, r"-ERR Unknown command"):
            p.stat()  # not in AUTHORIZATION
        p.user("SUPPORT")
        self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK Maildrop has 3 messages"))
        count, octets = p.stat()
        sizes = [len(stored_bytes(d, r["key"])) for r in rows]
        self.assertEqual((count, octets), (3, sum(sizes)))
        resp, listing, _ = p.list()
        self.assertEqual(listing, [b"%d %d" % (i + 1, s) for i, s in enumerate(sizes)])
        self.assertEqual(p.list(2), b"+OK 2 %d" % sizes[1])
        resp, uids, _ = p.uidl()
        self.assertEqual(uids, [b"%d %s" % (i + 1, r["key"].encode()) for i, r in enumerate(rows)])
        self.assertEqual(p.uidl(3), b"+OK 3 " + rows[2]["key"].encode())
        # RETR: the stored bytes (our Received: then what was sent); poplib un-stuffs the dots.
        resp, lines, _ = p.retr(1)
        self.assertEqual(resp, b"+OK %d octets" % sizes[0])
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", stored_bytes(d, rows[0]["key"]))
        resp, lines, _ = p.top(2, 1)
        head, _, body = stored_bytes(d, rows[1]["key"]).partition(b"\r\n\r\n")
        self.assertEqual(lines, head.split(b"\r\n") + [b"", body.split(b"\r\n")[0]])
        resp, lines, _ = p.top(2, 0)
        self.assertEqual(lines, head.split(b"\r\n") + [b""])
        for bad in ("RETR 4", "RETR 0", "RETR x", "DELE 9", "LIST 4", "TOP 1", "TOP 1 x"):
            with self.assertRaises(poplib.error_proto, msg=bad):
                p._shortcmd(bad)
        self.assertEqual(p.dele(1), b"+OK Message 1 deleted")
        with self.assertRaisesRegex(poplib.error_proto, "Message 1 is deleted"):
            p.retr(1)
        self.assertEqual(p.stat(), (2, sizes[1] + sizes[2]))
        self.assertTrue(p.rset().startswith(b"+OK Maildrop has 3 messages"))
        self.assertEqual(p.noop(), b"+OK")
        p.dele(1)
        p.dele(3)
        # Not yet: DELE takes effect at QUIT.
        self.assertEqual(len(filed(d)), 3)
        self.assertEqual(p.quit(), b"+OK Bye, 2 messages deleted")
        self.assertEqual([r["key"] for r in filed(d)], [rows[1]["key"]])
        # UIDs stay: message 2 is message 1 now, same UID.
        p = self.login(d)
        self.assertEqual(p.uidl()[1], [b"1 " + rows[1]["key"].encode()])
        p.quit()
        # Events: retrieved (RETR 1, TOP 2) and deleted (1 and 3) with the mailbox and the uid.
        status, _, body = d.http("GET", "/v3/example.com/events?event=retrieved%20OR%20deleted&ascending=yes")
        items = [(e["event"], e["uid"], e["mailbox"]) for e in json.loads(body)["items"]]
        self.assertEqual(sorted(items), sorted([("retrieved", rows[0]["key"], "support"),
                                                ("retrieved", rows[1]["key"], "support"),
                                                ("deleted", rows[0]["key"], "support"),
                                                ("deleted", rows[2]["key"], "support")]))
        self.assertEqual(len(ids), 3)

    def test_sasl_plain_and_errors(self):
        d = self.start()
        p = poplib.POP3("127.0.0.1", self.port, timeout=harness.timeout(10))
        with self.assertRaisesRegex(poplib.error_proto, "Unsupported authentication mechanism"):
            p._shortcmd("AUTH CRAM-MD5")
        with self.assertRaisesRegex(poplib.error_proto, "USER first"):
            p._shortcmd("PASS x")
        with self.assertRaisesRegex(poplib.error_proto, "Invalid SASL PLAIN response"):
            p._shortcmd("AUTH PLAIN !!!")
        token = base64.b64encode(b"\0support\0" + PASSWORD.encode()).decode()
        self.assertTrue(p._shortcmd("AUTH PLAIN " + token).startswith(b"+OK Maildrop has 0 messages"))
        p.quit()
        # The response on its own line, after "+ ".
        p = poplib.POP3("127.0.0.1", self.port, timeout=harness.timeout(10))
        p._putcmd("AUTH PLAIN")
        self.assertEqual(p._getline()[0], b"+ ")
        token = base64.b64encode(b"support\0support\0" + PASSWORD.encode()).decode()
        self.assertTrue(p._shortcmd(token).startswith(b"+OK Maildrop has"))
        p.quit()


class TlsTest(Pop3Case):
    extra = []  # --pop3-plaintext-login no (the default)

    def test_plaintext_refused_then_stls_and_pop3s(self):
        cert, key = make_cert(self.tmp)
        d = self.start(["--tls-cert", cert, "--tls-key", key, "--pop3s-listen", "127.0.0.1:0"])
        send_many(d, [message(1)])
        rows = wait_filed(d, 1)
        p = poplib.POP3("127.0.0.1", self.port, timeout=harness.timeout(10))
        capa = p.capa()
        self.assertIn("STLS", capa)
        self.assertNotIn("USER", capa)
        with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[AUTH\] Plaintext login refused: use STLS first"):
            p.user("support")
        with self.assertRaisesRegex(poplib.error_proto, r"Plaintext login refused"):
            p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0support\0" + PASSWORD.encode()).decode())
        p.stls(client_context(cert))
        capa = p.capa()
        self.assertNotIn("STLS", capa)
        self.assertIn("USER", capa)
        p.user("support")
        p.pass_(PASSWORD)
        resp, lines, _ = p.retr(1)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", stored_bytes(d, rows[0]["key"]))
        p.quit()
        s = poplib.POP3_SSL("127.0.0.1", pop3_port(d, tls=True), context=client_context(cert),
                            timeout=harness.timeout(10))
        self.assertEqual(s.getwelcome(), b"+OK inlet POP3 server ready")
        self.assertNotIn("STLS", s.capa())
        s.user("support")
        s.pass_(PASSWORD)
        self.assertEqual(s.stat()[0], 1)
        s.quit()


class SemanticsTest(Pop3Case):
    def test_lock_in_use_and_release(self):
        d = self.start()
        send_many(d, [message(1)])
        wait_filed(d, 1)
        a = self.login(d)
        b = poplib.POP3("127.0.0.1", self.port, timeout=harness.timeout(10))
        b.user("support")
        with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[IN-USE\]"):
            b.pass_(PASSWORD)
        a.dele(1)
        a.quit()
        b.user("support")
        self.assertTrue(b.pass_(PASSWORD).startswith(b"+OK Maildrop has 0 messages"))
        b.quit()

    def test_start_releases_only_locks_no_other_node_can_hold(self):
        """SQLite: a process killed while a session held the maildrop lock leaves it for the next
        start to release (the data-dir lock makes that process the database's only node).
        PostgreSQL: a second node starting on the same database keeps the first node's lock."""
        d = self.start()
        send_many(d, [message(1)])
        wait_filed(d, 1)
        a = self.login(d)
        if not harness.PG:
            d.kill9()
            a.close()
            d.restart()
            self.port = pop3_port(d)
            b = self.login(d)
            self.assertEqual(b.stat()[0], 1)
            b.quit()
            return
        other = self.daemon(database_url=d.database_url,
                            args=["--pop3-listen", "127.0.0.1:0"] + self.extra)
        b = poplib.POP3("127.0.0.1", pop3_port(other), timeout=harness.timeout(10))
        b.user("support")
        with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[IN-USE\]"):
            b.pass_(PASSWORD)
        a.quit()
        b.user("support")
        self.assertTrue(b.pass_(PASSWORD).startswith(b"+OK Maildrop has 1 message"))
        b.quit()

    # --- The lock is a lease of --lease-seconds (3 s here), renewed every second while its session
    # lives (engine/mailboxes.c).

    def test_lock_outlives_its_lease_while_the_session_lives(self):
        d = self.start(["--lease-seconds", str(self.LEASE)])
        send_many(d, [message(1)])
        wait_filed(d, 1)
        a = self.login(d)
        time.sleep(self.LEASE * 1.6)  # past the first lease: its renewals keep it
        self.assertTrue(self.in_use(self.port))
        a.noop()
        a.dele(1)
        self.assertTrue(a.quit().startswith(b"+OK Bye, 1 messages deleted"))
        self.assertFalse(self.in_use(self.port))
        row = harness.query(d, "SELECT locked_until, lock_owner FROM mailboxes WHERE name = 'support'")[0]
        self.assertEqual((row[0], row[1]), (0, ""))

    def test_dropped_connection_deletes_nothing(self):
        d = self.start()
        big = b"X" * 998 + b"\r\n"
        ids = send_many(d, [message(1), message(2, big * 3000)])
        rows = wait_filed(d, 2)
        # Their numbers: filing order is by second, then by key.
        n_big = 1 + [r["message_id"] for r in rows].index(ids[1])
        n_small = 3 - n_big
        a = self.login(d)
        a.dele(n_small)
        a.sock.shutdown(socket.SHUT_RDWR)  # no QUIT
        a.close()
        # Killed in the middle of a RETR of 3 MB: read a little, then the socket goes.
        deadline = time.monotonic() + harness.timeout(30)
        while True:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=harness.timeout(30))
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"USER support\r\nPASS " + PASSWORD.encode() + b"\r\n")
            f.readline()
            line = f.readline()
            if line.startswith(b"+OK") or time.monotonic() > deadline:
                break
            s.shutdown(socket.SHUT_RDWR)  # the first session's lock is being released
            s.close()
            time.sleep(0.05)
        self.assertTrue(line.startswith(b"+OK"), line)
        s.sendall(b"DELE %d\r\nRETR %d\r\n" % (n_small, n_big))
        f.readline()
        f.read(4096)
        s.shutdown(socket.SHUT_RDWR)  # in the middle of the RETR
        s.close()
        # Gone while the RETR's message is still being read from storage.
        for _ in range(2):
            s = self.raw_login_when_free()
            s.sendall(b"RETR %d\r\n" % n_big)
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        # Nothing was deleted, the lock was released, the events say what was retrieved.
        p = None
        deadline = time.monotonic() + harness.timeout(30)
        while p is None:
            try:
                p = self.login(d)
            except poplib.error_proto as e:
                if b"IN-USE" not in e.args[0] or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.assertEqual(p.stat()[0], 2)
        self.assertEqual([r["key"] for r in filed(d)], [r["key"] for r in rows])
        p.quit()

    def raw_login_when_free(self, wait_s=30):
        """A raw socket logged in as support, once the maildrop is free."""
        deadline = time.monotonic() + harness.timeout(wait_s)
        while True:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=harness.timeout(30))
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"USER support\r\nPASS " + PASSWORD.encode() + b"\r\n")
            f.readline()
            line = f.readline()
            f.close()
            if line.startswith(b"+OK"):
                return s
            s.close()
            self.assertLess(time.monotonic(), deadline, "the maildrop stayed locked: %r" % line)
            time.sleep(0.05)

    def test_expiry_only_between_sessions(self):
        d = self.start()
        create_route(d, r'match_recipient("short@example\.com")', ['store(mailbox="support", ttl=4)'])
        send_many(d, [message(1)], rcpt="short@example.com")
        wait_filed(d, 1)
        (row,) = harness.query(d, "SELECT expires_at FROM stored WHERE mailbox = 'support'")
        p = self.login(d)
        self.assertLess(time.time(), row["expires_at"], "logged in after the expiry: too slow to tell")
        self.assertEqual(p.stat()[0], 1)
        deadline = time.monotonic() + harness.timeout(10)
        while time.time() < row["expires_at"] + 1.2 and time.monotonic() < deadline:
            time.sleep(0.1)  # expired now, but this session holds the mailbox
        self.assertEqual(p.retr(1)[0].split()[0], b"+OK")
        p.quit()
        p = self.login(d)
        self.assertEqual(p.stat()[0], 0)  # gone at the next session's start
        p.quit()
        self.assertEqual(filed(d), [])

    def test_wrong_password_delay_grows(self):
        d = self.start()
        p = poplib.POP3("127.0.0.1", self.port, timeout=harness.timeout(20))
        took = []
        for _ in range(3):
            p.user("support")
            t0 = time.monotonic()
            with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[AUTH\] Invalid login"):
                p.pass_("wrong password!")
            took.append(time.monotonic() - t0)
        self.assertGreaterEqual(took[0], 0.25)
        self.assertGreaterEqual(took[1], 0.5)
        self.assertGreaterEqual(took[2], 1.0)
        self.assertEqual(p._getline()[0], b"-ERR [AUTH] Too many failed logins, closing")
        self.assertEqual(p.file.read(), b"")  # closed
        # An unknown mailbox gets the same answer.
        q = poplib.POP3("127.0.0.1", self.port, timeout=harness.timeout(20))
        q.user("nobody")
        with self.assertRaisesRegex(poplib.error_proto, r"-ERR \[AUTH\] Invalid login"):
            q.pass_(PASSWORD)
        q.quit()
        self.assertNotIn(PASSWORD, d.all_log_text())
        self.assertNotIn("wrong password!", d.all_log_text())
        self.login(d).quit()

    def test_limits(self):
        d = self.start(["--pop3-timeout", "1"])
        s = socket.create_connection(("127.0.0.1", self.port), timeout=harness.timeout(10))
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"NOOP " + b"x" * 2000 + b"\r\n")
        self.assertEqual(f.readline(), b"-ERR Line too long\r\n")
        self.assertEqual(f.readline(), b"-ERR Autologout: idle for too long\r\n")
        self.assertEqual(f.read(), b"")
        s.close()
        socks = []
        try:
            for _ in range(16):
                socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=harness.timeout(10)))
                socks[-1].makefile("rb").readline()
            extra = socket.create_connection(("127.0.0.1", self.port), timeout=harness.timeout(10))
            self.assertEqual(extra.makefile("rb").readline(), b"-ERR [SYS/TEMP] Too many connections, try again later\r\n")
            extra.close()
        finally:
            for x in socks:
                x.close()


FETCHMAILRC = """set no syslog
poll localhost port {port} protocol pop3 uidl
  user support password "{password}" is local here
  {keep} sslproto tls1.2+ sslcertck sslcertfile {cert}
  mda "/bin/sh -c 'cat > {out}/msg.$$'"
"""


class FetchmailTest(Pop3Case):
    extra = []

    def fetchmail(self, d, cert, keep, idfile, out):
        rc = os.path.join(self.tmp, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(FETCHMAILRC.format(port=self.port,
                                       password=PASSWORD, keep="keep" if keep else "nokeep", cert=cert, out=out))
        os.chmod(rc, 0o600)
        os.makedirs(out, exist_ok=True)
        r = subprocess.run([shutil.which("fetchmail"), "-f", rc, "-i", idfile, "--pidfile", os.path.join(self.tmp, "fetchmail.pid"),
                            "--nosoftbounce", "--invisible"],
                           env=dict(harness.clean_env(), HOME=self.tmp, FETCHMAILHOME=self.tmp), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=harness.timeout(120))
        return r.returncode, r.stdout.decode(errors="replace"), sorted(os.listdir(out))

    def test_drains_500_over_stls_twice_and_keep(self):
        if not shutil.which("fetchmail"):  # scripts/install-deps --test installs it
            raise unittest.SkipTest("fetchmail is not installed")
        cert, key = make_cert(self.tmp, cn="localhost")
        d = self.start(["--tls-cert", cert, "--tls-key", key])
        n = 500
        send_many(d, [message(i, b"line %d\r\n" % i * (i % 7)) for i in range(n)])
        rows = wait_filed(d, n, wait_s=60)
        want = sorted(stored_bytes(d, r["key"]).replace(b"\r\n", b"\n") for r in rows)
        idfile = os.path.join(self.tmp, "fetchids")

        # keep: everything fetched, nothing deleted; again: nothing new.
        rc, out, files = self.fetchmail(d, cert, True, idfile, os.path.join(self.tmp, "a"))
        self.assertEqual(rc, 0, out)
        got = []
        for name in files:
            with open(os.path.join(self.tmp, "a", name), "rb") as f:
                got.append(f.read())
        got.sort()
        self.assertEqual(len(got), n)
        self.assertEqual(got, want)  # byte for byte (fetchmail hands its MDA LF line ends)
        self.assertEqual(len(filed(d)), n)
        rc, out, files = self.fetchmail(d, cert, True, idfile, os.path.join(self.tmp, "b"))
        self.assertEqual((rc, files), (1, []), out)  # 1: no mail

        # Without keep: drained; then nothing is left.
        rc, out, files = self.fetchmail(d, cert, False, idfile + "2", os.path.join(self.tmp, "c"))
        self.assertEqual((rc, len(files)), (0, n), out)
        self.assertEqual(filed(d), [])
        rc, out, files = self.fetchmail(d, cert, False, idfile + "2", os.path.join(self.tmp, "e"))
        self.assertEqual((rc, files), (1, []), out)


if __name__ == "__main__":
    harness.main()
