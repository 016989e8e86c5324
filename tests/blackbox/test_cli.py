"""Command line, settings, listeners, data dir, schema version, graceful stop (SPEC §1, §8)."""

import os
import re
import signal
import socket
import stat
import urllib.request

import harness
from harness import HOSTNAME, InletTestCase, make_message, queued_id, run_cli

OPTIONS = ["--config", "--smtp-listen", "--http-listen", "--data-dir", "--domain", "--hostname",
           "--max-message-size", "--max-recipients", "--max-connections", "--max-connections-per-ip",
           "--smtp-timeout", "--max-hops", "--shutdown-grace", "--min-free-disk", "--log-level"]


def greeting_host(d):
    with d.session(read_greeting=False) as s:
        code, lines = s.reply()
        assert code == 220, lines
        return lines[0].decode()


class HelpVersion(InletTestCase):
    def test_help_lists_every_option(self):
        r = run_cli(["--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout + r.stderr
        for opt in OPTIONS:
            self.assertIn(opt, out, "--help does not mention %s" % opt)
        for cmd in ("serve", "check-config"):
            self.assertIn(cmd, out)

    def test_version(self):
        r = run_cli(["--version"])
        self.assertEqual(r.returncode, 0, r.stderr)
        first = r.stdout.splitlines()[0] if r.stdout else ""
        self.assertRegex(first, r"^inlet \d+\.\d+\S*$")


class CheckConfig(InletTestCase):
    def check(self, args, env=None):
        return run_cli(["check-config"] + args, env=env, cwd=self.tmp)

    def test_ok(self):
        r = self.check(["--data-dir", self.tmp_path("data"), "--domain", "example.com",
                        "--domain", "*.example.org", "--smtp-listen", "127.0.0.1:2525",
                        "--smtp-listen", "[::1]:2525", "--max-message-size=1048576"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_ok_from_file(self):
        conf = self.tmp_path("inlet.conf")
        with open(conf, "w") as f:
            f.write("[inlet]\nsmtp-listen = 127.0.0.1:2600, 127.0.0.1:2601\ndomain = a.test,b.test\n"
                    "max-recipients = 5\nlog-level = debug\n")
        r = self.check(["--config", conf])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_errors_exit_1(self):
        bad = self.tmp_path("bad.conf")
        with open(bad, "w") as f:
            f.write("[inlet]\nmax-message-size = 5\n")
        cases = [
            # (args, env, a word the error must mention)
            (["--smtp-listen", "127.0.0.1"], None, "smtp-listen"),
            (["--smtp-listen", "127.0.0.1:99999"], None, "smtp-listen"),
            (["--http-listen", "127.0.0.1:-5"], None, "http-listen"),
            (["--domain", "bad domain.test"], None, "domain"),
            (["--domain", "a..b.test"], None, "domain"),
            (["--domain", "-x.example.com"], None, "domain"),
            (["--max-message-size", "10"], None, "max-message-size"),
            (["--max-message-size", "99999999999999999"], None, "max-message-size"),
            (["--max-message-size", "12abc"], None, "max-message-size"),
            (["--max-hops", "-1"], None, "max-hops"),
            (["--log-level", "loud"], None, "log-level"),
            (["--no-such-option", "1"], None, "no-such-option"),
            ([], {"INLET_MAX_RECIPIENTS": "many"}, "max-recipients"),
            (["--config", bad], None, "max-message-size"),
            (["--config", self.tmp_path("missing.conf")], None, "missing.conf"),
        ]
        for args, env, word in cases:
            with self.subTest(args=args, env=env):
                r = self.check(["--domain", "example.com"] + args, env=env)
                self.assertEqual(r.returncode, 1, "exit status for %r %r: %d\nstdout: %s\nstderr: %s"
                                 % (args, env, r.returncode, r.stdout, r.stderr))
                self.assertNotIn("configuration OK", r.stdout)
                self.assertTrue(r.stderr.strip(), "no error printed on stderr")
                self.assertIn(word.lower(), r.stderr.lower(), "the error does not name %r" % word)

    def test_serve_refuses_bad_config(self):
        r = run_cli(["serve", "--data-dir", self.tmp_path("data"), "--smtp-listen", "nonsense"],
                    cwd=self.tmp)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("smtp-listen", r.stderr)


class DatabaseSetting(InletTestCase):
    """--database: sqlite:PATH or a PostgreSQL URI; a password in it is never shown (check-config,
    errors, the log)."""

    PASSWORD = "pw-" + os.urandom(6).hex()

    def assertHidden(self, text):
        self.assertNotIn(self.PASSWORD, text)

    def test_check_config_masks_the_password(self):
        url = "postgresql://inlet:%s@db.internal:5433/inlet?sslmode=require&password=%s" % (
            self.PASSWORD, self.PASSWORD)
        shown = "database=postgresql://inlet:***@db.internal:5433/inlet?sslmode=require&password=***\n"
        for args, env in ((["--database", url], None), ([], {"INLET_DATABASE": url})):
            r = run_cli(["check-config", "--data-dir", self.tmp_path("d")] + args, env=env, cwd=self.tmp)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(shown, r.stdout)
            self.assertHidden(r.stdout + r.stderr)
        r = run_cli(["check-config", "--database", "postgres://inlet@db.internal/inlet"], cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("database=postgres://inlet@db.internal/inlet\n", r.stdout)

    def test_other_schemes_refused_without_the_password(self):
        for url in ("mysql://root:%s@db/inlet" % self.PASSWORD, "postgressql://u:%s@db/x" % self.PASSWORD,
                    "sqlite:", "/var/lib/inlet.db"):
            r = run_cli(["check-config", "--database", url], cwd=self.tmp)
            self.assertEqual(r.returncode, 1, (url, r.stdout, r.stderr))
            self.assertIn("--database", r.stderr)
            self.assertIn("is not sqlite:PATH or a postgresql:// URL", r.stderr)
            self.assertHidden(r.stdout + r.stderr)

    def test_serve_never_logs_the_password(self):
        # A server that cannot be reached: inlet gives up with the reason, and no password.
        held = self.hold_port()
        url = "postgresql://inlet:%s@127.0.0.1:%d/inlet" % (self.PASSWORD, held.port)
        d = self.daemon(start=False, args=["--database", url])
        d.spawn()
        self.assertNotEqual(d.expect_exit(30), 0, d.log_text())
        self.assertTrue(d.find_lines("error"), d.log_text())
        self.assertHidden(d.log_text())
        r = run_cli(["keys", "--data-dir", d.data_dir, "--database", url])
        self.assertNotEqual(r.returncode, 0)
        self.assertHidden(r.stdout + r.stderr)


class DatabasePassword(InletTestCase):
    """(Suite postgres only: there is a server to connect to.)"""

    def test_serve_with_the_password_in_the_url(self):
        # The real password in the URL, PGPASSFILE pointed elsewhere: inlet connects with the
        # URL's password, and neither its log nor `inlet keys` errors show it.
        with open(os.environ["PGPASSFILE"]) as f:
            password = f.readline().rstrip("\n").split(":", 4)[4]
        d0 = self.daemon(start=False)
        url = d0.database_url.replace("postgresql://inlet@", "postgresql://inlet:%s@" % password, 1)
        self.assertNotEqual(url, d0.database_url)
        d = self.daemon(start=False, data_dir=d0.data_dir, args=["--database", url],
                        env={"PGPASSFILE": self.tmp_path("no-such-pgpass")})
        d.start()
        with d.session() as s:
            code, lines = s.transaction("a@b.test", ["x@example.com"], make_message())
            self.assertEqual(code, 250, lines)
        d.stop()
        self.assertNotIn(password, d.all_log_text())


if not harness.PG:
    del DatabasePassword


class Precedence(InletTestCase):
    """command line > environment > file > default, shown by the greeting's hostname and by the
    address actually listened on.  Each source names its own loopback address (127.0.0.2 file,
    .3 environment, .4 command line) with port 0: inlet binds first and reports the port it got,
    no port number is chosen in advance (see harness.py)."""

    FILE, ENV, CLI = "127.0.0.2", "127.0.0.3", "127.0.0.4"

    def setUp(self):
        super().setUp()
        self.conf = self.tmp_path("inlet.conf")
        with open(self.conf, "w") as f:
            f.write("[inlet]\n"
                    "hostname = file.inlet.test\n"
                    "smtp-listen = %s:0\n"
                    "http-listen = 127.0.0.1:0\n"
                    "data-dir = %s\n"
                    "domain = file.test, file2.test\n" % (self.FILE, self.tmp_path("data")))

    def assertListensOnlyOn(self, d, host):
        """The log names exactly one SMTP listener, on `host`; the same port on the other
        sources' addresses answers no inlet greeting."""
        self.assertEqual([h for h, _ in d.smtp_addrs], [host], d.smtp_addrs)
        for other in {self.FILE, self.ENV, self.CLI} - {host}:
            with socket.socket() as s:
                s.settimeout(harness.timeout(2))
                if s.connect_ex((other, d.smtp_port)) != 0:
                    continue
                try:
                    greeting = s.recv(512)
                except OSError:
                    greeting = b""
                self.assertNotIn(b"inlet", greeting, "%s:%d should not be listened on" % (other, d.smtp_port))

    def start(self, env=None, args=()):
        return self.daemon(args=["--config", self.conf] + list(args), env=env, defaults=False,
                           data_dir=self.tmp_path("data"))

    def test_file_only(self):
        d = self.start()
        self.assertListensOnlyOn(d, self.FILE)
        self.assertEqual(greeting_host(d), "220 file.inlet.test ESMTP inlet")
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            # Lists in the file are comma-separated.
            self.assertReply(s.cmd("RCPT TO:<x@file.test>"), 250)
            self.assertReply(s.cmd("RCPT TO:<x@file2.test>"), 250)
            self.assertReply(s.cmd("RCPT TO:<x@env.test>"), 550, "550 5.7.1")

    def test_env_over_file(self):
        d = self.start(env={"INLET_HOSTNAME": "env.inlet.test",
                            "INLET_SMTP_LISTEN": self.ENV + ":0",
                            "INLET_DOMAIN": "env.test,env2.test"})
        self.assertListensOnlyOn(d, self.ENV)
        self.assertEqual(greeting_host(d), "220 env.inlet.test ESMTP inlet")
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            self.assertReply(s.cmd("RCPT TO:<x@env.test>"), 250)
            self.assertReply(s.cmd("RCPT TO:<x@env2.test>"), 250)
            # A higher source replaces the list as a whole.
            self.assertReply(s.cmd("RCPT TO:<x@file.test>"), 550, "550 5.7.1")

    def test_cli_over_env_over_file(self):
        d = self.start(env={"INLET_HOSTNAME": "env.inlet.test",
                            "INLET_SMTP_LISTEN": self.ENV + ":0"},
                       args=["--hostname=cli.inlet.test", "--smtp-listen", self.CLI + ":0"])
        self.assertListensOnlyOn(d, self.CLI)
        self.assertEqual(greeting_host(d), "220 cli.inlet.test ESMTP inlet")


class Listeners(InletTestCase):
    def test_two_smtp_listeners(self):
        d = self.daemon(args=["--smtp-listen", "127.0.0.1:0"])
        self.assertEqual(len(d.smtp_addrs), 2, d.smtp_addrs)
        self.assertNotEqual(d.smtp_addrs[0][1], d.smtp_addrs[1][1])
        for i in range(2):
            with d.session(addr_index=i) as s:
                self.assertReply(s.cmd("EHLO c.test"), 250)
                self.assertReply(s.cmd("QUIT"), 221)

    def test_two_http_listeners(self):
        d = self.daemon(args=["--http-listen", "127.0.0.1:0"])
        self.assertEqual(len(d.http_addrs), 2, d.http_addrs)
        for host, port in d.http_addrs:
            with urllib.request.urlopen("http://%s:%d/healthz" % (host, port),
                                        timeout=harness.timeout(10)) as r:
                self.assertEqual(r.status, 200)

    def test_listener_list_from_environment(self):
        d = self.daemon(defaults=False, data_dir=self.tmp_path("data"),
                        env={"INLET_SMTP_LISTEN": "127.0.0.1:0,127.0.0.1:0",
                             "INLET_HTTP_LISTEN": "127.0.0.1:0",
                             "INLET_DATA_DIR": self.tmp_path("data"),
                             "INLET_DOMAIN": "example.com"})
        self.assertEqual(len(d.smtp_addrs), 2, d.smtp_addrs)
        if not harness.PG:
            self.assertTrue(os.path.exists(d.db_path))

    def test_ipv6_listener(self):
        if not harness.ipv6_loopback_available():
            self.skipTest("::1 is not available on this machine")
        data = self.tmp_path("data")
        d = self.daemon(defaults=False, data_dir=data, args=[
            "--smtp-listen", "[::1]:0", "--smtp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--data-dir", data, "--domain", "example.com", "--hostname", HOSTNAME])
        hosts = sorted(h for h, _ in d.smtp_addrs)
        self.assertEqual(hosts, ["127.0.0.1", "::1"], d.smtp_addrs)
        lines = [l.raw for l in d.find_lines("info", "smtp", "listening")]
        self.assertTrue(any("addr=[::1]:" in l for l in lines), lines)
        i6 = [i for i, (h, _) in enumerate(d.smtp_addrs) if h == "::1"][0]
        with d.session(addr_index=i6) as s:
            s.cmd("EHLO c.test")
            body = make_message(subject="over ipv6")
            code, lines = s.transaction("a@b.test", ["x@example.com"], body, ehlo=None)
            self.assertEqual(code, 250, lines)
            row = self.message(d, queued_id(lines))
            self.assertEqual(row["remote_ip"], "::1")


class DataDir(InletTestCase):
    def test_modes(self):
        d = self.daemon(umask=0)
        st = os.stat(d.data_dir)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700, "data dir mode %o" % stat.S_IMODE(st.st_mode))
        # Commit something so that the WAL exists too.
        with d.session() as s:
            code, lines = s.transaction("a@b.test", ["x@example.com"], make_message())
            self.assertEqual(code, 250, lines)
        for name in () if harness.PG else ("inlet.db", "inlet.db-wal", "inlet.db-shm"):
            p = os.path.join(d.data_dir, name)
            if name != "inlet.db" and not os.path.exists(p):
                continue
            mode = stat.S_IMODE(os.stat(p).st_mode)
            self.assertEqual(mode & 0o077, 0, "%s is mode %o (must be 0600)" % (name, mode))
        if not harness.PG:  # (with PostgreSQL the data dir holds no database)
            self.assertEqual(stat.S_IMODE(os.stat(d.db_path).st_mode), 0o600)

    def binary_schema(self):
        """The schema version the binary writes, as `inlet --version` states it."""
        m = re.search(r"schema (\d+)", harness.run_cli(["--version"]).stdout)
        self.assertIsNotNone(m, "inlet --version names no schema")
        return m.group(1)

    def test_schema(self):
        d = self.daemon()
        rows = harness.query(d, "SELECT value FROM meta WHERE key = 'schema_version'")
        self.assertEqual([str(r[0]) for r in rows], [self.binary_schema()])
        if harness.PG:
            cols = [r[0] for r in harness.query(
                d, "SELECT column_name FROM information_schema.columns WHERE table_name = 'messages'")]
            # Bodies out of line and uncompressed (migration 9: pglz cost CPU, not bytes, on mail).
            storage = harness.query(d, "SELECT attstorage FROM pg_attribute"
                                       " WHERE attrelid = 'messages'::regclass AND attname = 'raw'")
            self.assertEqual([r[0] for r in storage], ["e"])
        else:
            cols = [r[1] for r in harness.query(d, "PRAGMA table_info(messages)")]
        for c in ("id", "received_at", "sender", "recipients", "remote_ip", "helo", "tls", "size", "raw",
                  "state"):
            self.assertIn(c, cols)
        if not harness.PG:
            mode = harness.query(d, "PRAGMA journal_mode")[0][0]
            self.assertEqual(mode.lower(), "wal")

    def test_refuses_newer_schema(self):
        d = self.daemon()
        self.assertEqual(d.stop(), 0)
        d.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
        d.spawn()
        rc = d.expect_exit(10)
        self.assertEqual(rc, 1, d.log_text())
        self.assertIn("999", d.log_text(), "the error should name the database's version")
        # And the database was left alone.
        rows = harness.query(d, "SELECT value FROM meta WHERE key = 'schema_version'")
        self.assertEqual(str(rows[0][0]), "999")

    def test_restart_keeps_schema(self):
        d = self.daemon()
        self.assertEqual(d.stop(), 0)
        d.start()
        rows = harness.query(d, "SELECT value FROM meta WHERE key = 'schema_version'")
        self.assertEqual([str(r[0]) for r in rows], [self.binary_schema()])


class Signals(InletTestCase):
    def test_sigterm_mid_data_finishes_the_transaction(self):
        d = self.daemon(args=["--shutdown-grace", "30"])
        s = d.session()
        self.addCleanup(s.close)
        self.assertReply(s.cmd("EHLO c.test"), 250)
        self.assertReply(s.cmd("MAIL FROM:<a@b.test>"), 250)
        self.assertReply(s.cmd("RCPT TO:<x@example.com>"), 250)
        self.assertReply(s.cmd("DATA"), 354)
        body = make_message(subject="in flight", body_text="first half\r\nsecond half")
        half = len(body) // 2
        s.send(body[:half])
        d.send_signal(signal.SIGTERM)
        d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("stopping"), 10,
                   "'engine stopping'", after=0)
        # Stopped accepting: a new connection is refused or told 421.
        try:
            with harness.RawSession("127.0.0.1", d.smtp_port, 5) as s2:
                code, lines = s2.reply()
                self.assertIn(code, (None, 421), lines)
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        self.assertTrue(d.running(), "inlet exited before the transaction in flight ended")
        s.send(body[half:] + b".\r\n")
        code, lines = s.reply()
        self.assertEqual(code, 250, lines)
        msg_id = queued_id(lines)
        # The session then ends (221 to QUIT, or 421 4.3.2 and close).
        try:
            s.send(b"QUIT\r\n")
            code, lines = s.reply()
            self.assertIn(code, (None, 221, 421), lines)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertEqual(d.expect_exit(15), 0, d.log_text())
        row = self.message(d, msg_id)
        _, rest = harness.split_received(bytes(row["raw"]))
        self.assertEqual(rest, body)

    def test_sigterm_idle_session_gets_421(self):
        d = self.daemon()
        s = d.session()
        self.addCleanup(s.close)
        self.assertReply(s.cmd("EHLO c.test"), 250)
        d.send_signal(signal.SIGTERM)
        code, lines = s.reply(10)
        self.assertEqual(code, 421, lines)
        self.assertTrue(lines[-1].startswith(b"421 4.3.2"), lines)
        self.assertEqual(d.expect_exit(15), 0, d.log_text())

    def test_sigint_exits_0(self):
        d = self.daemon()
        d.send_signal(signal.SIGINT)
        self.assertEqual(d.expect_exit(10), 0, d.log_text())
        self.assertTrue(d.find_lines("info", "engine", "stopping"), "no 'engine stopping' line")


if __name__ == "__main__":
    harness.main()
