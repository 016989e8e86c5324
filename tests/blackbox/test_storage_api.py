"""Stored copies, events, the dead-letter list and /metrics through the REST API (SPEC §6, §7;
reference/mailgun-behaviour.md §5).

A route `store()` is created through POST /v3/routes, mail is sent over SMTP, the storage key is
read from the database (table `stored`) and the storage URL is fetched: the stored-message JSON
and its attachment URLs, `Accept: message/rfc2822` (body-mime: the exact bytes when they are
UTF-8, valid 7-bit MIME otherwise), /raw, DELETE, unknown keys, expiry at the TTL, the resend
(POST with `to`).  Events: accepted/stored in order, filters, paging by absolute URLs.  The
dead-letter list."""

import base64
import email
import email.policy
import email.utils
import json
import os
import re
import time
import urllib.parse

import harness
from harness import InletTestCase, timeout

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{22,47}$")

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(40))
PDF = b"%PDF-1.4\n% inlet stored attachment\n%%EOF\n"
BIN = bytes(range(256)) * 3


def b64lines(data):
    s = base64.b64encode(data)
    return b"\r\n".join(s[i:i + 76] for i in range(0, len(s), 76))


def crlf(text):
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def rich_message(message_id="rich-1@sender.test"):
    """multipart/mixed: text + html (related, with an inline PNG by Content-ID), a PDF with a
    non-ASCII filename (RFC 2231) and a binary file."""
    return crlf(
        b"From: Alice Example <alice@sender.test>\n"
        b"To: bob@example.com\n"
        b"Subject: Stored rich\n"
        b"Message-ID: <" + message_id.encode() + b">\n"
        b"MIME-Version: 1.0\n"
        b"X-Custom: custom value\n"
        b"Content-Type: multipart/mixed; boundary=\"b1\"\n"
        b"\n"
        b"--b1\n"
        b"Content-Type: multipart/related; boundary=\"b2\"\n"
        b"\n"
        b"--b2\n"
        b"Content-Type: multipart/alternative; boundary=\"b3\"\n"
        b"\n"
        b"--b3\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"\n"
        b"Hello plain\n"
        b"--b3\n"
        b"Content-Type: text/html; charset=utf-8\n"
        b"\n"
        b"<p>Hello <img src=\"cid:logo@x\"></p>\n"
        b"--b3--\n"
        b"--b2\n"
        b"Content-Type: image/png\n"
        b"Content-Transfer-Encoding: base64\n"
        b"Content-ID: <logo@x>\n"
        b"Content-Disposition: inline; filename=\"logo.png\"\n"
        b"\n" + b64lines(PNG) + b"\n"
        b"--b2--\n"
        b"--b1\n"
        b"Content-Type: application/pdf\n"
        b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9 \"1\".pdf\n"
        b"Content-Transfer-Encoding: base64\n"
        b"\n" + b64lines(PDF) + b"\n"
        b"--b1\n"
        b"Content-Type: application/octet-stream\n"
        b"Content-Disposition: attachment; filename=\"data.bin\"\n"
        b"Content-Transfer-Encoding: base64\n"
        b"\n" + b64lines(BIN) + b"\n"
        b"--b1--\n")


def disposition_filename(value):
    """The filename a client takes from Content-Disposition (RFC 6266 §4.3: filename* wins)."""
    m = re.search(r"filename\*=UTF-8''([^;\s]+)", value, re.I)
    if m:
        return urllib.parse.unquote(m.group(1), encoding="utf-8", errors="strict")
    m = re.search(r'filename="((?:[^"\\]|\\.)*)"', value)
    return re.sub(r"\\(.)", r"\1", m.group(1)) if m else None


def create_route(d, expression, actions, priority=0):
    fields = [("priority", str(priority)), ("expression", expression)] + [("action", a) for a in actions]
    status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, (status, body)
    return json.loads(body)["route"]["id"]


def send(d, rcpts, body, sender="alice@sender.test"):
    with d.session() as s:
        code, lines = s.transaction(sender, rcpts, body)
        assert code == 250, lines
        s.cmd("QUIT")
    return harness.queued_id(lines)


def wait_routed(d, msg_id, wait_s=10):
    return d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("routed ") and l.kv.get("id") == msg_id,
                      wait_s, "'engine routed id=%s'" % msg_id)


def post_form(d, path, fields, multipart=False):
    if multipart:
        boundary = "inlettestboundary7f3a"
        parts = []
        for k, v in fields:
            parts.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (boundary, k, v)).encode())
        body = b"".join(parts) + ("--%s--\r\n" % boundary).encode()
        ctype = "multipart/form-data; boundary=" + boundary
    else:
        body = urllib.parse.urlencode(fields).encode()
        ctype = "application/x-www-form-urlencoded"
    return d.http("POST", path, body, {"Content-Type": ctype})


def get_json(d, path, headers=None, expect=200):
    status, hdrs, body = d.http("GET", path, headers=headers)
    assert status == expect, (path, status, body[:2000])
    assert hdrs.get("Content-Type", "").startswith("application/json"), hdrs.get("Content-Type")
    return json.loads(body)


