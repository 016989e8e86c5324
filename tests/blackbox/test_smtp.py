"""The SMTP receiver against SPEC §2: good sessions (smtplib, swaks) and malformed ones (raw sockets)."""

import email.utils
import json
import os
import shutil
import subprocess
import time

import harness
from harness import HOSTNAME, InletTestCase, dot_stuff, make_message, queued_id


def recipients(row):
    return json.loads(row["recipients"])


class Good(InletTestCase):
    def test_smtplib_session(self):
        d = self.daemon()
        with d.smtp() as c:
            code, _ = c.ehlo("client.example.test")
            self.assertEqual(code, 250)
            for kw in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes"):
                self.assertTrue(c.has_extn(kw), "EHLO does not advertise %s: %r" % (kw, c.esmtp_features))
            self.assertEqual(c.esmtp_features["size"], "26214400")
            self.assertEqual(c.mail("alice@sender.test")[0], 250)
            self.assertEqual(c.rcpt("bob@example.com")[0], 250)
            body = make_message()
            code, resp = c.data(body)
            self.assertEqual(code, 250, resp)
            self.assertRegex(resp.decode(), r"^2\.0\.0 Ok: queued as [0-9a-f]{24}$")
            msg_id = resp.decode().rsplit(" ", 1)[1]
        row = self.message(d, msg_id)
        self.assertEqual(row["sender"], "alice@sender.test")
        self.assertEqual(recipients(row), ["bob@example.com"])
        self.assertEqual(row["remote_ip"], "127.0.0.1")
        self.assertEqual(row["helo"], "client.example.test")
        self.assertEqual(row["tls"], "none")
        self.assertIn(row["state"], ("accepted", "routed"))  # routing: test_pipeline.py
        _, rest = harness.split_received(bytes(row["raw"]))
        self.assertEqual(rest, body)
        self.assertIn(row["size"], (len(body), len(bytes(row["raw"]))))
        d.wait_log(lambda l: l.topic == "smtp" and l.rest.startswith("queued") and l.kv.get("id") == msg_id,
                   5, "'smtp queued id=%s'" % msg_id)

    def test_smtplib_sendmail_partly_refused(self):
        d = self.daemon()
        with d.smtp() as c:
            refused = c.sendmail("alice@sender.test", ["a@example.com", "b@EXAMPLE.com", "c@elsewhere.invalid"],
                                 make_message())
        self.assertEqual(list(refused), ["c@elsewhere.invalid"])
        self.assertEqual(refused["c@elsewhere.invalid"][0], 550)
        self.assertEqual(refused["c@elsewhere.invalid"][1], b"5.7.1 Relaying denied")
        rows = self.messages(d)
        self.assertEqual(len(rows), 1)
        self.assertEqual(recipients(rows[0]), ["a@example.com", "b@EXAMPLE.com"])

    def test_null_sender(self):
        d = self.daemon()
        with d.session() as s:
            s.cmd("EHLO c.test")
            self.assertReply(s.cmd("MAIL FROM:<>"), 250)
            self.assertReply(s.cmd("RCPT TO:<bounce@example.com>"), 250)
            self.assertReply(s.cmd("DATA"), 354)
            s.send(make_message() + b".\r\n")
            code, lines = s.reply()
            self.assertEqual(code, 250, lines)
        self.assertEqual(self.message(d, queued_id(lines))["sender"], "")

    def test_swaks(self):
        swaks = shutil.which("swaks")
        if not swaks:   # scripts/install-deps installs it: under CI this skip is a failure
            self.skipTest("swaks is not installed")
        d = self.daemon()
        server = "127.0.0.1:%d" % d.smtp_port
        r = subprocess.run([swaks, "--server", server, "--to", "someone@example.com", "--timeout", "20"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=harness.timeout(60), text=True, errors="replace")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertRegex(r.stdout, r"<-\s+250 2\.0\.0 Ok: queued as [0-9a-f]{24}")
        r = subprocess.run([swaks, "--server", server, "--to", "x@elsewhere.invalid", "--timeout", "20"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=harness.timeout(60), text=True, errors="replace")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("550 5.7.1 Relaying denied", r.stdout)
        self.assertEqual(len(self.messages(d)), 1)

    def test_basic_commands(self):
        d = self.daemon()
        with d.session() as s:
            code, lines = s.cmd("HELO client.example.test")
            self.assertEqual(code, 250)
            self.assertEqual(len(lines), 1, lines)
            self.assertReply(s.cmd("NOOP"), 250)
            self.assertReply(s.cmd("RSET"), 250)
            self.assertReply(s.cmd("VRFY someone@example.com"), 252)
            code, lines = s.cmd("HELP")
            self.assertTrue(200 <= code < 300, lines)
            self.assertReply(s.cmd("QUIT"), 221)
            self.assertTrue(s.closed_by_peer(5), "connection not closed after QUIT")

    def test_ehlo_reply(self):
        d = self.daemon(args=["--max-message-size", "1048576"])
        with d.session() as s:
            code, lines = s.cmd("EHLO client.example.test")
            self.assertEqual(code, 250)
            self.assertTrue(lines[0].startswith(b"250-" + HOSTNAME.encode()), lines)
            kws = [l[4:].decode().upper() for l in lines[1:]]
            for kw in ("PIPELINING", "SIZE 1048576", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"):
                self.assertIn(kw, kws)
            self.assertNotIn("STARTTLS", kws)
            # EHLO again resets and works.
            self.assertReply(s.cmd("EHLO again.example.test"), 250)

    def test_rset_clears_transaction(self):
        d = self.daemon()
        with d.session() as s:
            s.cmd("EHLO c.test")
            self.assertReply(s.cmd("MAIL FROM:<a@b.test>"), 250)
            self.assertReply(s.cmd("RCPT TO:<x@example.com>"), 250)
            self.assertReply(s.cmd("RSET"), 250)
            self.assertReply(s.cmd("DATA"), 503, "503 5.5.1")
            self.assertReply(s.cmd("MAIL FROM:<a@b.test>"), 250)

    def test_several_transactions_in_one_session(self):
        d = self.daemon()
        ids = []
        with d.session() as s:
            s.cmd("EHLO c.test")
            bodies = [make_message(subject="n%d" % i) for i in range(3)]
            for i, b in enumerate(bodies):
                code, lines = s.transaction("a@b.test", ["r%d@example.com" % i], b, ehlo=None)
                self.assertEqual(code, 250, lines)
                ids.append(queued_id(lines))
        self.assertEqual(len(set(ids)), 3)
        for i, msg_id in enumerate(ids):
            row = self.message(d, msg_id)
            self.assertEqual(recipients(row), ["r%d@example.com" % i])
            self.assertEqual(harness.split_received(bytes(row["raw"]))[1], bodies[i])


class Received(InletTestCase):
    def test_received_header_and_raw_bytes(self):
        d = self.daemon()
        body = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.com\r\nSubject: raw\r\n"
                b"X-8bit: \xc3\xa9\xff\x00\x80\r\n\r\n"
                b"bare LF\nbare CR\rtrailing spaces   \r\n\ttab\r\n" + b"L" * 10000 + b"\r\n"
                b"\r\n\r\nend\r\n")
        t0 = time.time()
        with d.session() as s:
            code, lines = s.transaction("alice@sender.test", ["bob@example.com"], body,
                                        ehlo="client.example.test")
            self.assertEqual(code, 250, lines)
        msg_id = queued_id(lines)
        row = self.message(d, msg_id)
        raw = bytes(row["raw"])
        m, rest = harness.split_received(raw)
        self.assertEqual(rest, body, "stored bytes differ from the bytes sent")
        self.assertEqual(m.group("helo"), b"client.example.test")
        self.assertEqual(m.group("ip"), b"127.0.0.1")
        self.assertEqual(m.group("host"), HOSTNAME.encode())
        self.assertEqual(m.group("id").decode(), msg_id)
        self.assertEqual(m.group("tls"), b"none")
        self.assertEqual(m.group("proto"), b"ESMTP")
        date = m.group("date").decode()
        self.assertRegex(date, r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} "
                               r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                               r"\d\d:\d\d:\d\d \+0000$")
        when = email.utils.parsedate_to_datetime(date).timestamp()
        self.assertLess(abs(when - t0), 120, "Received: date %s is not now" % date)
        # Only one Received: header was added.
        self.assertFalse(rest.startswith(b"Received:"))
        ra = row["received_at"]
        if ra > 10 ** 11:  # milliseconds
            ra = ra / 1000.0
        self.assertLess(abs(ra - t0), 120, "received_at %r is not now" % row["received_at"])


class Sequence(InletTestCase):
    def test_out_of_sequence(self):
        d = self.daemon()
        cases = [
            ([], "MAIL FROM:<a@b.test>"),
            ([], "RCPT TO:<x@example.com>"),
            ([], "DATA"),
            (["EHLO c.test"], "RCPT TO:<x@example.com>"),
            (["EHLO c.test"], "DATA"),
            (["EHLO c.test", "MAIL FROM:<a@b.test>"], "DATA"),
            (["EHLO c.test", "MAIL FROM:<a@b.test>"], "MAIL FROM:<a@b.test>"),
        ]
        for before, cmd in cases:
            with self.subTest(before=before, cmd=cmd), d.session() as s:
                for b in before:
                    code, lines = s.cmd(b)
                    self.assertEqual(code, 250, lines)
                self.assertReply(s.cmd(cmd), 503, "503 5.5.1")
                self.assertReply(s.cmd("NOOP"), 250)

    def test_data_after_refused_recipients(self):
        d = self.daemon()
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            self.assertReply(s.cmd("RCPT TO:<x@elsewhere.invalid>"), 550, "550 5.7.1 Relaying denied")
            code, lines = s.cmd("DATA")
            self.assertIn(code, (503, 554), lines)
            self.assertIn(b"5.5.1", lines[-1])
            self.assertReply(s.cmd("NOOP"), 250)

    def test_unknown_command(self):
        d = self.daemon()
        with d.session() as s:
            self.assertReply(s.cmd("FOO bar"), 500, "500 5.5.2")
            self.assertReply(s.cmd("EHLO c.test"), 250)
            self.assertReply(s.cmd("XYZZY"), 500, "500 5.5.2")
            self.assertReply(s.cmd("MAIL FROM:<a@b.test>"), 250)

    def test_line_too_long(self):
        d = self.daemon()
        with d.session() as s:
            s.cmd("EHLO c.test")
            self.assertReply(s.cmd(b"NOOP " + b"x" * 3000), 500, "500 5.5.2 Line too long")
            self.assertReply(s.cmd("NOOP"), 250)
            # Exactly 2048 octets with the CRLF: allowed.
            self.assertReply(s.cmd(b"NOOP " + b"y" * (2048 - 5 - 2)), 250)
            # 2049: too long.
            self.assertReply(s.cmd(b"NOOP " + b"z" * (2049 - 5 - 2)), 500, "500 5.5.2 Line too long")
            # A huge line, sent in pieces, then a normal transaction.
            s.send(b"MAIL FROM:<" + b"a" * 100000)
            s.send(b"@b.test>\r\n")
            self.assertReply(s.reply(), 500, "500 5.5.2 Line too long")
            body = make_message()
            code, lines = s.transaction("a@b.test", ["x@example.com"], body, ehlo=None)
            self.assertEqual(code, 250, lines)
        self.assertEqual(len(self.messages(d)), 1)


class Recipients(InletTestCase):
    def test_relay_denied(self):
        d = self.daemon()
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            for r in ("x@elsewhere.invalid", "x@example.com.evil.test", "x@sub.example.com", "x@xexample.com"):
                with self.subTest(rcpt=r):
                    code, lines = s.cmd("RCPT TO:<%s>" % r)
                    self.assertEqual((code, lines[-1]), (550, b"550 5.7.1 Relaying denied"))
            self.assertReply(s.cmd("RCPT TO:<x@EXAMPLE.COM>"), 250)

    def test_wildcard_domain(self):
        d = self.daemon(domains=["*.example.org"])
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            self.assertReply(s.cmd("RCPT TO:<x@a.example.org>"), 250)
            self.assertReply(s.cmd("RCPT TO:<x@b.c.EXAMPLE.org>"), 250)
            self.assertReply(s.cmd("RCPT TO:<x@badexample.org>"), 550, "550 5.7.1")
            self.assertReply(s.cmd("RCPT TO:<x@example.org.evil.test>"), 550, "550 5.7.1")
            self.assertReply(s.cmd("RCPT TO:<x@example.com>"), 550, "550 5.7.1")

    def test_too_many_recipients(self):
        d = self.daemon(args=["--max-recipients", "3"])
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            for i in range(3):
                self.assertReply(s.cmd("RCPT TO:<r%d@example.com>" % i), 250)
            code, lines = s.cmd("RCPT TO:<r3@example.com>")
            self.assertEqual((code, lines[-1]), (452, b"452 4.5.3 Too many recipients"))
            self.assertReply(s.cmd("DATA"), 354)
            s.send(make_message() + b".\r\n")
            code, lines = s.reply()
            self.assertEqual(code, 250, lines)
        self.assertEqual(recipients(self.message(d, queued_id(lines))),
                         ["r0@example.com", "r1@example.com", "r2@example.com"])

    def test_duplicates_count_once(self):
        d = self.daemon(args=["--max-recipients", "2"])
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            self.assertReply(s.cmd("RCPT TO:<a@example.com>"), 250)
            self.assertReply(s.cmd("RCPT TO:<a@example.com>"), 250)
            self.assertReply(s.cmd("RCPT TO:<a@EXAMPLE.Com>"), 250)
            self.assertReply(s.cmd("RCPT TO:<b@example.com>"), 250)
            self.assertReply(s.cmd("RCPT TO:<b@example.com>"), 250)
            self.assertReply(s.cmd("RCPT TO:<c@example.com>"), 452, "452 4.5.3 Too many recipients")
            self.assertReply(s.cmd("DATA"), 354)
            s.send(make_message() + b".\r\n")
            code, lines = s.reply()
            self.assertEqual(code, 250, lines)
        rc = recipients(self.message(d, queued_id(lines)))
        self.assertEqual(len(rc), 2, rc)
        self.assertEqual(sorted(r.lower() for r in rc), ["a@example.com", "b@example.com"])

    def test_postmaster(self):
        d = self.daemon(args=["--max-recipients", "1"])
        for rcpt in ("postmaster", "Postmaster", "postmaster@example.com", "PostMaster@Example.COM"):
            with self.subTest(rcpt=rcpt), d.session() as s:
                s.cmd("EHLO c.test")
                s.cmd("MAIL FROM:<a@b.test>")
                self.assertReply(s.cmd("RCPT TO:<%s>" % rcpt), 250)
                self.assertReply(s.cmd("DATA"), 354)
                s.send(make_message(to=rcpt) + b".\r\n")
                code, lines = s.reply()
                self.assertEqual(code, 250, lines)
                self.assertEqual([r.lower() for r in recipients(self.message(d, queued_id(lines)))],
                                 [rcpt.lower()])
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            self.assertReply(s.cmd("RCPT TO:<postmaster@elsewhere.invalid>"), 550, "550 5.7.1")

    def test_smtputf8(self):
        d = self.daemon()
        with d.session() as s:
            s.cmd("EHLO c.test")
            self.assertReply(s.cmd("MAIL FROM:<jörg@sender.test>"), 553, "553 5.6.7")
            self.assertReply(s.cmd("MAIL FROM:<a@sender.test>"), 250)
            self.assertReply(s.cmd("RCPT TO:<dörte@example.com>"), 553, "553 5.6.7")
            self.assertReply(s.cmd("RSET"), 250)
            self.assertReply(s.cmd("MAIL FROM:<jörg@sender.test> SMTPUTF8"), 250)
            self.assertReply(s.cmd("RCPT TO:<dörte@example.com>"), 250)
            self.assertReply(s.cmd("DATA"), 354)
            body = "From: jörg@sender.test\r\nTo: dörte@example.com\r\nSubject: grüße\r\n\r\nÄÖÜ\r\n".encode()
            s.send(body + b".\r\n")
            code, lines = s.reply()
            self.assertEqual(code, 250, lines)
        row = self.message(d, queued_id(lines))
        self.assertEqual(row["sender"], "jörg@sender.test")
        self.assertEqual(recipients(row), ["dörte@example.com"])
        m, rest = harness.split_received(bytes(row["raw"]))
        self.assertEqual(rest, body)
        # RFC 6531 §3.7.3 registers UTF8SMTP as the "with" type of an SMTPUTF8 transaction.
        self.assertIn(m.group("proto"), (b"ESMTP", b"UTF8SMTP"))


class Size(InletTestCase):
    LIMIT = 2048

    def sized(self, n):
        head = b"Subject: size\r\n\r\n"
        fill = n - len(head) - 2
        return head + b"s" * fill + b"\r\n"

    def test_size_parameter(self):
        d = self.daemon(args=["--max-message-size", str(self.LIMIT)])
        with d.session() as s:
            s.cmd("EHLO c.test")
            self.assertReply(s.cmd("MAIL FROM:<a@b.test> SIZE=%d" % (self.LIMIT + 1)), 552,
                             "552 5.3.4 Message too big")
            self.assertReply(s.cmd("MAIL FROM:<a@b.test> SIZE=999999999999999999999"), 552, "552 5.3.4")
            self.assertReply(s.cmd("MAIL FROM:<a@b.test> SIZE=%d" % self.LIMIT), 250)
            self.assertReply(s.cmd("RCPT TO:<x@example.com>"), 250)

    def test_data_exact_limit_accepted(self):
        d = self.daemon(args=["--max-message-size", str(self.LIMIT)])
        body = self.sized(self.LIMIT)
        self.assertEqual(len(body), self.LIMIT)
        with d.session() as s:
            code, lines = s.transaction("a@b.test", ["x@example.com"], body)
            self.assertEqual(code, 250, lines)

    def test_data_too_big_answered_once_after_the_end(self):
        d = self.daemon(args=["--max-message-size", str(self.LIMIT)])
        for n in (self.LIMIT + 1, 5000, 300000):
            with self.subTest(size=n), d.session() as s:
                s.cmd("EHLO c.test")
                s.cmd("MAIL FROM:<a@b.test>")
                s.cmd("RCPT TO:<x@example.com>")
                self.assertReply(s.cmd("DATA"), 354)
                s.send(self.sized(n))
                self.assertTrue(s.nothing_within(0.3 * harness.SLOW), "a reply came before the end of data")
                s.send(b".\r\n")
                self.assertReply(s.reply(), 552, "552 5.3.4 Message too big")
                # Exactly one reply: the next one is NOOP's.
                self.assertReply(s.cmd("NOOP"), 250)
        self.assertEqual(len(self.messages(d)), 0)


class Hops(InletTestCase):
    def message_with_hops(self, n, in_body=0):
        hdr = b"".join(b"Received: from hop%d.test by hop%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1)
                       for i in range(n))
        body_rcv = b"".join(b"Received: not a header, line %d\r\n" % i for i in range(in_body))
        return hdr + b"Subject: hops\r\n\r\nbody\r\n" + body_rcv

    def test_hop_limit(self):
        d = self.daemon(args=["--max-hops", "3"])
        with d.session() as s:
            s.cmd("EHLO c.test")
            ok = self.message_with_hops(3, in_body=3)
            code, lines = s.transaction("a@b.test", ["x@example.com"], ok, ehlo=None)
            self.assertEqual(code, 250, lines)
            row = self.message(d, queued_id(lines))
            self.assertEqual(harness.split_received(bytes(row["raw"]))[1], ok)

            s.cmd("MAIL FROM:<a@b.test>")
            s.cmd("RCPT TO:<x@example.com>")
            self.assertReply(s.cmd("DATA"), 354)
            s.send(self.message_with_hops(4))
            self.assertTrue(s.nothing_within(0.3 * harness.SLOW), "a reply came before the end of data")
            s.send(b".\r\n")
            self.assertReply(s.reply(), 554, "554 5.4.6 Mail loop detected")
            self.assertReply(s.cmd("NOOP"), 250)
        self.assertEqual(len(self.messages(d)), 1)


class Data(InletTestCase):
    def test_pipelining(self):
        d = self.daemon()
        b1 = make_message(subject="first")
        b2 = make_message(subject="second", body_text=".dot first\r\n..two dots")
        with d.session() as s:
            s.send(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.com>\r\n"
                   b"RCPT TO:<y@elsewhere.invalid>\r\nDATA\r\n" + dot_stuff(b1) + b".\r\n" +
                   b"MAIL FROM:<c@d.test>\r\nRCPT TO:<z@example.com>\r\nDATA\r\n" + dot_stuff(b2) + b".\r\n" +
                   b"QUIT\r\n")
            got = s.replies(10)
            codes = [c for c, _ in got]
            self.assertEqual(codes, [250, 250, 250, 550, 354, 250, 250, 250, 354, 250], [l for _, l in got])
            self.assertReply(s.reply(), 221)
            id1, id2 = queued_id(got[5][1]), queued_id(got[9][1])
        r1, r2 = self.message(d, id1), self.message(d, id2)
        self.assertEqual(recipients(r1), ["x@example.com"])
        self.assertEqual(recipients(r2), ["z@example.com"])
        self.assertEqual(harness.split_received(bytes(r1["raw"]))[1], b1)
        self.assertEqual(harness.split_received(bytes(r2["raw"]))[1], b2)

    def test_pipelined_replies_byte_exact(self):
        """A pipelined batch's replies, as bytes: in order, nothing added or lost (server.c writes a
        batch's replies with one write(2), queueing only what the socket does not take)."""
        d = self.daemon()
        body = make_message(subject="exact")
        with d.session() as s:
            s.send(b"HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.com>\r\n"
                   b"RCPT TO:<y@elsewhere.invalid>\r\nNOOP\r\nDATA\r\n" + dot_stuff(body) + b".\r\n"
                   b"RSET\r\nNOOP\r\nQUIT\r\n")
            deadline = time.monotonic() + harness.timeout(10)
            while not s.buf.endswith(b"221 2.0.0 Bye\r\n") and not s.eof:
                s._fill(deadline)
            got = s.buf
        qid = queued_id([got.split(b"\r\n")[6]]).encode()
        want = (b"250 " + HOSTNAME.encode() + b"\r\n"
                b"250 2.1.0 Ok\r\n"
                b"250 2.1.5 Ok\r\n"
                b"550 5.7.1 Relaying denied\r\n"
                b"250 2.0.0 Ok\r\n"
                b"354 End data with <CR><LF>.<CR><LF>\r\n"
                b"250 2.0.0 Ok: queued as " + qid + b"\r\n"
                b"250 2.0.0 Ok\r\n"
                b"250 2.0.0 Ok\r\n"
                b"221 2.0.0 Bye\r\n")
        self.assertEqual(got, want)

    def test_replies_to_a_client_that_does_not_read(self):
        """20,000 pipelined NOOPs from a client with a small receive buffer that reads nothing for
        a second, to a server with a small send buffer: the server's socket fills, its writes go partly out and partly into the queue,
        reading stops at the output cap and resumes as the client drains it; every reply arrives,
        in order, whole."""
        import socket
        import threading
        # A 2 KiB send buffer on the server's side: its write(2) of a reply batch then takes only
        # part of it, the rest is queued (server.c conn_write).
        d = self.daemon(env={"INLET_TEST_SMTP_SNDBUF": "2048"})
        n = 20000
        host, port = d.smtp_addrs[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(harness.timeout(30))
        sock.connect((host, port))
        try:
            sent = threading.Event()

            def send():
                sock.sendall(b"NOOP\r\n" * n + b"QUIT\r\n")
                sent.set()
            t = threading.Thread(target=send, daemon=True)
            t.start()
            sent.wait(harness.timeout(1))
            got = b""
            want = b"220 " + HOSTNAME.encode()
            deadline = time.monotonic() + harness.timeout(30)
            while not got.endswith(b"221 2.0.0 Bye\r\n") and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            t.join(harness.timeout(10))
            self.assertTrue(sent.is_set())
            greeting, _, rest = got.partition(b"\r\n")
            self.assertTrue(greeting.startswith(want), greeting)
            self.assertEqual(len(rest), len(b"250 2.0.0 Ok\r\n") * n + len(b"221 2.0.0 Bye\r\n"))
            self.assertEqual(rest, b"250 2.0.0 Ok\r\n" * n + b"221 2.0.0 Bye\r\n")
        finally:
            sock.close()

    def test_dot_stuffing(self):
        d = self.daemon()
        bodies = [
            b"Subject: dots\r\n\r\n.leading\r\n..two\r\n.\r\n...\r\nmid.dle\r\n. space\r\nend\r\n",
            b".first line is a dot line\r\n\r\nbody\r\n",
            # Unstuffing applies after CRLF only: a dot after a bare LF is data.
            b"Subject: lf\r\n\r\nbare\n..kept as is\r\nx\n.\r\n",
        ]
        for body in bodies:
            with self.subTest(body=body), d.session() as s:
                code, lines = s.transaction("a@b.test", ["x@example.com"], dot_stuff(body))
                self.assertEqual(code, 250, lines)
                row = self.message(d, queued_id(lines))
                self.assertEqual(harness.split_received(bytes(row["raw"]))[1], body)

    def check_smuggling(self, d, body, exact=True):
        """Sends body + the real end of data + QUIT in one go: exactly one 250, then 221."""
        with d.session() as s:
            s.cmd("EHLO c.test")
            self.assertReply(s.cmd("MAIL FROM:<honest@sender.test>"), 250)
            self.assertReply(s.cmd("RCPT TO:<x@example.com>"), 250)
            self.assertReply(s.cmd("DATA"), 354)
            s.send(body + b".\r\nQUIT\r\n")
            code, lines = s.reply()
            self.assertEqual(code, 250, lines)
            msg_id = queued_id(lines)
            self.assertReply(s.reply(), 221)
            self.assertTrue(s.closed_by_peer(5))
        rows = self.messages(d)
        self.assertEqual([r["id"] for r in rows], [msg_id], "a smuggled message was created")
        self.assertEqual(rows[0]["sender"], "honest@sender.test")
        self.assertEqual(recipients(rows[0]), ["x@example.com"])
        stored = harness.split_received(bytes(rows[0]["raw"]))[1]
        if exact:
            self.assertEqual(stored, body)
        return stored

    SMUGGLED = (b"MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nsmuggled\r\n")

    def test_smuggling_lf_dot_lf(self):
        d = self.daemon()
        self.check_smuggling(d, b"Subject: s\r\n\r\nhello\n.\n" + self.SMUGGLED.replace(b"\r\n", b"\n") +
                             b".\nafter\r\n")

    def test_smuggling_lf_dot_crlf(self):
        d = self.daemon()
        self.check_smuggling(d, b"Subject: s\r\n\r\nhello\n.\r\n" + self.SMUGGLED)

    def test_smuggling_cr_dot_cr(self):
        d = self.daemon()
        self.check_smuggling(d, b"Subject: s\r\n\r\nhello\r.\r\n" + self.SMUGGLED + b"x\r.\rz\r\n")

    def test_smuggling_crlf_dot_lf(self):
        # CRLF "." LF: not the end of data either.  Whether the dot is unstuffed here (the line
        # ".\nMAIL..." starts with a dot after CRLF) is the server's choice; the rest is not.
        d = self.daemon()
        body = b"Subject: s\r\n\r\nhello\r\n.\n" + self.SMUGGLED
        stored = self.check_smuggling(d, body, exact=False)
        self.assertIn(stored, (body, body.replace(b"\r\n.\n", b"\r\n\n")))

    def test_8bit_and_nul(self):
        d = self.daemon()
        body = b"Subject: 8bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + bytes(range(256)).replace(
            b"\r", b"").replace(b"\n", b"") + b"\r\n"
        with d.session() as s:
            s.cmd("EHLO c.test")
            code, lines = s.transaction("a@b.test", ["x@example.com"], body, ehlo=None,
                                        mail_params=" BODY=8BITMIME")
            self.assertEqual(code, 250, lines)
        self.assertEqual(harness.split_received(bytes(self.message(d, queued_id(lines))["raw"]))[1], body)


class Limits(InletTestCase):
    def test_timeout(self):
        d = self.daemon(args=["--smtp-timeout", "1"])
        with d.session() as s:
            t0 = time.monotonic()
            code, lines = s.reply(10)
            self.assertEqual(code, 421, lines)
            self.assertTrue(lines[-1].startswith(b"421 4.4.2"), lines)
            self.assertGreater(time.monotonic() - t0, 0.5)
            self.assertTrue(s.closed_by_peer(5), "not closed after 421")

    def test_timeout_in_data(self):
        d = self.daemon(args=["--smtp-timeout", "1"])
        with d.session() as s:
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            s.cmd("RCPT TO:<x@example.com>")
            self.assertReply(s.cmd("DATA"), 354)
            s.send(b"Subject: never finished\r\n\r\nhalf")
            code, lines = s.reply(10)
            self.assertEqual(code, 421, lines)
            self.assertTrue(lines[-1].startswith(b"421 4.4.2"), lines)
            self.assertTrue(s.closed_by_peer(5), "not closed after 421")
        self.assertEqual(len(self.messages(d)), 0)

    def open_until(self, d, want_code, source=None, attempts=100):
        """Opens sessions until one greets with want_code (bounded; the server frees slots
        asynchronously after a close)."""
        last = None
        for _ in range(attempts):
            s = d.session(read_greeting=False, source=source)
            code, lines = s.reply(10)
            if code == want_code:
                return s, lines
            last = lines
            s.close()
            time.sleep(0.05)
        self.fail("never got %d: last %r" % (want_code, last))

    def test_max_connections_per_ip(self):
        d = self.daemon(args=["--max-connections-per-ip", "2"])
        s1, s2 = d.session(), d.session()
        self.addCleanup(s1.close)
        self.addCleanup(s2.close)
        s3 = d.session(read_greeting=False)
        self.addCleanup(s3.close)
        code, lines = s3.reply(10)
        self.assertEqual(code, 421, lines)
        self.assertTrue(lines[-1].startswith(b"421 4.7.0"), lines)
        self.assertTrue(s3.closed_by_peer(5))
        # The first two still work.
        self.assertReply(s1.cmd("NOOP"), 250)
        # Another address is not limited by 127.0.0.1's count.
        s4 = d.session(read_greeting=False, source="127.0.0.2")   # all of 127/8 is loopback on Linux
        self.addCleanup(s4.close)
        self.assertReply(s4.reply(10), 220)
        # A slot frees up when a session ends.
        self.assertReply(s2.cmd("QUIT"), 221)
        s5, _ = self.open_until(d, 220)
        self.addCleanup(s5.close)
        self.assertReply(s5.cmd("EHLO c.test"), 250)

    def test_max_connections(self):
        d = self.daemon(args=["--max-connections", "2"])
        s1, s2 = d.session(), d.session(source="127.0.0.1")
        self.addCleanup(s1.close)
        self.addCleanup(s2.close)
        try:
            s3 = d.session(read_greeting=False, source="127.0.0.2")
        except OSError:
            s3 = d.session(read_greeting=False)
        self.addCleanup(s3.close)
        code, lines = s3.reply(10)
        self.assertEqual(code, 421, lines)
        self.assertTrue(lines[-1].startswith(b"421 4.7.0"), lines)
        self.assertTrue(s3.closed_by_peer(5))
        s1.close()
        s4, _ = self.open_until(d, 220)
        s4.close()


if __name__ == "__main__":
    harness.main()
