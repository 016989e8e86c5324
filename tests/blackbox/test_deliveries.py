"""Deliveries (SPEC §5; reference/mailgun-behaviour.md §3-§4): routes created through the API,
mail sent with smtplib, and what arrives at a webhook receiver or an SMTP relay (receivers.py):

- the JSON POST, compared with golden/delivery-rich.json; its signature, token, headers; the
  inline attachment budget;
- Mailgun's form post (forward(..., format="mailgun") and --webhook-format mailgun) read as
  mailgun-go's ExtractForwardedMessage reads it; reserved header names cannot forge fields;
- the raw MIME variant (a URL path ending in "mime") as Rails ActionMailbox reads it;
- retries: fresh signature per attempt, same X-Inlet-Delivery, 406, timeouts, redirects not
  followed, schedule exhausted -> failed;
- forward("address") through --relay: exact stored bytes, envelope, 4xx retried, 5xx failed,
  AUTH, no relay -> failed;
- crash safety (kill -9 with deliveries in flight) and a receiver down then up.

Every daemon gets --signing-key SIGNING_KEY; retry delays are 1 s (whole seconds)."""

import base64
import json
import os
import re
import smtplib
import time
import urllib.parse

import harness
from harness import InletTestCase, timeout
from receivers import SmtpSink, WebhookReceiver, verify_signature

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
SIGNING_KEY = "inlet-test-signing-key-6b1f0c"
TOKEN_RE = re.compile(r"^[a-z0-9]{50}$")
SIG_RE = re.compile(r"^[0-9a-f]{64}$")
TS_RE = re.compile(r"^[0-9]+$")
DELIVERY_ID_RE = re.compile(r"^[0-9a-f]{24}$")
QUEUED_TEXT_RE = re.compile(rb"Ok: queued as ([0-9a-f]{24})")
PNG = b"\x89PNG\r\n\x1a\n"
PDF = b"%PDF-1.4\n% inlet test attachment.\n%%EOF\n"


# Raw bytes the stored copy must keep exactly (SPEC §2): 8-bit header and body bytes, a bare LF, a
# bare CR, a line that starts with a dot (stuffed on the wire), a NUL.
BINARY_MSG = (b"From: J\xe9r\xf4me <jerome@sender.test>\r\n"
              b"To: bob@example.com\r\n"
              b"Subject: octets \xe9\r\n"
              b"Message-ID: <binary-1@sender.test>\r\n"
              b"Content-Type: text/plain; charset=iso-8859-1\r\n"
              b"Content-Transfer-Encoding: 8bit\r\n"
              b"\r\n"
              b"caf\xe9 bare LF\nhere, bare CR\rthere\r\n"
              b".a line with a leading dot\r\n"
              b"NUL:\x00:end\r\n")


def eml(name):
    """A message of golden/ with CRLF line ends whatever the checkout did to them."""
    with open(os.path.join(GOLDEN, name), "rb") as f:
        data = f.read()
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def version():
    out = harness.run_cli(["--version"])
    m = re.match(r"^inlet (\S+)", out.stdout)
    assert m, out.stdout
    return m.group(1)


def received_value_re(msg_id):
    """Our Received: header (SPEC §2) unfolded, as message-headers carries it."""
    return re.compile(r"^from client\.example\.test \(\[127\.0\.0\.1\]\)\s+by mx\.inlet\.test \(inlet\) with "
                      r"E?SMTP[A-Z]* id %s\s+\(TLS none\);\s+\S.*\+0000$" % msg_id)