class StorageCase(InletTestCase):
    """A daemon with one route storing every message for example.com."""

    args = []

    def start(self, args=None):
        d = self.daemon(args=list(self.args) + list(args or []))
        self.route_id = create_route(d, r'match_recipient(".*@example\.com")', ["store()"])
        self.base = "http://127.0.0.1:%d" % d.http_port
        return d

    def store_one(self, d, body, rcpt="bob@example.com", sender="alice@sender.test"):
        """Sends, waits until routed; (inlet id, storage key)."""
        msg_id = send(d, [rcpt], body, sender)
        wait_routed(d, msg_id)
        rows = harness.query(d, "SELECT key, domain, recipient FROM stored WHERE message_id = ?", (msg_id,))
        self.assertEqual(len(rows), 1, rows)
        self.assertRegex(rows[0]["key"], KEY_RE)
        self.assertEqual((rows[0]["domain"], rows[0]["recipient"]), (rcpt.split("@")[1].lower(), rcpt))
        return msg_id, rows[0]["key"]

    def raw(self, d, msg_id):
        (row,) = harness.query(d, "SELECT raw FROM messages WHERE id = ?", (msg_id,))
        return bytes(row["raw"])

    def path(self, key, domain="example.com"):
        return "/v3/domains/%s/messages/%s" % (domain, key)

    def local(self, url):
        """The path of an absolute URL of this daemon (fails when it is another host)."""
        self.assertTrue(url.startswith(self.base + "/"), "%r is not under %s" % (url, self.base))
        return url[len(self.base):]


