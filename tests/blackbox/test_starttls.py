"""STARTTLS (RFC 3207, SPEC §1 --tls-cert/--tls-key, §2): smtplib over TLS, the stored tls column and
Received: header, plaintext injection after STARTTLS, a broken handshake, and no STARTTLS without a
certificate.  The certificate is made with the `openssl` command-line tool (skipped without it;
a failure under CI, see tests/skippolicy.py)."""

import os
import shutil
import socket
import ssl
import subprocess
import unittest
import warnings

import harness
from harness import HOSTNAME, InletTestCase, make_message, queued_id

TLS_RE = r"^TLSv1\.[23]:[A-Z0-9_-]+$"


def make_cert(directory, name="cert", cn=HOSTNAME):
    """A self-signed certificate for cn and 127.0.0.1; returns (cert path, key path)."""
    openssl = shutil.which("openssl")
    if not openssl:   # scripts/install-deps installs it: under CI this skip is a failure
        raise unittest.SkipTest("the openssl command is not installed: cannot make a certificate")
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    r = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=" + cn,
                        "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % cn],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=harness.timeout(30))
    if r.returncode != 0:
        raise AssertionError("openssl req failed: %s" % r.stdout.decode(errors="replace"))
    return cert, key


def client_context(cert):
    """A client context that trusts exactly our self-signed certificate."""
    ctx = ssl.create_default_context(cafile=cert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class StartTLS(InletTestCase):
    def tls_daemon(self, **kw):
        self.cert, self.key = make_cert(self.tmp)
        return self.daemon(args=["--tls-cert", self.cert, "--tls-key", self.key], **kw)

    def test_smtplib_starttls_message(self):
        d = self.tls_daemon()
        body = make_message(subject="over tls")
        with d.smtp() as c:
            code, _ = c.ehlo("client.example.test")
            self.assertEqual(code, 250)
            self.assertTrue(c.has_extn("starttls"), "STARTTLS not advertised: %r" % c.esmtp_features)
            code, resp = c.starttls(context=client_context(self.cert))
            self.assertEqual(code, 220, resp)
            self.assertEqual(resp, b"2.0.0 Ready to start TLS")
            version, cipher = c.sock.version(), c.sock.cipher()[0]
            # smtplib forgets the EHLO answer after STARTTLS, as the server forgets the EHLO.
            code, _ = c.ehlo("client.example.test")
            self.assertEqual(code, 250)
            self.assertFalse(c.has_extn("starttls"), "STARTTLS advertised under TLS: %r" % c.esmtp_features)
            self.assertTrue(c.has_extn("pipelining"))
            code, resp = c.docmd("STARTTLS")
            self.assertEqual(code, 503, resp)
            self.assertEqual(c.mail("alice@sender.test")[0], 250)
            self.assertEqual(c.rcpt("bob@example.com")[0], 250)
            code, resp = c.data(body)
            self.assertEqual(code, 250, resp)
            msg_id = resp.decode().rsplit(" ", 1)[1]
        row = self.message(d, msg_id)
        self.assertRegex(row["tls"], TLS_RE)
        self.assertEqual(row["tls"], "%s:%s" % (version, cipher), "the client's view of the session")
        self.assertEqual(row["helo"], "client.example.test")
        m, rest = harness.split_received(bytes(row["raw"]))
        self.assertEqual(m.group("proto"), b"ESMTPS")
        self.assertEqual(m.group("tls").decode(), row["tls"])
        self.assertEqual(rest, body)
        d.wait_log(lambda l: l.topic == "smtp" and " tls started " in l.rest and l.kv.get("tls") == row["tls"],
                   5, "'smtp tls started'")

    def test_plain_message_alongside_tls(self):
        d = self.tls_daemon()
        with d.session() as s:
            code, lines = s.transaction("alice@sender.test", ["bob@example.com"], make_message())
            self.assertEqual(code, 250, lines)
        row = self.message(d, queued_id(lines))
        self.assertEqual(row["tls"], "none")
        m, _ = harness.split_received(bytes(row["raw"]))
        self.assertEqual(m.group("proto"), b"ESMTP")
        self.assertEqual(m.group("tls"), b"none")

    def test_starttls_rules(self):
        d = self.tls_daemon()
        with d.session() as s:
            self.assertReply(s.cmd("STARTTLS"), 503, "503 5.5.1")  # before EHLO
            code, lines = s.cmd("EHLO client.example.test")
            self.assertEqual(code, 250)
            self.assertIn(b"250-STARTTLS", lines)
            self.assertReply(s.cmd("STARTTLS now"), 501, "501 5.5.4")
            self.assertReply(s.cmd("MAIL FROM:<alice@sender.test>"), 250)
            self.assertReply(s.cmd("STARTTLS"), 503, "503 5.5.1")
            self.assertReply(s.cmd("RSET"), 250)
            self.assertReply(s.cmd("QUIT"), 221)

    def test_injection_after_starttls_is_discarded(self):
        d = self.tls_daemon()
        with d.session() as s:
            self.assertEqual(s.cmd("EHLO client.example.test")[0], 250)
            s.send(b"STARTTLS\r\nRSET\r\n")  # one write: the RSET rides along in plaintext
            self.assertReply(s.reply(), 220, "220 2.0.0 Ready to start TLS")
            self.assertEqual(s.buf, b"", "bytes after the 220 before the handshake: %r" % s.buf)
            self.assertTrue(s.nothing_within(harness.timeout(0.5)), "the server answered the injected RSET: %r"
                            % s.buf)
            s.sock = client_context(self.cert).wrap_socket(s.sock, server_hostname=HOSTNAME)
            # The session started over: no HELO known, no reply to RSET waiting.
            self.assertReply(s.cmd("MAIL FROM:<alice@sender.test>"), 503, "503 5.5.1 Error: send HELO/EHLO first")
            code, lines = s.cmd("EHLO client.example.test")
            self.assertEqual(code, 250, lines)
            self.assertNotIn(b"250-STARTTLS", lines)
            self.assertTrue(s.nothing_within(harness.timeout(0.3)), "unexpected bytes %r" % s.buf)
            self.assertReply(s.cmd("QUIT"), 221)
        d.wait_log(lambda l: l.topic == "smtp" and l.rest.startswith("conn=") and "discarded bytes=6" in l.rest,
                   5, "'discarded bytes=6 pipelined after STARTTLS'")

    def test_garbage_instead_of_client_hello(self):
        d = self.tls_daemon()
        with d.session() as s:
            self.assertEqual(s.cmd("EHLO client.example.test")[0], 250)
            self.assertReply(s.cmd("STARTTLS"), 220)
            s.send(b"EHLO still.plaintext.test\r\n" * 4)
            self.assertTrue(s.closed_by_peer(10), "a failed handshake must close the connection")
        d.wait_log(lambda l: l.topic == "smtp" and "tls handshake failed" in l.rest, 5, "'tls handshake failed'")
        # Only that connection: the server goes on, in plaintext and in TLS.
        self.assertTrue(d.running())
        with d.session() as s:
            self.assertEqual(s.cmd("EHLO again.test")[0], 250)
            self.assertReply(s.cmd("QUIT"), 221)
        with d.smtp() as c:
            c.ehlo("client.example.test")
            self.assertEqual(c.starttls(context=client_context(self.cert))[0], 220)
            self.assertEqual(c.noop()[0], 250)

    def test_client_that_rejects_the_certificate(self):
        # A client whose verification fails aborts the handshake: logged, that connection only.
        d = self.tls_daemon()
        other_cert, _ = make_cert(self.tmp, name="other", cn="other.test")
        with d.smtp() as c:
            c.ehlo("client.example.test")
            with self.assertRaises(ssl.SSLError):
                c.starttls(context=client_context(other_cert))
        d.wait_log(lambda l: l.topic == "smtp" and "tls handshake failed" in l.rest, 5, "'tls handshake failed'")
        with d.session() as s:
            self.assertReply(s.cmd("NOOP"), 250)

    def test_handshake_timeout(self):
        d = self.tls_daemon(start=False)
        d.extra_args += ["--smtp-timeout", "1"]
        d.start()
        with d.session() as s:
            self.assertEqual(s.cmd("EHLO client.example.test")[0], 250)
            self.assertReply(s.cmd("STARTTLS"), 220)
            s.send(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
            self.assertTrue(s.closed_by_peer(10), "a stalled handshake must time out")
            self.assertEqual(s.buf, b"", "no plaintext 421 in the middle of a handshake")
        d.wait_log(lambda l: l.topic == "smtp" and "timeout" in l.rest and l.kv.get("state") == "starttls",
                   5, "'timeout state=starttls'")

    def test_pipelining_and_large_message_over_tls(self):
        # Many records per read, replies held back while a commit is in flight, a message far
        # larger than one read and one TLS record: the TLS path must lose and add nothing.
        d = self.tls_daemon()
        big = make_message(subject="big", body_text=("0123456789abcdef" * 63 + "\r\n") * 1200)  # ~1.2 MiB
        small = make_message(subject="small")
        with d.session() as s:
            self.assertEqual(s.cmd("EHLO client.example.test")[0], 250)
            self.assertReply(s.cmd("STARTTLS"), 220)
            s.sock = client_context(self.cert).wrap_socket(s.sock, server_hostname=HOSTNAME)
            self.assertEqual(s.cmd("EHLO client.example.test")[0], 250)
            batch = b""
            for body in (big, small):
                batch += (b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" +
                          harness.dot_stuff(body) + b".\r\n")
            batch += b"NOOP\r\n" * 3000 + b"QUIT\r\n"
            s.send(batch)
            ids = []
            for _ in range(2):
                self.assertReply(s.reply(), 250, "250 2.1.0")
                self.assertReply(s.reply(), 250, "250 2.1.5")
                self.assertReply(s.reply(), 354)
                code, lines = s.reply()
                self.assertEqual(code, 250, lines)
                ids.append(queued_id(lines))
            for i in range(3000):
                self.assertReply(s.reply(), 250, "250 2.0.0 Ok")
            self.assertReply(s.reply(), 221)
        for msg_id, body in zip(ids, (big, small)):
            row = self.message(d, msg_id)
            self.assertRegex(row["tls"], TLS_RE)
            _, rest = harness.split_received(bytes(row["raw"]))
            self.assertEqual(rest, body)

    def test_tls12_client(self):
        d = self.tls_daemon()
        ctx = client_context(self.cert)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with d.smtp() as c:
            c.ehlo("client.example.test")
            self.assertEqual(c.starttls(context=ctx)[0], 220)
            self.assertEqual(c.sock.version(), "TLSv1.2")
            c.ehlo("client.example.test")
            self.assertEqual(c.mail("alice@sender.test")[0], 250)
            self.assertEqual(c.rcpt("bob@example.com")[0], 250)
            code, resp = c.data(make_message())
            self.assertEqual(code, 250, resp)
        row = self.message(d, resp.decode().rsplit(" ", 1)[1])
        self.assertTrue(row["tls"].startswith("TLSv1.2:ECDHE-"), row["tls"])

    def test_old_protocol_refused(self):
        d = self.tls_daemon()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError) as e:
            self.skipTest("this Python/OpenSSL cannot offer TLS 1.1: %s" % e)
        with d.smtp() as c:
            c.ehlo("client.example.test")
            with self.assertRaises((ssl.SSLError, OSError)):
                c.starttls(context=ctx)
        d.wait_log(lambda l: l.topic == "smtp" and "tls handshake failed" in l.rest, 5, "'tls handshake failed'")


class NoCertificate(InletTestCase):
    def test_not_offered(self):
        d = self.daemon()
        with d.session() as s:
            code, lines = s.cmd("EHLO client.example.test")
            self.assertEqual(code, 250)
            self.assertNotIn(b"250-STARTTLS", lines)
            self.assertReply(s.cmd("STARTTLS"), 502, "502 5.5.1")
            self.assertReply(s.cmd("NOOP"), 250)

    def test_bad_certificate_fails_start(self):
        bad = self.tmp_path("not-a-cert.pem")
        with open(bad, "w") as f:
            f.write("this is not a certificate\n")
        cert, key = make_cert(self.tmp)
        other_cert, _ = make_cert(self.tmp, name="other", cn="other.test")
        for args, want in (
                (["--tls-cert", bad, "--tls-key", key], "--tls-cert %s: cannot load" % bad),
                (["--tls-cert", cert, "--tls-key", bad], "--tls-key %s: cannot load" % bad),
                (["--tls-cert", other_cert, "--tls-key", key], "does not match")):
            d = self.daemon(args=args, start=False)
            d.spawn()
            self.assertNotEqual(d.expect_exit(20), 0, "inlet started with %r" % args)
            self.assertIn(want, d.log_text())


if __name__ == "__main__":
    harness.main()