class DeliveryCase(InletTestCase):
    maxDiff = None

    # -- set-up helpers -------------------------------------------------------------------------
    def start(self, args=(), **kw):
        return self.daemon(args=["--signing-key", SIGNING_KEY] + list(args), **kw)

    def receiver(self, responses=(), default=200, sock=None):
        """A WebhookReceiver on port 0, or on `sock` (a held port or another receiver's detach())."""
        r = WebhookReceiver(responses, default=default, sock=sock)
        self.addCleanup(r.stop)
        return r

    def sink(self, **kw):
        s = SmtpSink(**kw)
        self.addCleanup(s.stop)
        return s

    def route(self, d, actions, expression='match_recipient(".*@example\\.com")'):
        fields = [("priority", "0"), ("description", "deliveries test"), ("expression", expression)]
        fields += [("action", a) for a in actions]
        status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)
        return json.loads(body)["route"]["id"]

    def send(self, d, body, rcpts=("bob@example.com",), sender="alice@sender.test"):
        """One transaction with smtplib; returns the queued id."""
        with d.smtp() as c:
            c.ehlo("client.example.test")
            code, resp = c.mail(sender)
            self.assertEqual(code, 250, resp)
            for r in rcpts:
                code, resp = c.rcpt(r)
                self.assertEqual(code, 250, resp)
            code, resp = c.data(body)
            self.assertEqual(code, 250, resp)
            m = QUEUED_TEXT_RE.search(resp)
            self.assertTrue(m, resp)
            try:
                c.quit()
            except smtplib.SMTPException:
                pass
        return m.group(1).decode()

    def send_raw(self, d, body, rcpts=("bob@example.com",), sender="alice@sender.test"):
        """Exact bytes (smtplib would also stuff dots after a bare LF): dot-stuffed after CRLF only."""
        with d.session() as s:
            code, lines = s.transaction(sender, list(rcpts), harness.dot_stuff(body))
            self.assertEqual(code, 250, lines)
            s.cmd("QUIT")
        return harness.queued_id(lines)

    # -- database -------------------------------------------------------------------------------
    def deliveries(self, d, msg_id):
        return harness.query(d, "SELECT * FROM deliveries WHERE message_id = ? ORDER BY id", (msg_id,))

    def wait_delivery(self, d, msg_id, pred, wait_s=10, what="delivery state"):
        """Waits (bounded) until the message's only delivery row satisfies pred; returns it."""
        deadline = time.monotonic() + timeout(wait_s)
        rows = []
        while time.monotonic() < deadline:
            rows = self.deliveries(d, msg_id)
            if len(rows) == 1 and pred(rows[0]):
                return rows[0]
            time.sleep(0.05)
        self.fail("%s not reached within %ss: %r" % (what, wait_s, [dict(r) for r in rows]))

    def wait_state(self, d, msg_id, state, wait_s=10):
        return self.wait_delivery(d, msg_id, lambda r: r["state"] == state, wait_s, "state %r" % state)

    def attempts(self, d, delivery_id):
        return harness.query(d, "SELECT * FROM attempts WHERE delivery_id = ? ORDER BY n", (delivery_id,))

    def stored_raw(self, d, msg_id, sent):
        """The exact stored bytes: our Received: header + the bytes sent (SPEC §2), checked against
        messages.raw while the row is still there (bytes no delivery needs may be purged)."""
        rows = harness.query(d, "SELECT raw FROM messages WHERE id = ?", (msg_id,))
        if rows and rows[0]["raw"] is not None and len(rows[0]["raw"]):
            raw = bytes(rows[0]["raw"])
            m, rest = harness.split_received(raw)
            self.assertEqual(m.group("id").decode(), msg_id)
            self.assertEqual(rest, sent)
            return raw
        return None

    # -- checks ---------------------------------------------------------------------------------
    def check_signed(self, ts, token, sig, when=None, max_age=300):
        self.assertRegex(ts, TS_RE)
        self.assertRegex(token, TOKEN_RE)
        self.assertRegex(sig, SIG_RE)
        self.assertTrue(verify_signature(SIGNING_KEY, ts, token, sig, max_age=max_age,
                                         now=when if when is not None else time.time()),
                        "signature does not verify: %r %r %r" % (ts, token, sig))
        if when is not None:
            self.assertLessEqual(abs(int(ts) - when), 2, "timestamp %s not fresh at %s" % (ts, when))

    def check_post_headers(self, req, d, msg_id):
        self.assertEqual(req.method, "POST")
        self.assertEqual(req.header("User-Agent"), "inlet/" + version())
        did = req.header("X-Inlet-Delivery")
        self.assertRegex(did or "", DELIVERY_ID_RE)
        ids = [r["id"] for r in self.deliveries(d, msg_id)]
        self.assertIn(did, ids)
        return did

    def normalise_json(self, obj, msg_id):
        """The JSON POST with the fields that must vary replaced by placeholders (each checked)."""
        obj = dict(obj)
        self.assertEqual(obj.get("id"), msg_id)
        obj["id"] = "<ID>"
        for k, ph in (("timestamp", "<TIMESTAMP>"), ("token", "<TOKEN>"), ("signature", "<SIGNATURE>")):
            self.assertIn(k, obj)
            obj[k] = ph
        obj["message-headers"] = self.normalise_headers(obj.get("message-headers"), msg_id)
        return obj

    def normalise_headers(self, headers, msg_id):
        self.assertIsInstance(headers, list)
        self.assertTrue(headers and headers[0][0] == "Received", headers[:1])
        self.assertRegex(headers[0][1], received_value_re(msg_id))
        return [["Received", "<RECEIVED>"]] + [list(h) for h in headers[1:]]

    def mailgun_headers(self, headers, sender, msg_id):
        """The form's message-headers: Mailgun's two added headers first (X-Mailgun-Incoming,
        X-Envelope-From), then the message's own, normalised."""
        self.assertEqual(headers[:2], [["X-Mailgun-Incoming", "Yes"],
                                       ["X-Envelope-From", "<%s>" % sender]], headers[:3])
        return self.normalise_headers(headers[2:], msg_id)

    def golden(self, name):
        with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
            return json.load(f)