# =============================================================================================
class StoredMessage(StorageCase):
    def test_json_fields_and_attachments(self):
        d = self.start()
        msg_id, key = self.store_one(d, rich_message())
        j = get_json(d, self.path(key))
        url = self.base + self.path(key)
        self.assertEqual(j["recipients"], "bob@example.com")
        self.assertEqual(j["sender"], "alice@sender.test")
        self.assertEqual(j["from"], "Alice Example <alice@sender.test>")
        self.assertEqual(j["subject"], "Stored rich")
        self.assertEqual(j["body-plain"].strip(), "Hello plain")
        self.assertIn("<p>Hello", j["body-html"])
        for k in ("stripped-text", "stripped-signature", "stripped-html"):
            self.assertIsInstance(j[k], str, k)
        self.assertNotIn("message-url", j)
        # message-headers: [name, value] pairs; non-reserved headers also top-level.
        self.assertIsInstance(j["message-headers"], list)
        self.assertIn(["Subject", "Stored rich"], j["message-headers"])
        self.assertIn(["X-Custom", "custom value"], j["message-headers"])
        self.assertEqual(j["X-Custom"], "custom value")
        # The headers of the parsed fields are keys beside them, as in Mailgun's stored JSON, and
        # Mailgun's added headers come first in message-headers and as keys.
        self.assertEqual(j["Subject"], "Stored rich")
        self.assertEqual(j["From"], j["from"])
        self.assertEqual(j["Message-ID"], "<%s>" % j["message-id"])
        self.assertEqual(j["message-headers"][:2], [["X-Mailgun-Incoming", "Yes"],
                                                    ["X-Envelope-From", "<%s>" % j["sender"]]])
        self.assertEqual((j["X-Mailgun-Incoming"], j["X-Envelope-From"]), ("Yes", "<%s>" % j["sender"]))
        # attachments: [{size, url, name, content-type}], urls = <storage url>/attachments/<i>.
        atts = j["attachments"]
        self.assertIsInstance(atts, list)
        by_name = {a["name"]: (i, a) for i, a in enumerate(atts)}
        expected = {"logo.png": (PNG, "image/png"), 'résumé "1".pdf': (PDF, "application/pdf"),
                    "data.bin": (BIN, "application/octet-stream")}
        self.assertEqual(set(by_name), set(expected), atts)
        for name, (data, ctype) in expected.items():
            i, a = by_name[name]
            self.assertEqual(a["url"], "%s/attachments/%d" % (url, i))
            self.assertEqual((a["size"], a["content-type"]), (len(data), ctype))
            status, hdrs, body = d.http("GET", self.local(a["url"]))
            self.assertEqual(status, 200, body[:300])
            self.assertEqual(body, data, name)
            self.assertEqual(hdrs["Content-Type"], ctype)
            disp = hdrs["Content-Disposition"]
            self.assertTrue(disp.startswith("attachment; filename=\""), disp)
            self.assertEqual(disposition_filename(disp), name, disp)
            if name.isascii() and '"' not in name:
                self.assertEqual(disp, 'attachment; filename="%s"' % name)
            else:
                self.assertIn("filename*=UTF-8''", disp)
                self.assertTrue(disp.isascii())
            # Go's GetStoredAttachment sends Accept: message/rfc2822: same bytes.
            status, _, body2 = d.http("GET", self.local(a["url"]), headers={"Accept": "message/rfc2822"})
            self.assertEqual((status, body2), (200, data))
        # content-id-map: <cid> -> {url, content-type, name, size}, the url of that attachment.
        cid = j["content-id-map"]["<logo@x>"]
        i, _ = by_name["logo.png"]
        self.assertEqual(cid["url"], "%s/attachments/%d" % (url, i))
        self.assertEqual((cid["content-type"], cid["name"], cid["size"]), ("image/png", "logo.png", len(PNG)))
        # Past the last attachment, or not a number.
        for bad in (str(len(atts)), "99999999999999999999999", "x", "-1"):
            status, _, body = d.http("GET", self.path(key) + "/attachments/" + bad)
            self.assertEqual(status, 404, (bad, body))
        # HEAD answers like GET, without a body.
        status, hdrs, body = d.http("HEAD", self.path(key))
        self.assertEqual((status, body), (200, b""))

    def test_rfc2822_utf8_is_exact_bytes(self):
        d = self.start()
        sent = crlf("From: Zoë <zoe@sender.test>\nTo: bob@example.com\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
                    "Message-ID: <utf8-1@sender.test>\nMIME-Version: 1.0\n"
                    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                    "Grüße aus Köln — ☃\n".encode("utf-8"))
        msg_id, key = self.store_one(d, sent)
        raw = self.raw(d, msg_id)
        _, rest = harness.split_received(raw)
        self.assertEqual(rest, sent)
        j = get_json(d, self.path(key), headers={"Accept": "message/rfc2822"})
        self.assertEqual(set(j), {"recipients", "sender", "from", "subject", "body-mime"})
        self.assertEqual(j["body-mime"].encode("utf-8"), raw)
        self.assertEqual((j["recipients"], j["sender"], j["from"], j["subject"]),
                         ("bob@example.com", "alice@sender.test", "Zoë <zoe@sender.test>", "Grüße"))
        # Among other types, with parameters.
        j2 = get_json(d, self.path(key), headers={"Accept": "application/json;q=0.5, Message/RFC2822; q=0.9"})
        self.assertEqual(j2["body-mime"], j["body-mime"])

    def test_rfc2822_latin1_is_valid_7bit_mime(self):
        d = self.start()
        sent = crlf(b"From: =?iso-8859-1?q?Andr=E9?= <andre@sender.test>\nTo: bob@example.com\n"
                    b"Subject: =?iso-8859-1?q?Caf=E9_cr=E8me?=\nMessage-ID: <latin1-1@sender.test>\n"
                    b"MIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\n"
                    b"Content-Transfer-Encoding: 8bit\n\nVoil\xe0 un caf\xe9 cr\xe8me.\nLigne deux \xbd.\n")
        msg_id, key = self.store_one(d, sent)
        j = get_json(d, self.path(key), headers={"Accept": "message/rfc2822"})
        mime = j["body-mime"]
        self.assertTrue(mime.isascii(), "body-mime is not 7-bit: %r" % mime[:500])
        self.assertNotIn("\x00", mime)
        for line in mime.split("\r\n"):
            self.assertLessEqual(len(line), 998)
        m = email.message_from_string(mime, policy=email.policy.default)
        self.assertEqual(str(m["subject"]), "Café crème")
        self.assertEqual(m.get_content().replace("\r\n", "\n"), "Voilà un café crème.\nLigne deux ½.\n")
        self.assertEqual(j["subject"], "Café crème")
        self.assertEqual(j["from"], "André <andre@sender.test>")

    def test_raw_is_exact_bytes(self):
        d = self.start()
        sent = crlf(b"From: <a@sender.test>\nTo: bob@example.com\nSubject: raw\nMessage-ID: <raw-1@x>\n"
                    b"Content-Type: application/octet-stream\n\n\x00\x01\xff\xfe binary \x80\n")
        msg_id, key = self.store_one(d, sent)
        raw = self.raw(d, msg_id)
        for path, hdrs in ((self.path(key) + "/raw", {}), (self.path(key), {"Accept": "message/rfc822"})):
            status, h, body = d.http("GET", path, headers=hdrs)
            self.assertEqual(status, 200, body[:300])
            self.assertEqual(h["Content-Type"], "message/rfc822")
            self.assertEqual(body, raw)
        # Not valid UTF-8 (NUL, 0xff): body-mime is 7-bit MIME, not the bytes.
        j = get_json(d, self.path(key), headers={"Accept": "message/rfc2822"})
        self.assertTrue(j["body-mime"].isascii())
        self.assertNotIn("\x00", j["body-mime"])

    def test_recipients_and_sender_headers_do_not_override(self):
        d = self.start()
        sent = crlf(b"From: Mallory <mallory@sender.test>\nTo: bob@example.com\nSubject: forged\n"
                    b"Recipients: evil@attacker.test\nSender: forged@attacker.test\n"
                    b"Message-ID: <forge-1@x>\n\nbody\n")
        msg_id, key = self.store_one(d, sent, sender="real@sender.test")
        j = get_json(d, self.path(key))
        self.assertEqual(j["recipients"], "bob@example.com")
        self.assertEqual(j["sender"], "real@sender.test")
        self.assertIn(["Recipients", "evil@attacker.test"], j["message-headers"])
        self.assertIn(["Sender", "forged@attacker.test"], j["message-headers"])
        self.assertNotIn("Recipients", j)
        self.assertNotIn("Sender", j)
        j = get_json(d, self.path(key), headers={"Accept": "message/rfc2822"})
        self.assertEqual((j["recipients"], j["sender"]), ("bob@example.com", "real@sender.test"))

    def test_lookup_by_key_alone(self):
        d = self.start()
        msg_id, key = self.store_one(d, harness.make_message(subject="any domain"))
        for dom in ("example.com", "EXAMPLE.COM", "other.test"):
            self.assertEqual(get_json(d, self.path(key, dom))["subject"], "any domain")

    def test_delete_then_not_found(self):
        d = self.start()
        msg_id, key = self.store_one(d, harness.make_message())
        get_json(d, self.path(key))
        status, _, body = d.http("DELETE", self.path(key))
        self.assertEqual((status, json.loads(body)), (200, {"message": "Message has been deleted"}))
        for method, suffix in (("GET", ""), ("GET", "/raw"), ("GET", "/attachments/0"), ("DELETE", "")):
            status, _, body = d.http(method, self.path(key) + suffix)
            self.assertEqual((status, json.loads(body)), (404, {"message": "Message not found"}), (method, suffix))
        status, _, body = post_form(d, self.path(key), [("to", "x@elsewhere.test")])
        self.assertEqual((status, json.loads(body)), (404, {"message": "Message not found"}))

    def test_unknown_key(self):
        d = self.start()
        # A NUL in a path parameter matches no endpoint at all: 404 too.
        self.assertEqual(d.http("GET", self.path("%00abc"))[0], 404)
        for key in ("nosuchkey", "A" * 30, "x" * 200, "%C3%A9t%C3%A9"):
            for suffix in ("", "/raw", "/attachments/0"):
                status, _, body = d.http("GET", self.path(key) + suffix)
                self.assertEqual((status, json.loads(body)), (404, {"message": "Message not found"}), (key, suffix))
            status, _, body = d.http("DELETE", self.path(key))
            self.assertEqual(status, 404, (key, body))

    def test_auth_required(self):
        d = self.start()
        msg_id, key = self.store_one(d, harness.make_message())
        for method, suffix in (("GET", ""), ("GET", "/raw"), ("DELETE", ""), ("POST", "")):
            status, _, _ = d.http(method, self.path(key) + suffix, auth=None)
            self.assertEqual(status, 401, (method, suffix))
            status, _, _ = d.http(method, self.path(key) + suffix, auth="wrong-key")
            self.assertEqual(status, 401, (method, suffix))
        get_json(d, self.path(key))  # still there

    def test_postmaster_copy_without_route(self):
        # SPEC §2: postmaster mail no route matched is kept; its URL works like any other.
        d = self.daemon()
        msg_id = send(d, ["postmaster@example.com"], harness.make_message(subject="to postmaster"))
        wait_routed(d, msg_id)
        (row,) = harness.query(d, "SELECT key FROM stored WHERE message_id = ?", (msg_id,))
        j = get_json(d, "/v3/domains/example.com/messages/" + row["key"])
        self.assertEqual((j["recipients"], j["subject"]), ("postmaster@example.com", "to postmaster"))


class Expiry(StorageCase):
    # Long enough that the copy is always fetched before it expires (4 s, 16 s under sanitizers),
    # short enough to wait for: the check before expiry runs every time or the test fails.
    TTL = int(timeout(4))
    args = ["--store-ttl", str(TTL)]

    def test_gone_exactly_at_ttl(self):
        d = self.start()
        msg_id, key = self.store_one(d, harness.make_message(subject="short-lived"))
        (row,) = harness.query(d, "SELECT expires_at FROM stored WHERE key = ?", (key,))
        expires_at = row["expires_at"]
        self.assertLessEqual(expires_at - time.time(), self.TTL + 0.5)
        self.assertLess(time.time(), expires_at - 0.3,
                        "stored too late to fetch before its expiry (TTL %d s): the machine is too slow" % self.TTL)
        self.assertEqual(get_json(d, self.path(key))["subject"], "short-lived")
        # Bounded: past the expiry the copy is gone, whatever the sweeper did.
        deadline = time.monotonic() + timeout(15)
        while time.time() < expires_at + 0.05:
            self.assertLess(time.monotonic(), deadline, "clock did not pass expires_at")
            time.sleep(0.05)
        for suffix in ("", "/raw", "/attachments/0"):
            status, _, body = d.http("GET", self.path(key) + suffix)
            self.assertEqual((status, json.loads(body)), (404, {"message": "Message not found"}), suffix)
        status, _, _ = d.http("DELETE", self.path(key))
        self.assertEqual(status, 404)


# =============================================================================================
class Resend(StorageCase):
    def test_validation(self):
        d = self.start()
        msg_id, key = self.store_one(d, harness.make_message())
        cases = [
            ([], "'to' parameter is missing"),
            ([("to", "")], "'to' parameter is missing"),
            ([("to", "not-an-address")], "not a valid address"),
            ([("to", "a@b.test, bad address@x.test")], "not a valid address"),
            ([("to", "<>")], "not a valid address"),
            ([("to", ",".join("u%d@x.test" % i for i in range(101)))], "at most 100"),
        ]
        for fields, text in cases:
            status, _, body = post_form(d, self.path(key), fields)
            self.assertEqual(status, 400, (fields[:1], body))
            self.assertIn(text, json.loads(body)["message"])
        self.assertEqual(harness.query(d, "SELECT COUNT(*) FROM deliveries WHERE message_id = ?",
                                       (msg_id,))[0][0], 0)
        # A valid `to` on an unknown key.
        status, _, body = post_form(d, self.path("nosuchkey"), [("to", "x@elsewhere.test")])
        self.assertEqual((status, json.loads(body)), (404, {"message": "Message not found"}))

    def test_queues_one_delivery_per_address(self):
        d = self.start()
        msg_id, key = self.store_one(d, harness.make_message(subject="resend me").replace(
            b"Message-ID: <", b"Message-ID: <resend-", 1))
        header_id = email.message_from_bytes(self.raw(d, msg_id))["Message-ID"].strip("<>")
        # Repeated fields, a comma list, a display name with a comma, a duplicate (any case).
        fields = [("to", "one@elsewhere.test, \"Two, Esq.\" <two@elsewhere.test>"), ("to", "three@elsewhere.test"),
                  ("to", "ONE@elsewhere.test")]
        for multipart in (False, True):
            status, _, body = post_form(d, self.path(key), fields, multipart=multipart)
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body), {"id": header_id, "message": "Queued. Thank you."})
        # In the order they were written (SQLite's rowid; PostgreSQL keeps no such order: there
        # the same multiset).
        order = "id" if harness.PG else "rowid"
        rows = harness.query(d, "SELECT * FROM deliveries WHERE message_id = ? ORDER BY " + order, (msg_id,))
        want = ["one@elsewhere.test", "two@elsewhere.test", "three@elsewhere.test"] * 2
        got = [r["target"] for r in rows]
        self.assertEqual(sorted(got) if harness.PG else got, sorted(want) if harness.PG else want)
        for r in rows:
            self.assertEqual((r["kind"], r["recipient"], r["format"], json.loads(r["route_ids"])),
                             ("address", "bob@example.com", "", []))
            self.assertRegex(r["id"], r"^[0-9a-f]{24}$")
        self.assertEqual(len({r["id"] for r in rows}), 6)

    def test_id_is_inlet_id_without_message_id_header(self):
        d = self.start()
        msg_id, key = self.store_one(d, crlf(b"From: <a@sender.test>\nTo: bob@example.com\nSubject: no id\n\nx\n"))
        status, _, body = post_form(d, self.path(key), [("to", "x@elsewhere.test")])
        self.assertEqual((status, json.loads(body)), (200, {"id": msg_id, "message": "Queued. Thank you."}))

    def test_reaches_the_relay(self):
        from_receivers = receivers_or_skip()
        sink = from_receivers.SmtpSink()
        self.addCleanup(sink.stop)
        d = self.start(["--relay", sink.url()])
        msg_id, key = self.store_one(d, harness.make_message(subject="via relay"))
        raw = self.raw(d, msg_id)
        status, _, body = post_form(d, self.path(key), [("to", "x@elsewhere.test, y@elsewhere.test")])
        self.assertEqual(status, 200, body)
        delivered = wait_deliveries(d, msg_id, 2, ("delivered",))
        msgs = sink.wait_for(2, timeout(10))
        self.assertEqual(sorted(tuple(m.rcpt_tos) for m in msgs), [("x@elsewhere.test",), ("y@elsewhere.test",)])
        for m in msgs:
            self.assertEqual(m.data, raw)
        self.assertEqual(len(delivered), 2)