# =============================================================================================
class JsonFormat(DeliveryCase):
    def test_json_post_matches_golden(self):
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s")' % r.url("/hook")])
        sent = eml("delivery-rich.eml")
        msg_id = self.send(d, sent)
        raw = self.stored_raw(d, msg_id, sent)
        (req,) = r.wait_for(1, timeout(10))
        self.assertEqual(req.path, "/hook")
        self.assertEqual(req.content_type.split(";")[0], "application/json")
        did = self.check_post_headers(req, d, msg_id)
        body = req.json()
        self.check_signed(body["timestamp"], body["token"], body["signature"], when=req.time)
        self.assertEqual((body["domain"], body["recipient"], body["sender"]),
                         ("example.com", "bob@example.com", "alice@sender.test"))
        row = self.wait_state(d, msg_id, "delivered")
        self.assertEqual((row["id"], row["attempts"], row["last_status"]), (did, 1, 200))
        r.no_more_than(1, 1.0)
        self.assertEqual(self.normalise_json(body, msg_id), self.golden("delivery-rich.json"))

    def test_inline_budget(self):
        # 10 bytes: the 8-byte logo fits, the 40-byte PDF does not.
        r = self.receiver()
        d = self.start(["--inline-attachments-max", "10"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, eml("delivery-rich.eml"))
        (req,) = r.wait_for(1, timeout(10))
        atts = req.json()["attachments"]
        self.assertEqual([(a["name"], a["size"]) for a in atts], [("logo.png", 8), ("report.pdf", 40)])
        self.assertEqual(base64.b64decode(atts[0]["content"]), PNG)
        pdf = atts[1]
        if "url" in pdf:   # a stored copy (SPEC §5): no content, the URL serves the bytes
            self.assertNotIn("content", pdf)
            u = urllib.parse.urlsplit(pdf["url"])
            status, _, data = d.http("GET", u.path)
            self.assertEqual((status, data), (200, PDF))
        else:
            self.assertIn("content", pdf)
            self.assertIsNone(pdf["content"])
        self.wait_state(d, msg_id, "delivered")

    def test_attachment_url_lives_while_the_delivery_can_be_retried(self):
        # Issue 14 item 10: --store-ttl 1 expires the attachment copy at once, but its URL in the
        # POST keeps working while the delivery is pending (a retry will send it again) and while
        # it is failed (a replay will), the sweeper (every second here) included; once the
        # delivery is delivered the copy expires as usual.
        r = self.receiver([500, 500], default=200)
        d = self.start(["--inline-attachments-max", "0", "--store-ttl", "1", "--retry-schedule", "6"],
                       env={"INLET_TEST_SWEEP_SECONDS": "1"})
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, eml("delivery-rich.eml"))
        (req,) = r.wait_for(1, timeout(10))
        urls = [urllib.parse.urlsplit(a["url"]).path for a in req.json()["attachments"]]
        self.assertEqual(len(urls), 2, req.json()["attachments"])

        def fetch():
            return [d.http("GET", u)[::2] for u in urls]
        want = [(200, PNG), (200, PDF)]
        time.sleep(2.2)  # real time: past the TTL, two sweeps later; the retry is 6 s after the 500
        row = self.deliveries(d, msg_id)[0]
        self.assertEqual((row["state"], row["attempts"]), ("pending", 1))
        self.assertEqual(fetch(), want, "pending")
        row = self.wait_state(d, msg_id, "failed", wait_s=15)
        time.sleep(1.5)  # two sweeps
        self.assertEqual(fetch(), want, "failed, within --failed-retention")
        status, _, body = d.http("POST", "/v3/deliveries/%s/retry" % row["id"])
        self.assertEqual(status, 200, body)
        (_, _, again) = r.wait_for(3, timeout(10))
        self.assertEqual([urllib.parse.urlsplit(a["url"]).path for a in again.json()["attachments"]], urls)
        self.wait_state(d, msg_id, "delivered")
        self.assertEqual([s for s, _ in fetch()], [404, 404])

    def test_default_format_mailgun_setting(self):
        # --webhook-format mailgun makes forward("url") without format= post Mailgun's form; a small
        # message without attachments goes urlencoded (SPEC §5).
        r = self.receiver()
        d = self.start(["--webhook-format", "mailgun"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        sent = harness.make_message(subject="small one", body_text="just text")
        msg_id = self.send(d, sent)
        (req,) = r.wait_for(1, timeout(10))
        self.check_post_headers(req, d, msg_id)
        self.assertEqual(req.content_type.split(";")[0].strip(), "application/x-www-form-urlencoded")
        form = req.form()
        self.assertEqual(form.one("recipient"), "bob@example.com")
        self.assertEqual(form.one("sender"), "alice@sender.test")
        self.assertEqual(form.one("subject"), "small one")
        self.assertEqual(form.one("body-plain").rstrip("\r\n"), "just text")
        self.check_signed(form.one("timestamp"), form.one("token"), form.one("signature"), when=req.time)
        self.mailgun_headers(json.loads(form.one("message-headers")), "alice@sender.test", msg_id)
        self.assertEqual(form.one("X-Mailgun-Incoming"), "Yes")
        self.assertEqual(form.one("X-Envelope-From"), "<alice@sender.test>")
        self.assertEqual(form.one("Subject"), "small one")
        self.wait_state(d, msg_id, "delivered")


    def test_domain_is_lower_case(self):
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s")' % r.url("/hook")])
        self.send(d, harness.make_message(), rcpts=("Bob@Example.COM",))
        (req,) = r.wait_for(1, timeout(10))
        body = req.json()
        self.assertEqual(body["domain"], "example.com")
        self.assertEqual(body["recipient"].lower(), "bob@example.com")

    def test_one_post_per_recipient_and_destination(self):
        # Two routes resolving to the same URL: one delivery (SPEC §4); two recipients: one POST each,
        # with its own recipient and X-Inlet-Delivery.
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s")' % r.url("/same")])
        self.route(d, ['forward("%s")' % r.url("/same")], expression='match_recipient("(bob|carol)@example\\.com")')
        msg_id = self.send(d, harness.make_message(), rcpts=("bob@example.com", "carol@example.com"))
        reqs = r.wait_for(2, timeout(10))
        r.no_more_than(2, 1.5)
        bodies = sorted((q.json()["recipient"], q.header("X-Inlet-Delivery")) for q in reqs)
        self.assertEqual([b[0] for b in bodies], ["bob@example.com", "carol@example.com"])
        self.assertNotEqual(bodies[0][1], bodies[1][1])
        self.assertEqual(sorted(r_["id"] for r_ in self.deliveries(d, msg_id)), sorted(b[1] for b in bodies))


# =============================================================================================
class MailgunForm(DeliveryCase):
    # What mailgun-go's ExtractForwardedMessage reads (url.Values.Get: the first value) and the rest
    # of Mailgun's documented parsed fields.
    GO_FIELDS = ["body-plain", "from", "recipient", "sender", "signature", "stripped-html", "stripped-text",
                 "subject", "token", "timestamp", "message-headers"]

    def test_forward_format_mailgun(self):
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s", format="mailgun")' % r.url("/mg")])
        msg_id = self.send(d, eml("delivery-rich.eml"))
        (req,) = r.wait_for(1, timeout(10))
        self.check_post_headers(req, d, msg_id)
        self.assertEqual(req.content_type.split(";")[0].strip(), "multipart/form-data")  # attachments
        form = req.form()
        g = self.golden("delivery-rich.json")
        for f in self.GO_FIELDS + ["body-html", "stripped-signature", "attachment-count", "content-id-map"]:
            self.assertEqual(len(form.fields.get(f, [])), 1, "field %r: %r" % (f, form.order))
            # Only the headers of the parsed fields (From, Subject) go beside them, in their own case.
            self.assertEqual(len(form.names_ci(f)), 2 if f in ("from", "subject") else 1,
                             "field %r: %r" % (f, form.order))
        for f in ("recipient", "sender", "from", "subject", "body-plain", "stripped-text", "stripped-signature",
                  "body-html", "stripped-html"):
            self.assertEqual(form.one(f), g[f], f)
        self.check_signed(form.one("timestamp"), form.one("token"), form.one("signature"), when=req.time)
        headers = self.mailgun_headers(json.loads(form.one("message-headers")), "alice@sender.test",
                                       msg_id)
        # attachment-1..N, 1-based, in the attachments order; content-id-map names the field.
        self.assertEqual(form.one("attachment-count"), "2")
        a1, a2 = form.file("attachment-1"), form.file("attachment-2")
        self.assertEqual((a1.filename, a1.content_type, a1.data), ("logo.png", "image/png", PNG))
        self.assertEqual((a2.filename, a2.content_type, a2.data), ("report.pdf", "application/pdf", PDF))
        self.assertEqual(json.loads(form.one("content-id-map")), {"<logo@sender.test>": "attachment-1"})
        # Every header as its own field, as Mailgun posts them: From, Subject and Message-ID beside
        # the parsed from, subject and message-id; Mailgun's added headers first.
        self.assertEqual(form.one("To"), "Bob <bob@example.com>")
        self.assertEqual(form.one("X-Test-Header"), "folded value")
        self.assertEqual(form.one("Date"), "Tue, 14 Nov 2023 22:13:20 +0000")
        self.assertEqual(form.one("MIME-Version"), "1.0")
        self.assertEqual(form.one("From"), g["from"])
        self.assertEqual(form.one("Subject"), g["subject"])
        self.assertEqual(form.one("Message-ID"), "<%s>" % g["message-id"])
        self.assertEqual(form.one("X-Mailgun-Incoming"), "Yes")
        self.assertEqual(form.one("X-Envelope-From"), "<alice@sender.test>")
        self.wait_state(d, msg_id, "delivered")
        self.assertEqual(headers, g["message-headers"])
        # The top-level Content-Type is a header like any other (Mailgun posts it as a field too).
        self.assertEqual(form.one("Content-Type"), 'multipart/mixed; boundary="outer"')

    def test_reserved_headers_cannot_forge_fields(self):
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s", format="mailgun")' % r.url("/mg")])
        msg_id = self.send(d, eml("delivery-forged.eml"), sender="mallory@sender.test")
        (req,) = r.wait_for(1, timeout(10))
        form = req.form()
        for name in ("recipient", "signature", "token", "timestamp", "domain", "sender", "body-mime",
                     "attachment-count"):
            names = form.names_ci(name)
            self.assertTrue(all(n == name for n in names), "header %r emitted as a field: %r" % (name, names))
            self.assertLessEqual(len(names), 1, name)
        self.assertEqual(form.one("recipient"), "bob@example.com")
        self.assertEqual(form.one("sender"), "mallory@sender.test")
        self.check_signed(form.one("timestamp"), form.one("token"), form.one("signature"), when=req.time)
        self.assertNotIn("attachment-count", form.fields)  # no attachments (Mailgun: only when some)
        hdrs = json.loads(form.one("message-headers"))
        for pair in (["Recipient", "evil@attacker.test"], ["Timestamp", "1"], ["Domain", "attacker.test"],
                     ["X-Custom", "kept"], ["X-Custom", "second"]):
            self.assertIn(pair, hdrs)
        # A repeated non-reserved header: the first occurrence is the field.
        self.assertEqual(form.fields.get("X-Custom"), ["kept"])
        self.wait_state(d, msg_id, "delivered")


    def test_big_form_is_multipart(self):
        # Mailgun's form is multipart above 1 MiB even without attachments (SPEC §5).
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s", format="mailgun")' % r.url("/mg")])
        text = ("0123456789abcdef" * 4 + "\r\n") * 20000   # 1.3 MB of text
        msg_id = self.send(d, harness.make_message(body_text=text.rstrip("\r\n")))
        (req,) = r.wait_for(1, timeout(15))
        self.assertEqual(req.content_type.split(";")[0].strip(), "multipart/form-data")
        form = req.form()
        self.assertEqual(form.one("body-plain").rstrip("\r\n"), text.rstrip("\r\n"))
        self.check_signed(form.one("timestamp"), form.one("token"), form.one("signature"), when=req.time)
        self.wait_state(d, msg_id, "delivered")

    def test_many_large_fields_and_attachments(self):
        # A form with many large pieces (text and HTML bodies, their stripped forms, several
        # attachments): each is its own segment of the body, however many there are.
        import email.mime.application, email.mime.multipart, email.mime.text
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s", format="mailgun")' % r.url("/mg")])
        m = email.mime.multipart.MIMEMultipart("mixed")
        m["From"], m["To"], m["Subject"] = "a@sender.test", "bob@example.com", "many pieces"
        alt = email.mime.multipart.MIMEMultipart("alternative")
        alt.attach(email.mime.text.MIMEText("plain line\n" * 600))
        alt.attach(email.mime.text.MIMEText("<p>html line</p>\n" * 600, "html"))
        m.attach(alt)
        blobs = [bytes([i]) * 5000 + bytes(range(256)) for i in range(6)]
        for i, b in enumerate(blobs):
            part = email.mime.application.MIMEApplication(b)
            part.add_header("Content-Disposition", "attachment", filename="f%d.bin" % i)
            m.attach(part)
        msg_id = self.send(d, m.as_bytes().replace(b"\n", b"\r\n"))
        (req,) = r.wait_for(1, timeout(10))
        form = req.form()
        self.assertEqual(form.one("attachment-count"), "6")
        for i, b in enumerate(blobs):
            self.assertEqual(form.file("attachment-%d" % (i + 1)).data, b)
        self.assertIn("html line", form.one("body-html"))
        self.check_signed(form.one("timestamp"), form.one("token"), form.one("signature"), when=req.time)
        self.wait_state(d, msg_id, "delivered")


# =============================================================================================
class RawMime(DeliveryCase):
    def test_mime_url_gets_raw_variant(self):
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s")' % r.url("/rails/action_mailbox/mailgun/inbound_emails/mime")])
        sent = eml("delivery-rich.eml")
        msg_id = self.send(d, sent)
        raw = self.stored_raw(d, msg_id, sent)
        (req,) = r.wait_for(1, timeout(10))
        self.check_post_headers(req, d, msg_id)
        self.assertEqual(req.content_type.split(";")[0].strip(), "multipart/form-data")
        form = req.form()
        # body-mime: a plain field (no filename), the exact stored bytes.
        self.assertNotIn("body-mime", [f.name for f in form.files])
        (body_mime,) = form.raw_fields["body-mime"]
        m, rest = harness.split_received(body_mime)
        self.assertEqual((m.group("id").decode(), rest), (msg_id, sent))
        if raw is not None:
            self.assertEqual(body_mime, raw)
        self.assertEqual(form.one("recipient"), "bob@example.com")
        self.assertEqual(form.one("sender"), "alice@sender.test")
        self.assertEqual(form.one("from"), "Alice Example <alice@sender.test>")
        self.assertEqual(form.one("subject"), "Quarterly report \u2013 caf\u00e9")
        # ActionMailbox: Integer(timestamp), HMAC, and no older than 2 minutes.
        self.check_signed(form.one("timestamp"), form.one("token"), form.one("signature"), when=req.time,
                          max_age=120)
        self.wait_state(d, msg_id, "delivered")

    def test_mime_body_is_exact_bytes(self):
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s")' % r.url("/in/mime")])
        msg_id = self.send_raw(d, BINARY_MSG)
        (req,) = r.wait_for(1, timeout(10))
        (body_mime,) = req.form().raw_fields["body-mime"]
        m, rest = harness.split_received(body_mime)
        self.assertEqual((m.group("id").decode(), rest), (msg_id, BINARY_MSG))

    def test_mime_in_query_only_is_json(self):
        # Only the path decides; and the null sender is "" (SPEC §3).
        r = self.receiver()
        d = self.start()
        self.route(d, ['forward("%s")' % r.url("/hook?as=mime")])
        msg_id = self.send(d, harness.make_message(), sender="")
        (req,) = r.wait_for(1, timeout(10))
        self.assertEqual(req.path, "/hook?as=mime")
        body = req.json()
        self.assertEqual((body["id"], body["sender"]), (msg_id, ""))


# =============================================================================================
class Retries(DeliveryCase):
    def test_500_500_200_fresh_signature_same_delivery_id(self):
        r = self.receiver([500, 500, 200])
        d = self.start(["--retry-schedule", "1,1,1"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, eml("delivery-rich.eml"))
        reqs = r.wait_for(3, timeout(15))
        dids = {q.header("X-Inlet-Delivery") for q in reqs}
        self.assertEqual(len(dids), 1, dids)
        bodies = [q.json() for q in reqs]
        for q, b in zip(reqs, bodies):
            self.check_signed(b["timestamp"], b["token"], b["signature"], when=q.time)
        self.assertEqual(len({b["token"] for b in bodies}), 3, "a new token every attempt")
        self.assertEqual(len({b["signature"] for b in bodies}), 3)
        # Otherwise the same body.
        norm = [self.normalise_json(b, msg_id) for b in bodies]
        self.assertEqual(norm[0], norm[1])
        self.assertEqual(norm[0], norm[2])
        # Each retry ~1 s (±10 %) after the end of the failed attempt.
        for a, b in zip(reqs, reqs[1:]):
            self.assertGreaterEqual(b.mono - a.mono, 0.85, "retry came too early")
            self.assertLess(b.mono - a.mono, timeout(5), "retry came too late")
        row = self.wait_state(d, msg_id, "delivered")
        self.assertEqual((row["attempts"], row["last_status"], row["id"]), (3, 200, dids.pop()))
        att = self.attempts(d, row["id"])
        self.assertEqual([(a["n"], a["status"], a["outcome"]) for a in att],
                         [(1, 500, "retry"), (2, 500, "retry"), (3, 200, "delivered")])
        r.no_more_than(3, 1.5)

    def test_retry_delay_counts_from_the_end_of_the_attempt(self):
        # Attempts that fail just before a wall-clock second ends: the retry still waits its delay
        # (1 s, -10 %) from the end of the failed attempt, whatever the rounding to whole seconds.
        fractions = (0.990, 0.995, 0.997, 0.998, 0.9985, 0.999, 0.9993, 0.9996)  # 8: the per-host cap
        rs = [self.receiver([("at_fraction", f, 500)], default=200) for f in fractions]
        d = self.start(["--retry-schedule", "1"])
        self.route(d, ['forward("%s")' % ", ".join(r.url("/f") for r in rs)])
        self.send(d, harness.make_message())
        gaps = []
        deadline = time.monotonic() + timeout(10)
        for r in rs:
            try:
                first, second = r.wait_for(2, max(0.1, deadline - time.monotonic()))
                gaps.append(round(second.mono - first.answered_mono, 3))
            except AssertionError:
                gaps.append("no retry within 10 s")
        self.assertTrue(all(not isinstance(g, str) and 0.85 <= g < timeout(3) for g in gaps),
                        "retry gaps after the end of the failed attempt (want 0.9 to 1.1 s): %r" % gaps)

    def test_406_is_not_retried(self):
        r = self.receiver([406])
        d = self.start(["--retry-schedule", "1,1"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, harness.make_message())
        r.wait_for(1, timeout(10))
        row = self.wait_state(d, msg_id, "failed")
        self.assertEqual((row["attempts"], row["last_status"]), (1, 406))
        self.assertEqual([(a["status"], a["outcome"]) for a in self.attempts(d, row["id"])], [(406, "failed")])
        r.no_more_than(1, timeout(3))

    def test_any_2xx_is_delivered(self):
        # Rails ActionMailbox answers 204.
        r = self.receiver([204], default=500)
        d = self.start(["--retry-schedule", "1"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, harness.make_message())
        row = self.wait_state(d, msg_id, "delivered")
        self.assertEqual((row["attempts"], row["last_status"]), (1, 204))
        r.no_more_than(1, 1.5)

    def test_hanging_receiver_times_out_and_is_retried(self):
        r = self.receiver(["hang"], default=200)
        d = self.start(["--retry-schedule", "1", "--webhook-timeout", "2"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, harness.make_message())
        reqs = r.wait_for(2, timeout(15))
        gap = reqs[1].mono - reqs[0].mono
        self.assertGreaterEqual(gap, 2.5, "the hung attempt must last its 2 s timeout, then 1 s delay")
        self.assertEqual(reqs[0].header("X-Inlet-Delivery"), reqs[1].header("X-Inlet-Delivery"))
        row = self.wait_state(d, msg_id, "delivered")
        self.assertEqual((row["attempts"], row["last_status"]), (2, 200))
        (first, _) = self.attempts(d, row["id"])
        self.assertEqual(first["outcome"], "retry")
        self.assertTrue(first["error"], "the timed-out attempt has an error")

    def test_redirect_not_followed(self):
        target = self.receiver()
        r = self.receiver([], default=("redirect", target.url("/elsewhere")))
        d = self.start(["--retry-schedule", "1"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, harness.make_message())
        row = self.wait_state(d, msg_id, "failed", wait_s=12)
        self.assertEqual((row["attempts"], row["last_status"]), (2, 302))   # 3xx is "anything else"
        self.assertEqual(r.count(), 2)
        self.assertEqual(target.count(), 0, "a redirect was followed")

    def test_schedule_exhausted_fails(self):
        r = self.receiver([], default=503)
        d = self.start(["--retry-schedule", "1,1"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, harness.make_message())
        row = self.wait_state(d, msg_id, "failed", wait_s=15)
        self.assertEqual((row["attempts"], row["last_status"]), (3, 503))
        self.assertTrue(row["last_error"])
        r.no_more_than(3, 1.5)
        att = self.attempts(d, row["id"])
        self.assertEqual([a["outcome"] for a in att], ["retry", "retry", "failed"])


# =============================================================================================
class ForwardAddress(DeliveryCase):
    def test_relay_gets_exact_stored_bytes(self):
        s = self.sink()
        d = self.start(["--relay", s.url()])
        self.route(d, ['forward("someone@elsewhere.test")'])
        sent = eml("delivery-rich.eml")
        msg_id = self.send(d, sent)
        raw = self.stored_raw(d, msg_id, sent)
        (t,) = s.wait_for(1, timeout(10))
        self.assertEqual((t.mail_from, t.rcpt_tos), ("alice@sender.test", ["someone@elsewhere.test"]))
        m, rest = harness.split_received(t.data)
        self.assertEqual((m.group("id").decode(), rest), (msg_id, sent))
        if raw is not None:
            self.assertEqual(t.data, raw)
        row = self.wait_state(d, msg_id, "delivered")
        self.assertEqual((row["kind"], row["target"], row["attempts"], row["last_status"]),
                         ("address", "someone@elsewhere.test", 1, 250))
        # The null sender stays null; dot-stuffed lines come back unstuffed.
        dotted = harness.make_message(body_text=".leading dot\r\n..two dots\r\n.")
        msg2 = self.send(d, dotted, sender="")
        (_, t2) = s.wait_for(2, timeout(10))
        self.assertEqual((t2.mail_from, t2.rcpt_tos), ("", ["someone@elsewhere.test"]))
        self.assertEqual(harness.split_received(t2.data)[1], dotted)
        self.wait_state(d, msg2, "delivered")

    def test_relay_exact_8bit_bytes(self):
        s = self.sink()
        d = self.start(["--relay", s.url()])
        self.route(d, ['forward("someone@elsewhere.test")'])
        msg_id = self.send_raw(d, BINARY_MSG)
        (t,) = s.wait_for(1, timeout(10))
        m, rest = harness.split_received(t.data)
        # Every octet as stored; its bare LF and bare CR go out as CRLF (issue 14 item 4).
        self.assertEqual((m.group("id").decode(), rest), (msg_id, re.sub(rb"\r\n|\r|\n", b"\r\n", BINARY_MSG)))

    def test_bare_line_ends_cannot_smuggle_commands(self):
        # Issue 14 item 4: the stored bytes keep their bare LF and bare CR, but the relay gets
        # canonical CRLF lines, dot-stuffed: a relay that ends DATA at LF.LF or LF.CRLF (lax_lines)
        # sees one message and never the MAIL FROM hidden in it.
        s = self.sink(lax_lines=True)
        d = self.start(["--relay", s.url()])
        self.route(d, ['forward("someone@elsewhere.test")'])
        sent = (b"From: alice@sender.test\r\nTo: bob@example.com\r\nSubject: smuggle\r\n\r\n"
                b"hello\n.\nMAIL FROM:<evil@attacker.test>\nRCPT TO:<victim@elsewhere.test>\nDATA\n"
                b"Subject: injected\n\nsmuggled\n.\r\nRSET\r\n"
                b"bare CR\rthen\r\n.\r\n..\r\nlast\nend\r\n")
        msg_id = self.send_raw(d, sent)
        raw = self.stored_raw(d, msg_id, sent)
        self.assertIsNotNone(raw)  # kept as received: bare LF and CR included
        (t,) = s.wait_for(1, timeout(10))
        self.wait_state(d, msg_id, "delivered")
        time.sleep(timeout(0.5))  # anything smuggled would have arrived by now
        canonical = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
        # SIZE: the bytes on the wire, the stuffed dots included.
        size = len(canonical) + len(re.findall(rb"\r\n\.", canonical))
        self.assertEqual([e[1] for e in s.events if e[0] == "MAIL"], ["FROM:<alice@sender.test> SIZE=%d" % size])
        self.assertEqual([e[1] for e in s.events if e[0] == "RCPT"], ["TO:<someone@elsewhere.test>"])
        self.assertEqual(len(s.transactions), 1, s.events)
        self.assertEqual(t.data, canonical)
        self.assertIn(b"\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n", t.data)  # text, as it was sent

    def test_relay_tls_require_never_sends_in_clear(self):
        # The sink offers no STARTTLS: with --relay-tls require neither the credentials nor the
        # message may be sent.
        s = self.sink()
        pw = self.tmp_path("relay-password")
        with open(pw, "w") as f:
            f.write("s3cret\n")
        d = self.start(["--relay", s.url(user="relayuser"), "--relay-password-file", pw, "--relay-tls", "require",
                        "--retry-schedule", "1"])
        self.route(d, ['forward("someone@elsewhere.test")'])
        msg_id = self.send(d, harness.make_message())
        row = self.wait_delivery(d, msg_id, lambda r: r["attempts"] >= 1, what="an attempt recorded")
        self.assertNotEqual(row["state"], "delivered")
        self.assertTrue(row["last_error"])
        self.assertEqual(s.auths, [])
        self.assertEqual([e for e in s.events if e[0] in ("MAIL", "RCPT", "DATA")], [])

    def test_bounce_address_is_envelope_sender(self):
        s = self.sink()
        d = self.start(["--relay", s.url(), "--bounce-address", "bounces@inlet.test"])
        self.route(d, ['forward("someone@elsewhere.test")'])
        self.send(d, harness.make_message())
        (t,) = s.wait_for(1, timeout(10))
        self.assertEqual((t.mail_from, t.rcpt_tos), ("bounces@inlet.test", ["someone@elsewhere.test"]))

    def test_4xx_retried(self):
        # 451 at RCPT, then 451 after the data, then accepted.
        s = self.sink(replies={"RCPT": ["451 4.7.1 greylisted"], "EOD": ["451 4.3.0 try later"]})
        d = self.start(["--relay", s.url(), "--retry-schedule", "1,1,1"])
        self.route(d, ['forward("someone@elsewhere.test")'])
        msg_id = self.send(d, harness.make_message())
        (t,) = s.wait_for(1, timeout(15))
        self.assertEqual(t.rcpt_tos, ["someone@elsewhere.test"])
        self.assertEqual(len(s.transactions), 2)  # one refused after the data, one accepted
        row = self.wait_state(d, msg_id, "delivered")
        self.assertEqual((row["attempts"], row["last_status"]), (3, 250))
        att = self.attempts(d, row["id"])
        self.assertEqual([(a["status"], a["outcome"]) for a in att],
                         [(451, "retry"), (451, "retry"), (250, "delivered")])

    def test_5xx_fails_without_retry(self):
        s = self.sink(always={"RCPT": "550 5.1.1 no such user"})
        d = self.start(["--relay", s.url(), "--retry-schedule", "1,1"])
        self.route(d, ['forward("someone@elsewhere.test")'])
        msg_id = self.send(d, harness.make_message())
        row = self.wait_state(d, msg_id, "failed")
        self.assertEqual((row["attempts"], row["last_status"]), (1, 550))
        time.sleep(timeout(2.5))
        self.assertEqual(len([e for e in s.events if e[0] == "RCPT"]), 1, s.events)
        self.assertEqual(s.messages, [])

    def test_no_relay_configured(self):
        d = self.start(["--retry-schedule", "1,1"])
        self.route(d, ['forward("someone@elsewhere.test")'])
        msg_id = self.send(d, harness.make_message())
        row = self.wait_state(d, msg_id, "failed")
        self.assertIn("no relay configured", row["last_error"] or "")
        self.assertLessEqual(row["attempts"], 1)

    def test_relay_auth_user_and_password_file(self):
        # The sink offers no STARTTLS: credentials in clear text only because the operator said
        # so (--relay-tls cleartext-auth), and the log warns about it at start.
        s = self.sink()
        pw = self.tmp_path("relay-password")
        with open(pw, "w") as f:
            f.write("s3cret pass\n")
        os.chmod(pw, 0o600)
        d = self.start(["--relay", s.url(user="relayuser"), "--relay-password-file", pw,
                        "--relay-tls", "cleartext-auth"])
        warn = d.find_lines(level="warn", topic="deliver", startswith="relay credentials may go out in clear text")
        self.assertEqual(len(warn), 1, d.log_text())
        self.route(d, ['forward("someone@elsewhere.test")'])
        self.send(d, harness.make_message())
        (t,) = s.wait_for(1, timeout(10))
        self.assertEqual(len(s.auths), 1, s.auths)
        self.assertIn(s.auths[0][0], ("PLAIN", "LOGIN"))
        self.assertEqual(s.auths[0][1:], ("relayuser", "s3cret pass"))
        self.assertEqual(t.auth, s.auths[0])

    def test_relay_credentials_require_tls_by_default(self):
        # Issue 14 item 7: with credentials (a password file, or only a user in the URL) the
        # default --relay-tls opportunistic requires STARTTLS: a relay that does not offer it gets
        # neither AUTH nor the message, and the attempt is retried (a 4xx-like failure).
        pw = self.tmp_path("relay-password")
        with open(pw, "w") as f:
            f.write("s3cret\n")
        for extra in (["--relay-password-file", pw], []):
            with self.subTest(password_file=bool(extra)):
                s = self.sink()
                d = self.start(["--relay", s.url(user="relayuser"), "--retry-schedule", "60"] + extra)
                self.assertEqual(d.find_lines(level="warn", topic="deliver"), [])
                self.route(d, ['forward("someone@elsewhere.test")'])
                msg_id = self.send(d, harness.make_message())
                row = self.wait_delivery(d, msg_id, lambda r: r["attempts"] >= 1, what="an attempt recorded")
                self.assertEqual(s.auths, [])
                self.assertEqual(row["state"], "pending")
                self.assertTrue(row["last_error"])
                self.assertGreaterEqual(s.connections, 1)
                self.assertEqual([e for e in s.events if e[0] in ("AUTH", "MAIL", "RCPT", "DATA")], [])
                d.stop()
                s.stop()
        # Without credentials opportunistic stays opportunistic: the message goes in clear text.
        s = self.sink()
        d = self.start(["--relay", s.url()])
        self.route(d, ['forward("someone@elsewhere.test")'])
        self.send(d, harness.make_message())
        (t,) = s.wait_for(1, timeout(10))
        self.assertEqual((s.auths, t.auth), ([], None))


# =============================================================================================
class Durability(DeliveryCase):
    def test_kill9_with_deliveries_in_flight(self):
        n = 6
        hung = WebhookReceiver([], default="hang")
        self.addCleanup(hung.stop)
        port = hung.port
        d = self.start(["--retry-schedule", "1", "--webhook-timeout", "30"])
        self.route(d, ['forward("http://127.0.0.1:%d/hook")' % port])
        ids = [self.send(d, harness.make_message(subject="m%d" % i)) for i in range(n)]
        # Every delivery planned and at least one in flight (hung); give the rest a moment to start.
        deadline = time.monotonic() + timeout(10)
        while time.monotonic() < deadline:
            rows = harness.query(d, "SELECT id FROM deliveries")
            if len(rows) == n:
                break
            time.sleep(0.05)
        self.assertEqual(len(rows), n)
        # Six to one host stay under the per-host cap (DELIVER_HOST_ACTIVE_MAX, 8): all are in flight.
        hung.wait_until(lambda reqs: len(reqs) >= n, timeout(10), "all %d deliveries in flight" % n)
        in_flight = hung.count()
        d.kill9()
        good = self.receiver(sock=hung.detach())   # same port, never released
        d.restart()
        good.wait_until(lambda reqs: len({q.header("X-Inlet-Delivery") for q in reqs}) >= n, timeout(20),
                        "%d distinct deliveries after restart (%d were in flight)" % (n, in_flight))
        reqs = good.requests
        by_did = {}
        for q in reqs:
            body = q.json()
            self.check_signed(body["timestamp"], body["token"], body["signature"], when=q.time)
            by_did.setdefault(q.header("X-Inlet-Delivery"), set()).add(body["id"])
        self.assertEqual(sorted(by_did), sorted(r["id"] for r in harness.query(d, "SELECT id FROM deliveries")))
        # Duplicates only with the same X-Inlet-Delivery (same message every time).
        self.assertTrue(all(len(v) == 1 for v in by_did.values()), by_did)
        self.assertEqual(sorted(v.pop() for v in by_did.values()), sorted(ids))
        for i in ids:
            self.wait_state(d, i, "delivered")
        # The hung receiver saw only delivery ids that exist.
        self.assertTrue({q.header("X-Inlet-Delivery") for q in hung.requests} <= set(by_did))

    def test_retry_due_while_stopped_happens_after_start(self):
        # The schedule lives in the database: a retry that fell due while inlet was stopped is made
        # right after the next start.
        r = self.receiver([500], default=200)
        d = self.start(["--retry-schedule", "2"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        msg_id = self.send(d, harness.make_message())
        r.wait_for(1, timeout(10))
        self.wait_delivery(d, msg_id, lambda row: row["attempts"] == 1, what="first attempt recorded")
        self.assertEqual(d.stop(), 0)
        time.sleep(2.5)
        t0 = time.monotonic()
        d.restart()
        reqs = r.wait_for(2, timeout(10))
        self.assertLess(reqs[1].mono - t0, timeout(5), "the due retry waited after the start")
        self.assertEqual(reqs[0].header("X-Inlet-Delivery"), reqs[1].header("X-Inlet-Delivery"))
        self.assertEqual(self.wait_state(d, msg_id, "delivered")["attempts"], 2)

    def test_sigterm_with_delivery_in_flight(self):
        # SIGTERM: in-flight deliveries get the grace period, the rest stays queued; exit 0; the
        # next start delivers it (same X-Inlet-Delivery).
        hung = WebhookReceiver([], default="hang")
        self.addCleanup(hung.stop)
        port = hung.port
        d = self.start(["--retry-schedule", "1", "--webhook-timeout", "60", "--shutdown-grace", "2"])
        self.route(d, ['forward("http://127.0.0.1:%d/hook")' % port])
        msg_id = self.send(d, harness.make_message())
        (first,) = hung.wait_for(1, timeout(10))
        t0 = time.monotonic()
        self.assertEqual(d.stop(stop_timeout=15), 0)
        self.assertLess(time.monotonic() - t0, timeout(10), "SIGTERM waited past the grace period")
        good_sock = hung.detach()   # the same port, never released
        self.assertEqual(self.deliveries(d, msg_id)[0]["state"], "pending")
        good = self.receiver(sock=good_sock)
        d.restart()
        (req,) = good.wait_for(1, timeout(10))
        self.assertEqual(req.header("X-Inlet-Delivery"), first.header("X-Inlet-Delivery"))
        self.wait_state(d, msg_id, "delivered")

    def test_receiver_down_then_up(self):
        held = self.hold_port()   # bound, not listening: connections are refused
        port = held.port
        d = self.start(["--retry-schedule", ",".join(["1"] * 20), "--webhook-connect-timeout", "2"])
        self.route(d, ['forward("http://127.0.0.1:%d/hook")' % port])
        first = self.send(d, harness.make_message(subject="first"))
        row = self.wait_delivery(d, first, lambda r: r["attempts"] >= 2, wait_s=10, what="two failed attempts")
        self.assertEqual(row["state"], "pending")
        self.assertTrue(row["last_error"], "a connection error is recorded")
        second = self.send(d, harness.make_message(subject="second"))
        self.wait_delivery(d, second, lambda r: r["attempts"] >= 1, wait_s=10, what="a failed attempt")
        r = self.receiver(sock=held.take())
        reqs = r.wait_until(lambda reqs: {q.json()["id"] for q in reqs} >= {first, second}, timeout(10),
                            "both messages delivered")
        for i in (first, second):
            row = self.wait_state(d, i, "delivered")
            self.assertEqual(row["last_status"], 200)
        self.assertEqual(len({q.header("X-Inlet-Delivery") for q in reqs}), 2)


# =============================================================================================
def proc_kib(pid, field):
    """VmRSS / VmHWM of `pid` in KiB (/proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for pid %d" % (field, pid))


class Memory(DeliveryCase):
    MIB = 1024 * 1024

    def gauge(self, d, name):
        status, _, body = d.http("GET", "/metrics")
        self.assertEqual(status, 200, body)
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        self.fail("no %s in /metrics" % name)

    def wait_held(self, d, n):
        deadline = time.monotonic() + timeout(30)
        while time.monotonic() < deadline:
            if self.gauge(d, "inlet_deliveries_held") >= n:
                return
            time.sleep(0.1)
        self.fail("fewer than %d deliveries held: %s" % (n, self.gauge(d, "inlet_deliveries_held")))

    def test_one_message_to_many_recipients_is_held_once(self):
        # Issue 14 item 3: one 2 MiB message to 100 recipients, routed to a webhook that never
        # answers, grew inlet from 17 to 451 MiB (100 payloads, each with its own copy of the
        # bodies).  The payloads now share the message's big values and the held bytes are
        # bounded (--delivery-memory-max) on every path: all 100 deliveries are in hand within a
        # 16 MiB budget, in the pipeline's batch and again in the first scan after a restart.
        budget = 16 * self.MIB
        r = self.receiver(default="hang")
        d = self.start(["--delivery-memory-max", str(budget), "--max-message-size", str(8 * self.MIB)])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
        body = line * (2 * self.MIB // len(line))
        rcpts = ["r%d@example.com" % i for i in range(100)]
        for start in range(2):
            if start:  # killed: the 100 stay pending and due, for the first scan of the next start
                d.kill9()
                d.restart()
            if not start:
                time.sleep(0.5)
                base = proc_kib(d.proc.pid, "VmRSS")  # idle, as the next start is before its scan
                self.send(d, harness.make_message(body_text=body), rcpts=rcpts)
            self.wait_held(d, 100)
            r.wait_for(8 * (start + 1), timeout(20))  # DELIVER_HOST_ACTIVE_MAX hanging at once
            time.sleep(0.5)
            grown = proc_kib(d.proc.pid, "VmHWM") - base
            held = self.gauge(d, "inlet_deliveries_held_bytes")
            what = "after a restart" if start else "from the pipeline"
            self.assertLessEqual(held, budget, what)
            self.assertEqual(self.gauge(d, "inlet_deliveries_held"), 100, what)
            # The parse of the message, its bodies, the shared values and SQLite's cache: a few
            # times the message, never a hundred (about 15 MiB; 434 MiB before).  Not under ASan,
            # whose quarantine keeps freed memory resident; the gauge above holds there too.
            if not harness.SANITIZED:
                self.assertLess(grown, 48 * 1024, "%s: resident memory grew %d KiB" % (what, grown))

    def test_the_budget_defers_what_does_not_fit(self):
        # --delivery-memory-max below one message's payloads: the message and its first payload
        # still go (alone), the other deliveries wait in the database (from the pipeline's batch,
        # and from the first scan after a restart), and all are made in the end.
        r = self.receiver(["hang", "hang"], default=200)
        d = self.start(["--delivery-memory-max", str(self.MIB), "--max-message-size", str(8 * self.MIB),
                        "--retry-schedule", "1,1"])
        self.route(d, ['forward("%s")' % r.url("/hook")])
        line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
        body = line * (self.MIB // len(line))
        rcpts = ["r%d@example.com" % i for i in range(5)]
        msg_id = self.send(d, harness.make_message(body_text=body), rcpts=rcpts)
        for start in range(2):
            if start:  # killed with the one in flight: all 5 due again at the next start
                d.kill9()
                d.restart()
            r.wait_for(start + 1, timeout(10))  # hanging
            time.sleep(0.5)
            what = "after a restart" if start else "from the pipeline"
            self.assertEqual(self.gauge(d, "inlet_deliveries_held"), 1, what)
            self.assertEqual(self.gauge(d, "inlet_deliveries_in_flight"), 1, what)
            self.assertEqual(len(r.requests), start + 1, what)
        r.release_hangs()  # that attempt fails; the deferred ones go, one at a time
        deadline = time.monotonic() + timeout(30)
        while time.monotonic() < deadline and {x["state"] for x in self.deliveries(d, msg_id)} != {"delivered"}:
            time.sleep(0.1)
        self.assertEqual([x["state"] for x in self.deliveries(d, msg_id)], ["delivered"] * 5)
        self.assertEqual(sorted({q.json()["recipient"] for q in r.requests if q.status == 200}), sorted(rcpts))

if __name__ == "__main__":
    harness.main()