# =============================================================================================
def receivers_or_skip():
    import receivers
    return receivers


def wait_deliveries(d, msg_id, n, states, wait_s=15):
    """Waits (bounded) until `n` deliveries of msg_id are in one of `states`."""
    deadline = time.monotonic() + timeout(wait_s)
    while True:
        rows = harness.query(d, "SELECT * FROM deliveries WHERE message_id = ?", (msg_id,))
        done = [r for r in rows if r["state"] in states]
        if len(done) >= n:
            return done
        if time.monotonic() > deadline:
            raise AssertionError("deliveries of %s: %r" % (msg_id, [dict(r) for r in rows]))
        time.sleep(0.05)


class Events(StorageCase):
    def send_several(self, d, n, rcpt="bob@example.com"):
        ids = []
        for i in range(n):
            msg_id, key = self.store_one(d, harness.make_message(subject="ev %d" % i), rcpt=rcpt)
            ids.append((msg_id, key))
        return ids

    def events(self, d, query="", domain="example.com"):
        return get_json(d, "/v3/%s/events%s" % (domain, query))

    def test_accepted_and_stored_in_order(self):
        d = self.start()
        t0 = time.time()
        sent = self.send_several(d, 3)
        t1 = time.time()
        j = self.events(d, "?ascending=yes")
        items = j["items"]
        self.assertEqual([(e["event"], e["message"]["inlet-id"]) for e in items],
                         [(ev, m) for m, _ in sent for ev in ("accepted", "stored")])
        stamps = [e["timestamp"] for e in items]
        self.assertEqual(stamps, sorted(stamps))
        for e in items:
            self.assertIsInstance(e["timestamp"], float)
            self.assertGreaterEqual(e["timestamp"], t0 - 2)
            self.assertLessEqual(e["timestamp"], t1 + 2)
            self.assertEqual((e["recipient"], e["recipient-domain"], e["log-level"]),
                             ("bob@example.com", "example.com", "info"))
            self.assertIsInstance(e["id"], str)
        self.assertEqual(len({e["id"] for e in items}), len(items))
        keys = dict(sent)
        for e in items:
            if e["event"] == "stored":
                m = e["message"]["inlet-id"]
                self.assertEqual(e["storage"]["key"], keys[m])
                self.assertEqual(e["storage"]["url"], self.base + self.path(keys[m]))
                # The URL works as given.
                self.assertEqual(get_json(d, self.local(e["storage"]["url"]))["recipients"], "bob@example.com")
            else:
                self.assertNotIn("storage", e)
        # Default order: newest first.
        self.assertEqual([e["id"] for e in self.events(d)["items"]], [e["id"] for e in reversed(items)])
        # The domain is compared in lower case; another domain has nothing.
        self.assertEqual(len(self.events(d, "?ascending=yes", domain="EXAMPLE.com")["items"]), 6)
        self.assertEqual(self.events(d, domain="other.test")["items"], [])

    def test_filters(self):
        d = self.daemon(domains=["example.com"])
        create_route(d, r'match_recipient(".*@example\.com")', ["store()"])
        self.base = "http://127.0.0.1:%d" % d.http_port
        a = self.store_one(d, harness.make_message(subject="a"), rcpt="ann@example.com")[0]
        time.sleep(1.1)  # event timestamps may have whole seconds only
        b = self.store_one(d, harness.make_message(subject="b"), rcpt="Ben@example.com")[0]
        everything = self.events(d, "?ascending=yes")["items"]
        self.assertEqual(len(everything), 4)
        stored = self.events(d, "?event=stored&ascending=yes")["items"]
        self.assertEqual([e["message"]["inlet-id"] for e in stored], [a, b])
        self.assertTrue(all(e["event"] == "stored" for e in stored))
        by_id = self.events(d, "?inlet-id=" + b)["items"]
        self.assertEqual(sorted(e["event"] for e in by_id), ["accepted", "stored"])
        self.assertTrue(all(e["message"]["inlet-id"] == b for e in by_id))
        by_rcpt = self.events(d, "?" + urllib.parse.urlencode({"recipient": "ben@EXAMPLE.com"}))["items"]
        self.assertEqual({e["message"]["inlet-id"] for e in by_rcpt}, {b})
        self.assertEqual(self.events(d, "?event=delivered")["items"], [])
        # begin / end: Unix seconds (floats) and RFC 2822 dates, both directions.
        tb = min(e["timestamp"] for e in everything if e["message"]["inlet-id"] == b)
        ta = max(e["timestamp"] for e in everything if e["message"]["inlet-id"] == a)
        self.assertLess(ta, tb)
        after_a = self.events(d, "?begin=%.3f&ascending=yes" % tb)["items"]
        self.assertEqual({e["message"]["inlet-id"] for e in after_a}, {b})
        up_to_a = self.events(d, "?begin=%.3f&ascending=no" % ta)["items"]
        self.assertEqual({e["message"]["inlet-id"] for e in up_to_a}, {a})
        rng = self.events(d, "?begin=%.3f&end=%.3f" % (tb, time.time() + 60))["items"]
        self.assertEqual([e["id"] for e in rng], [e["id"] for e in everything if e["timestamp"] >= tb])
        rng_desc = self.events(d, "?begin=%.3f&end=%.3f" % (time.time() + 60, tb))["items"]
        self.assertEqual([e["id"] for e in rng_desc], [e["id"] for e in reversed(rng)])
        wide = urllib.parse.urlencode({"begin": email.utils.formatdate(time.time() - 3600),
                                       "end": email.utils.formatdate(time.time() + 3600, usegmt=True)})
        self.assertEqual(len(self.events(d, "?" + wide)["items"]), 4)
        future = urllib.parse.urlencode({"begin": email.utils.formatdate(time.time() + 3600), "ascending": "yes"})
        self.assertEqual(self.events(d, "?" + future)["items"], [])
        self.assertEqual(len(self.events(d, "?limit=1")["items"]), 1)
        for bad in ("limit=0", "limit=301", "limit=abc", "ascending=maybe", "begin=yesterday",
                    "end=Mon%2C+99+Foo+2020"):
            status, _, body = d.http("GET", "/v3/example.com/events?" + bad)
            self.assertEqual(status, 400, (bad, body))
            self.assertIn("message", json.loads(body))
        status, _, _ = d.http("GET", "/v3/example.com/events/not-a-token")
        self.assertEqual(status, 400)
        status, _, _ = d.http("GET", "/v3/example.com/events", auth=None)
        self.assertEqual(status, 401)

    def walk(self, d, first_path, bound=30):
        """Follows `next` until an empty page (bounded); the pages' items."""
        pages, path = [], first_path
        for _ in range(bound):
            j = get_json(d, path)
            for k in ("next", "previous", "first", "last"):
                self.assertTrue(j["paging"][k].startswith(self.base + "/v3/example.com/events/"), j["paging"])
            if not j["items"]:
                return pages, j
            pages.append(j["items"])
            path = self.local(j["paging"]["next"])
        self.fail("paging did not end within %d pages" % bound)

    def test_paging(self):
        d = self.start()
        self.send_several(d, 5)
        for asc in ("yes", "no"):
            full = self.events(d, "?limit=300&ascending=" + asc)["items"]
            self.assertEqual(len(full), 10)
            pages, end = self.walk(d, "/v3/example.com/events?limit=3&ascending=" + asc)
            self.assertEqual([len(p) for p in pages], [3, 3, 3, 1])
            self.assertEqual([e["id"] for p in pages for e in p], [e["id"] for e in full], asc)
            # previous of page 2 is page 1; first is page 1; last is the last 3 in this order.
            p1 = get_json(d, "/v3/example.com/events?limit=3&ascending=" + asc)
            p2 = get_json(d, self.local(p1["paging"]["next"]))
            self.assertEqual(get_json(d, self.local(p2["paging"]["previous"]))["items"], p1["items"])
            self.assertEqual(get_json(d, self.local(p2["paging"]["first"]))["items"], p1["items"])
            self.assertEqual([e["id"] for e in get_json(d, self.local(p2["paging"]["last"]))["items"]],
                             [e["id"] for e in full[-3:]])
            # Backwards from the empty page at the end: the last page again.
            back = get_json(d, self.local(end["paging"]["previous"]))
            self.assertEqual([e["id"] for e in back["items"]], [e["id"] for e in full[-3:]])
            # A paging URL keeps the filters: query parameters next to it are ignored.
            self.assertEqual(get_json(d, self.local(p1["paging"]["next"]) + "?limit=1&event=stored")["items"],
                             p2["items"])
        # New events show on the next page of an ascending walk that had ended.
        pages, end = self.walk(d, "/v3/example.com/events?limit=4&ascending=yes")
        msg_id, _ = self.store_one(d, harness.make_message(subject="later"))
        later = get_json(d, self.local(end["paging"]["next"]))["items"]
        self.assertEqual([(e["event"], e["message"]["inlet-id"]) for e in later],
                         [("accepted", msg_id), ("stored", msg_id)])

    def mime(self, subject, msgid, frm="Alice <alice@sender.test>", to="Bob <bob@example.com>",
             attachment=None):
        """A message with a given Message-Id header (and an attachment: (filename, bytes))."""
        head = ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s>\r\nMIME-Version: 1.0\r\n"
                % (frm, to, subject, msgid)).encode()
        if not attachment:
            return head + b"Content-Type: text/plain\r\n\r\nhello\r\n"
        name, data = attachment
        return (head + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                b"Content-Type: text/plain\r\n\r\nhello\r\n--b\r\n"
                b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="'
                + name.encode() + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                + __import__("base64").b64encode(data) + b"\r\n--b--\r\n")

    def test_message_fields_as_mailgun(self):
        # Issue 14 items 11 and 12: an event names its message by the Message-Id header (no angle
        # brackets) and carries Mailgun's message fields; inlet's id is message.inlet-id.
        d = self.start()
        body = self.mime("Quarterly report", "q1-report@sender.test", attachment=("report.pdf", b"%PDF" * 100))
        msg_id, key = self.store_one(d, body)
        items = self.events(d, "?ascending=yes")["items"]
        self.assertEqual([e["event"] for e in items], ["accepted", "stored"])
        for e in items:
            m = e["message"]
            self.assertEqual(m["headers"], {"to": "Bob <bob@example.com>", "from": "Alice <alice@sender.test>",
                                            "subject": "Quarterly report", "message-id": "q1-report@sender.test"})
            self.assertEqual(m["inlet-id"], msg_id)
            self.assertEqual(m["size"], len(self.raw(d, msg_id)))
            self.assertEqual(m["attachments"], [{"filename": "report.pdf", "content-type": "application/pdf",
                                                 "size": 400}])
            self.assertEqual(m["recipients"], ["bob@example.com"])
        # The Message-Id header finds them; inlet's id finds them with inlet-id.
        for q in ("message-id=q1-report%40sender.test", "message-id=%3Cq1-report%40sender.test%3E",
                  "inlet-id=" + msg_id):
            self.assertEqual([e["event"] for e in self.events(d, "?ascending=yes&" + q)["items"]],
                             ["accepted", "stored"], q)
        self.assertEqual(self.events(d, "?message-id=" + msg_id)["items"], [])

    def test_filter_fields_and_expressions(self):
        # Issue 14 items 12 and 13: Mailgun's filter fields and filter expressions.
        d = self.start()
        a = self.store_one(d, self.mime("Invoice March", "a@sender.test", attachment=("invoice.pdf", b"x" * 3000)))[0]
        b = self.store_one(d, self.mime("Lunch plans", "b@sender.test", frm="Carol <carol@other.test>",
                                        to="Dave <dave@example.com>"))[0]
        c = self.store_one(d, self.mime("Invoice April", "c@sender.test"), rcpt="eve@example.com")[0]

        def ids(query):
            items = self.events(d, "?ascending=yes&limit=300&" + urllib.parse.urlencode(query))["items"]
            return sorted({e["message"]["inlet-id"] for e in items}), sorted({e["event"] for e in items})

        self.assertEqual(ids({"event": "accepted OR stored"})[0], sorted([a, b, c]))
        self.assertEqual(ids({"event": "NOT accepted"}), (sorted([a, b, c]), ["stored"]))
        self.assertEqual(ids({"event": "delivered OR failed"}), ([], []))
        self.assertEqual(ids({"subject": "invoice"})[0], sorted([a, c]))
        self.assertEqual(ids({"subject": "invoice AND NOT april"})[0], [a])
        self.assertEqual(ids({"subject": "invoice -april"})[0], [a])
        self.assertEqual(ids({"subject": '"invoice march"'})[0], [a])
        self.assertEqual(ids({"subject": '"march invoice"'})[0], [])
        self.assertEqual(ids({"subject": "(lunch OR april) AND NOT march"})[0], sorted([b, c]))
        self.assertEqual(ids({"subject": "invo"})[0], [])  # terms, not substrings
        self.assertEqual(ids({"from": "carol@other.test"})[0], [b])
        self.assertEqual(ids({"from": "other.test"})[0], [b])
        self.assertEqual(ids({"to": "dave@example.com"})[0], [b])
        self.assertEqual(ids({"attachment": "invoice.pdf"})[0], [a])
        self.assertEqual(ids({"size": ">3000"})[0], [a])
        self.assertEqual(ids({"size": "<3000"})[0], sorted([b, c]))
        self.assertEqual(ids({"size": ">1 <100000"})[0], sorted([a, b, c]))
        self.assertEqual(ids({"recipients": "eve@example.com"})[0], [c])
        self.assertEqual(ids({"recipient": "bob@example.com OR eve@example.com"})[0], sorted([a, b, c]))
        self.assertEqual(ids({"message-id": "a@sender.test OR c@sender.test"})[0], sorted([a, c]))
        self.assertEqual(ids({"severity": "permanent"})[0], [])
        self.assertEqual(ids({"event": "stored", "subject": "lunch"}), ([b], ["stored"]))
        # A filtered walk pages through the matching events only, and ends.
        pages, _ = self.walk(d, "/v3/example.com/events?limit=1&ascending=yes&subject=invoice")
        self.assertEqual([(e["message"]["inlet-id"], e["event"]) for p in pages for e in p],
                         [(a, "accepted"), (a, "stored"), (c, "accepted"), (c, "stored")])
        # What inlet cannot answer is a 400 that says why, never an empty list.
        for bad in ({"event": "deliverd"}, {"event": "accepted OR"}, {"event": "(accepted"},
                    {"subject": '"unterminated'}, {"subject": ">10"}, {"size": "big"},
                    {"severity": "fatal"}, {"tags": "x"}, {"list": "l@example.com"},
                    {"subject": "(" * 40 + "x" + ")" * 40}, {"subject": " ".join(["w"] * 100)}):
            status, _, body = d.http("GET", "/v3/example.com/events?" + urllib.parse.urlencode(bad))
            self.assertEqual(status, 400, (bad, body))
            self.assertTrue(json.loads(body)["message"], body)

    def test_delivered_and_failed(self):
        rc = receivers_or_skip()
        ok = rc.WebhookReceiver(default=200)
        self.addCleanup(ok.stop)
        bad = rc.WebhookReceiver(default=406)
        self.addCleanup(bad.stop)
        d = self.daemon(args=["--retry-schedule", "1"])
        self.base = "http://127.0.0.1:%d" % d.http_port
        route_ok = create_route(d, r'match_recipient("ok@example\.com")', ['forward("%s")' % ok.url("/ok")])
        create_route(d, r'match_recipient("bad@example\.com")', ['forward("%s")' % bad.url("/bad")])
        m_ok = send(d, ["ok@example.com"], harness.make_message())
        m_bad = send(d, ["bad@example.com"], harness.make_message())
        wait_deliveries(d, m_ok, 1, ("delivered",))
        wait_deliveries(d, m_bad, 1, ("failed",))
        delivered = self.events(d, "?event=delivered")["items"]
        self.assertEqual(len(delivered), 1, delivered)
        e = delivered[0]
        self.assertEqual((e["recipient"], e["message"]["inlet-id"], e["log-level"]),
                         ("ok@example.com", m_ok, "info"))
        self.assertEqual(e["delivery-status"]["code"], 200)
        self.assertEqual(e["delivery-status"]["attempt-no"], 1)
        # The delivered and failed events name the message as its accepted event does.
        self.assertRegex(e["message"]["headers"]["message-id"], r"^[0-9a-f]{16}@sender\.test$")
        self.assertEqual(e["message"]["recipients"], ["ok@example.com"])
        self.assertIsInstance(e["delivery-status"]["session-seconds"], float)
        self.assertIn(route_ok, e.get("route_ids", []) + [r.get("id") if isinstance(r, dict) else r
                                                           for r in e.get("routes", [])])
        failed = self.events(d, "?event=failed")["items"]
        self.assertEqual(len(failed), 1, failed)
        f = failed[0]
        self.assertEqual((f["recipient"], f["severity"], f["log-level"]), ("bad@example.com", "permanent", "error"))
        self.assertEqual(f["delivery-status"]["code"], 406)
        self.assertEqual(self.events(d, "?message-id=" + f["message"]["headers"]["message-id"] +
                                     "&event=failed")["items"][0]["id"], f["id"])
        self.assertIsInstance(f["reason"], str)


# =============================================================================================
class Deliveries(StorageCase):
    def test_empty_lists(self):
        d = self.start()
        self.store_one(d, harness.make_message())
        for q in ("", "?state=failed", "?state=pending", "?state=delivered&limit=5"):
            self.assertEqual(get_json(d, "/v3/deliveries" + q), {"items": [], "paging": {"next": None}}, q)
        for bad in ("state=bogus", "limit=0", "limit=301", "limit=x", "page=%21%21"):
            status, _, body = d.http("GET", "/v3/deliveries?" + bad)
            self.assertEqual(status, 400, (bad, body))
        status, _, body = d.http("POST", "/v3/deliveries/0123456789abcdef01234567/retry")
        self.assertEqual((status, json.loads(body)), (404, {"message": "Delivery not found"}))
        status, _, _ = d.http("GET", "/v3/deliveries", auth=None)
        self.assertEqual(status, 401)

    def test_listed_and_paged(self):
        # Resends are planned rows: pending, or failed once tried without a relay ("no relay
        # configured").  Wait until they settle, then walk the list two by two.
        d = self.start()
        msg_id, key = self.store_one(d, harness.make_message())
        status, _, body = post_form(d, self.path(key), [("to", ",".join("u%d@elsewhere.test" % i for i in range(5)))])
        self.assertEqual(status, 200, body)
        # The deliverer tries each at once and fails it ("no relay configured"): wait (bounded) for
        # all five to be failed, and fail loudly otherwise.
        deadline = time.monotonic() + timeout(10)
        while True:
            rows = harness.query(d, "SELECT id, state FROM deliveries WHERE message_id = ?", (msg_id,))
            states = {r["state"] for r in rows}
            if (len(rows), states) == (5, {"failed"}):
                break
            self.assertLess(time.monotonic(), deadline, "five resends not all failed within %ss: %r"
                            % (timeout(10), [tuple(r) for r in rows]))
            time.sleep(0.05)
        state = "failed"
        listed, path = [], "/v3/deliveries?state=%s&limit=2" % state
        for _ in range(10):
            j = get_json(d, path)
            self.assertLessEqual(len(j["items"]), 2)
            listed += j["items"]
            if j["paging"]["next"] is None:
                break
            self.assertTrue(j["paging"]["next"].startswith(self.base + "/v3/deliveries?"), j["paging"])
            path = self.local(j["paging"]["next"])
        self.assertEqual(sorted(i["id"] for i in listed), sorted(r["id"] for r in rows))
        stamps = [(i["updated_at"], i["id"]) for i in listed]
        for it in listed:
            self.assertEqual((it["message_id"], it["recipient"], it["kind"], it["route_ids"], it["state"]),
                             (msg_id, "bob@example.com", "address", [], state))
            self.assertRegex(it["target"], r"^u[0-4]@elsewhere\.test$")
            self.assertRegex(it["created_at"], r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$")
            self.assertIsNone(it["next_attempt_at"])
            self.assertIn("no relay configured", it["last_error"])
            for k in ("format", "attempts", "last_status", "last_error", "updated_at"):
                self.assertIn(k, it)
        self.assertEqual(len(stamps), 5)
        other = "pending" if state == "failed" else "failed"
        self.assertEqual(get_json(d, "/v3/deliveries?state=" + other)["items"], [])

    def test_failed_list_and_retry(self):
        rc = receivers_or_skip()
        hook = rc.WebhookReceiver(default=406)
        self.addCleanup(hook.stop)
        d = self.daemon()
        self.base = "http://127.0.0.1:%d" % d.http_port
        create_route(d, r'match_recipient("bob@example\.com")', ['forward("%s")' % hook.url("/x")])
        msg_id = send(d, ["bob@example.com"], harness.make_message())
        (row,) = wait_deliveries(d, msg_id, 1, ("failed",))
        j = get_json(d, "/v3/deliveries?state=failed")
        (it,) = [i for i in j["items"] if i["id"] == row["id"]]
        self.assertEqual((it["state"], it["last_status"], it["attempts"], it["next_attempt_at"]),
                         ("failed", 406, 1, None))
        hook.set_script([], default=200)
        status, _, body = d.http("POST", "/v3/deliveries/%s/retry" % row["id"])
        self.assertEqual((status, json.loads(body)), (200, {"message": "Delivery queued", "id": row["id"]}))
        wait_deliveries(d, msg_id, 1, ("delivered",))
        # Not failed any more: nothing to retry.
        status, _, body = d.http("POST", "/v3/deliveries/%s/retry" % row["id"])
        self.assertEqual((status, json.loads(body)), (404, {"message": "Delivery not found"}))


class Metrics(StorageCase):
    def test_metrics(self):
        d = self.start()
        status, _, _ = d.http("GET", "/metrics", auth=None)
        self.assertEqual(status, 401)
        status, hdrs, body = d.http("GET", "/metrics")
        # The engine always gives the API its metrics hook: a 503 here is a regression.
        self.assertEqual(status, 200, body)
        self.assertEqual(hdrs["Content-Type"].split(";")[0], "text/plain")
        self.assertIn("version=0.0.4", hdrs["Content-Type"])
        self.assertIn(b"# TYPE ", body)


if __name__ == "__main__":
    harness.main()
