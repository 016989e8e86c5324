"""Sender authentication at receipt (SPEC §2 "Sender authentication", issue 15): SPF, DKIM and
DMARC verdicts against a real DNS server (Debian's NSD on a loopback port, tests/blackbox/
dnsserver.py) holding the test domains' records, with messages signed by a real signer (Debian's
python3-dkim, tests/blackbox/dkimsign.py).  Every message comes from 127.0.0.1.  The domains are
under "example." (libunbound answers NXDOMAIN for "test." itself, RFC 6761's special-use name)."""

import base64
import os
import subprocess
import time
import unittest
import urllib.parse

import json

import dnsserver
import harness
import receivers
from dnsserver import txt
from harness import InletTestCase, queued_id

SIGNER_PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
SIGNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dkimsign.py")


def openssl(*args, data=None):
    return subprocess.run(["openssl"] + list(args), input=data, capture_output=True, check=True).stdout


class Keys:
    """An RSA 2048 key, a second one (the "wrong key"), and an ed25519 key, made for this run."""

    def __init__(self, d):
        self.rsa = os.path.join(d, "rsa.pem")
        self.rsa2 = os.path.join(d, "rsa2.pem")
        for path in (self.rsa, self.rsa2):
            with open(path, "wb") as f:
                f.write(openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"))
        self.rsa_pub = base64.b64encode(openssl("pkey", "-in", self.rsa, "-pubout", "-outform", "DER")).decode()
        self.rsa2_pub = base64.b64encode(openssl("pkey", "-in", self.rsa2, "-pubout", "-outform", "DER")).decode()
        der = openssl("genpkey", "-algorithm", "ed25519", "-outform", "DER")
        self.ed = os.path.join(d, "ed.seed")
        with open(self.ed, "wb") as f:
            f.write(base64.b64encode(der[-32:]))
        pub = openssl("pkey", "-inform", "DER", "-pubout", "-outform", "DER", data=der)
        self.ed_pub = base64.b64encode(pub[-32:]).decode()


def zones(keys):
    spf = {
        "pass": "v=spf1 ip4:127.0.0.0/8 -all",
        "fail": "v=spf1 ip4:192.0.2.1 -all",
        "softfail": "v=spf1 ip4:192.0.2.1 ~all",
        "neutral": "v=spf1 ?all",
        "permerror": "v=spf1 ip4:300.0.0.1 -all",
        "unknownmech": "v=spf1 foo:bar -all",
        "loop": "v=spf1 include:loop.example -all",
        "toomany": "v=spf1 " + " ".join("a:h%d.toomany.example" % i for i in range(11)) + " ip4:127.0.0.1 -all",
        "voids": "v=spf1 a:nx1.voids.example a:nx2.voids.example a:nx3.voids.example ip4:127.0.0.1 -all",
        "include": "v=spf1 include:pass.example -all",
        "redirect": "v=spf1 redirect=pass.example",
        "mx": "v=spf1 mx -all",
        "macro": "v=spf1 exists:%{ir}._ip.macro.example -all",
        "bylocal": "v=spf1 exists:%{l}._l.bylocal.example -all",  # the local-part decides
        "twice": "v=spf1 -all",
        "signed": "v=spf1 ip4:192.0.2.1 -all",
        "org": "v=spf1 ip4:127.0.0.1 -all",
    }
    r = []
    for name, rec in spf.items():
        r.append("%s IN TXT %s" % (name, txt(rec)))
    r.append("twice IN TXT %s" % txt("v=spf1 +all"))
    r.append("none IN A 192.0.2.7")
    for i in range(11):
        r.append("h%d.toomany IN A 192.0.2.8" % i)
    r.append("mx IN MX 10 mail.mx.example.")
    r.append("mail.mx IN A 127.0.0.1")
    r.append("1.0.0.127._ip.macro IN A 127.0.0.2")
    r.append("good._l.bylocal IN A 127.0.0.2")
    # DMARC
    r.append("_dmarc.pass IN TXT %s" % txt("v=DMARC1; p=reject"))
    r.append("_dmarc.fail IN TXT %s" % txt("v=DMARC1; p=reject"))
    r.append("_dmarc.softfail IN TXT %s" % txt("v=DMARC1; p=quarantine"))
    r.append("_dmarc.signed IN TXT %s" % txt("v=DMARC1; p=reject; adkim=s"))
    r.append("_dmarc.org IN TXT %s" % txt("v=DMARC1; p=none; sp=reject"))
    # pct= sampling (RFC 7489 §6.3): SPF fails and nothing is signed, so DMARC fails.
    for pct in (0, 50, 100):
        r.append("pct%d IN TXT %s" % (pct, txt("v=spf1 -all")))
        r.append("_dmarc.pct%d IN TXT %s" % (pct, txt("v=DMARC1; p=reject; pct=%d; rua=mailto:agg@pct%d.example,"
                                                        "mailto:agg2@pct%d.example; ruf=mailto:f@pct%d.example"
                                                        % (pct, pct, pct, pct))))
    r.append("qpct0 IN TXT %s" % txt("v=spf1 -all"))
    r.append("_dmarc.qpct0 IN TXT %s" % txt("v=DMARC1; p=quarantine; pct=0"))
    # DKIM keys
    r.append("rsa._domainkey.signed IN TXT %s" % txt("v=DKIM1; k=rsa; p=" + keys.rsa_pub))
    r.append("ed._domainkey.signed IN TXT %s" % txt("v=DKIM1; k=ed25519; p=" + keys.ed_pub))
    r.append("wrongtype._domainkey.signed IN TXT %s" % txt("v=DKIM1; k=rsa; p=" + keys.ed_pub))
    r.append("rsa._domainkey.sub.org IN TXT %s" % txt("v=DKIM1; k=rsa; p=" + keys.rsa_pub))
    # A huge TXT set (truncated over UDP, fetched over TCP by the resolver).
    for i in range(40):
        r.append("huge IN TXT %s" % txt("x%02d" % i + "y" * 1000))
    return {"example": r}


def message(frm, subject="hello", body="Hello there.\r\n", extra=b""):
    return (b"From: <" + frm.encode() + b">\r\nTo: <bob@example.com>\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + os.urandom(6).hex().encode() + b"@test>\r\n" + extra + b"\r\n" + body.encode())


def sign(msg, selector, domain, key, alg="rsa-sha256", mode=""):
    out = subprocess.run([SIGNER_PY, SIGNER, selector, domain, key, alg, mode], input=msg, capture_output=True,
                         timeout=30)
    if out.returncode != 0:
        raise AssertionError("signer failed: %s" % out.stderr.decode(errors="replace"))
    return out.stdout + msg


@unittest.skipUnless(dnsserver.available(), "nsd is not installed (scripts/install-deps --test)")
class SenderAuth(InletTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import tempfile
        cls.tmpd = tempfile.mkdtemp(prefix="inlet-senderauth-")
        cls.keys = Keys(cls.tmpd)
        cls.nsd = dnsserver.Nsd(cls.tmpd, zones(cls.keys)).start()

    @classmethod
    def tearDownClass(cls):
        cls.nsd.stop()
        import shutil
        shutil.rmtree(cls.tmpd, ignore_errors=True)
        super().tearDownClass()

    def start(self, *extra, server=None):
        args = ["--sender-auth", "yes", "--dns-server", server or "127.0.0.1:%d" % self.nsd.port,
                "--reject-unrouted", "no", "--auth-budget", "3000", "--hostname", "mx.inlet.example"] + list(extra)
        return self.daemon(args=args)

    def send(self, d, sender, msg, helo="client.example"):
        with d.session() as s:
            return s.transaction(sender, ["bob@example.com"], msg.replace(b"\r\n.", b"\r\n.."), ehlo=helo)

    def verdicts(self, d, sender, msg, **kw):
        code, lines = self.send(d, sender, msg, **kw)
        mid = queued_id(lines)
        line = d.wait_log(lambda l: l.topic == "mailauth" and l.kv.get("id") == mid, what="mailauth checked")
        return mid, line.kv

    def raw(self, d, mid):
        row = d.query("SELECT raw FROM messages WHERE id = ?", (mid,))
        return bytes(row[0][0])

    def test_spf_verdicts(self):
        d = self.start()
        cases = [
            ("a@pass.example", "pass"), ("a@fail.example", "fail"), ("a@softfail.example", "softfail"),
            ("a@neutral.example", "neutral"), ("a@none.example", "none"), ("a@nxdomain.example", "none"),
            ("a@permerror.example", "permerror"), ("a@unknownmech.example", "permerror"),
            ("a@loop.example", "permerror"), ("a@toomany.example", "permerror"), ("a@voids.example", "permerror"),
            ("a@include.example", "pass"), ("a@redirect.example", "pass"), ("a@mx.example", "pass"),
            ("a@macro.example", "pass"), ("a@twice.example", "permerror"), ("a@huge.example", "none"),
        ]
        got = {}
        for sender, _ in cases:
            _, kv = self.verdicts(d, sender, message(sender))
            got[sender] = kv.get("spf")
        self.assertEqual(got, {s: v for s, v in cases})

    def test_spf_starts_at_mail_from(self):
        d = self.start("--log-level", "debug")
        with d.session() as s:
            self.assertReply(s.cmd("EHLO client.example"), 250)
            self.assertReply(s.cmd("MAIL FROM:<a@include.example>"), 250)
            # Before any RCPT or DATA, the SPF lookups ran (their answers are now cached).
            line = d.wait_log(lambda l: l.topic == "mailauth" and l.rest.startswith("prefetched "),
                              what="mailauth prefetched")
            self.assertEqual((line.kv.get("spf"), line.kv.get("subject")), ("pass", "a@include.example"))
            self.assertEqual(line.kv.get("spf_helo"), "none")  # the HELO identity's lookups too
            self.assertReply(s.cmd("RCPT TO:<bob@example.com>"), 250)
            # Within the record's TTL a second sender of the domain finds it cached: no prefetch
            # (two thread hand-offs saved per message; the check after DATA looks up what it needs).
            self.assertReply(s.cmd("RSET"), 250)
            self.assertReply(s.cmd("MAIL FROM:<b@include.example>"), 250)
            line = d.wait_log(lambda l: l.topic == "mailauth" and l.rest.startswith("prefetch skipped "),
                              what="mailauth prefetch skipped")
            self.assertEqual(line.kv.get("cached"), "include.example")
            self.assertFalse([l for l in d.lines() if l.topic == "mailauth" and l.rest.startswith("prefetched ")
                              and l.kv.get("subject") == "b@include.example"])

    def test_null_sender_checks_helo(self):
        d = self.start()
        _, kv = self.verdicts(d, "", message("a@pass.example"), helo="pass.example")
        self.assertEqual(kv.get("spf"), "pass")
        _, kv = self.verdicts(d, "", message("a@pass.example"), helo="fail.example")
        self.assertEqual(kv.get("spf"), "fail")

    def test_helo_checked_as_a_second_identity(self):
        """RFC 7208 §2.3: the HELO name is checked besides the MAIL FROM and reported as its own
        spf resinfo (smtp.helo); X-Mailgun-Spf, DMARC and --spf-reject stay MAIL FROM's."""
        d = self.start("--spf-reject", "yes")
        mid, kv = self.verdicts(d, "a@pass.example", message("a@pass.example"), helo="fail.example")
        self.assertEqual((kv.get("spf"), kv.get("spf_helo"), kv.get("dmarc")), ("pass", "fail", "pass"))
        head = self.raw(d, mid).split(b"\r\n\r\n", 1)[0]
        self.assertIn(b";\r\n\tspf=pass (matched ip4:127.0.0.0/8) smtp.mailfrom=a@pass.example;\r\n"
                      b"\tspf=fail (matched all) smtp.helo=fail.example;\r\n\tdkim=none;", head)
        self.assertIn(b"\r\nX-Mailgun-Spf: Pass\r\n", head)  # a HELO fail refuses nothing either
        mid, kv = self.verdicts(d, "a@softfail.example", message("a@softfail.example"), helo="pass.example")
        self.assertEqual((kv.get("spf"), kv.get("spf_helo")), ("softfail", "pass"))
        head = self.raw(d, mid).split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\tspf=pass (matched ip4:127.0.0.0/8) smtp.helo=pass.example;", head)
        self.assertIn(b"\r\nX-Mailgun-Spf: SoftFail\r\n", head)
        # HELO the sender's domain (the usual case): the same verdict, from the same record...
        mid, kv = self.verdicts(d, "a@pass.example", message("a@pass.example"), helo="pass.example")
        self.assertEqual((kv.get("spf"), kv.get("spf_helo")), ("pass", "pass"))
        self.assertIn(b"\tspf=pass (matched ip4:127.0.0.0/8) smtp.helo=pass.example;", self.raw(d, mid))
        # ...unless the record reads the local-part (%{l}): postmaster@HELO is then another question.
        mid, kv = self.verdicts(d, "good@bylocal.example", message("a@pass.example"), helo="bylocal.example")
        self.assertEqual((kv.get("spf"), kv.get("spf_helo")), ("pass", "fail"))
        head = self.raw(d, mid).split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\tspf=pass (matched exists:%{l}._l.bylocal.example) smtp.mailfrom=good@bylocal.example;\r\n"
                      b"\tspf=fail (matched all) smtp.helo=bylocal.example;", head)
        # An address literal is no identity to check; the null sender's one check is HELO's already.
        for sender, helo in (("a@pass.example", "[127.0.0.1]"), ("", "pass.example")):
            mid, kv = self.verdicts(d, sender, message("a@pass.example"), helo=helo)
            self.assertEqual(kv.get("spf_helo"), "-", (sender, helo))
            head = self.raw(d, mid).split(b"\r\n\r\n", 1)[0]
            self.assertEqual(head.count(b"\tspf="), 1, head)
            self.assertEqual(head.count(b"smtp.helo="), 0 if sender else 1, head)

    def test_header_values_cleaned(self):
        """What a client chose (here its HELO name) goes into Authentication-Results only as plain
        printable ASCII: ( ) \\ ; " and control bytes become '_', blanks stay, the rest is kept."""
        d = self.start()
        mid, kv = self.verdicts(d, "a@pass.example", message("a@pass.example"), helo='odd(name);"x\\y.example')
        self.assertEqual(kv.get("spf_helo"), "none")
        head = self.raw(d, mid).split(b"\r\n\r\n", 1)[0]
        self.assertIn(b";\r\n\tspf=none (odd_name___x_y.example has no SPF record) smtp.helo=odd_name___x_y.example;\r\n",
                      head)

    def test_headers_written_and_impostors_removed(self):
        d = self.start()
        forged = (b"Authentication-Results: mx.inlet.example; spf=pass smtp.mailfrom=a@fail.example\r\n"
                  b"X-Mailgun-Spf: Pass\r\nX-Mailgun-Dkim-Check-Result: Pass\r\n"
                  b"Authentication-Results: other.example; spf=pass\r\n")
        mid, kv = self.verdicts(d, "a@fail.example", message("a@fail.example", extra=forged))
        raw = self.raw(d, mid)
        head = raw.split(b"\r\n\r\n", 1)[0]
        self.assertTrue(head.startswith(b"Authentication-Results: mx.inlet.example;\r\n\tspf=fail"), head[:200])
        self.assertEqual(head.count(b"mx.inlet.example;"), 1, head)
        self.assertIn(b"smtp.mailfrom=a@fail.example", head)
        self.assertIn(b"\tdkim=none;\r\n\tdmarc=fail (p=reject applied=reject) header.from=fail.example\r\n", head)
        self.assertEqual(head.count(b"X-Mailgun-Spf:"), 1)
        self.assertIn(b"\r\nX-Mailgun-Spf: Fail\r\nX-Mailgun-Dkim-Check-Result: Fail\r\nReceived: ", head)
        self.assertIn(b"Authentication-Results: other.example; spf=pass", head)  # not ours: kept

    def test_dkim_verdicts(self):
        d = self.start()
        k = self.keys
        base = message("a@signed.example", body="The body.\r\n")
        good = sign(base, "rsa", "signed.example", k.rsa)
        ed = sign(base, "ed", "signed.example", k.ed, "ed25519-sha256")
        altered_body = good.replace(b"The body.", b"The b0dy.")
        altered_header = good.replace(b"Subject: hello", b"Subject: hellO")
        wrong_key = sign(base, "rsa", "signed.example", k.rsa2)
        missing_key = sign(base, "nokey", "signed.example", k.rsa)
        wrong_type = sign(base, "wrongtype", "signed.example", k.rsa)
        malformed = b"DKIM-Signature: v=1; a=rsa-sha256; d=signed.example; s=rsa; b=!!!; bh=\r\n" + base
        big = b"DKIM-Signature: v=1; a=rsa-sha256; d=signed.example; s=rsa; h=from; bh=AAAA; b=" + \
            b"A" * (64 * 1024) + b"\r\n" + base
        expired = sign(base, "rsa", "signed.example", k.rsa, mode="expired")
        # l=: bytes appended after the signed length do not break it; without l= they do.
        with_length = sign(base, "rsa", "signed.example", k.rsa, mode="length") + b"Appended by a list.\r\n"
        appended = good + b"Appended by a list.\r\n"
        cases = [("good", good, "pass"), ("ed25519", ed, "pass"), ("altered-body", altered_body, "fail"),
                 ("expired", expired, "fail"), ("l=-appended", with_length, "pass"), ("appended", appended, "fail"),
                 ("altered-header", altered_header, "fail"), ("wrong-key", wrong_key, "fail"),
                 ("missing-key", missing_key, "permerror"), ("wrong-key-type", wrong_type, "permerror"),
                 ("malformed", malformed, "permerror"), ("64KiB", big, "fail"), ("unsigned", base, "none")]
        got = {}
        for name, msg, _ in cases:
            _, kv = self.verdicts(d, "a@signed.example", msg)
            got[name] = kv.get("dkim")
        self.assertEqual(got, {n: v for n, _, v in cases})
        # Expired for its x=, not for a broken signature.
        mid, _ = self.verdicts(d, "a@signed.example", expired)
        self.assertIn(b"dkim=fail (signature expired) header.d=signed.example", self.raw(d, mid))
        # A signature that passed makes DMARC pass although SPF failed (signed.example allows 192.0.2.1 only).
        _, kv = self.verdicts(d, "a@signed.example", good)
        self.assertEqual((kv.get("spf"), kv.get("dmarc")), ("fail", "pass"))
        _, kv = self.verdicts(d, "a@signed.example", altered_body)
        self.assertEqual((kv.get("dmarc"), kv.get("dmarc_policy")), ("fail", "reject"))

    def test_dmarc_alignment_and_policies(self):
        d = self.start()
        cases = [
            ("a@pass.example", "a@pass.example", ("pass", "reject")),       # SPF pass, aligned
            ("a@pass.example", "a@fail.example", ("fail", "reject")),       # SPF pass, not aligned
            ("a@fail.example", "a@fail.example", ("fail", "reject")),
            ("a@softfail.example", "a@softfail.example", ("fail", "quarantine")),
            ("a@none.example", "a@none.example", ("none", "-")),             # no record
            ("a@org.example", "a@sub.org.example", ("pass", "reject")),     # relaxed: org domain aligns; sp=
            ("a@pass.example", "a@sub.org.example", ("fail", "reject")),    # subdomain policy sp=reject
            ("a@org.example", "a@org.example", ("pass", "none")),
        ]
        got = {}
        for sender, frm, _ in cases:
            _, kv = self.verdicts(d, sender, message(frm))
            got[(sender, frm)] = (kv.get("dmarc"), kv.get("dmarc_policy"))
        self.assertEqual(got, {(s, f): v for s, f, v in cases})

    def test_reject_policies(self):
        d = self.start("--spf-reject", "yes", "--dmarc-reject", "yes")
        self.assertReply(self.send(d, "a@fail.example", message("a@pass.example")), 550, "550 5.7.23 SPF validation failed")
        self.assertReply(self.send(d, "a@pass.example", message("a@fail.example")), 550,
                         "550 5.7.1 Rejected by the DMARC policy of the From: domain")
        # quarantine is not reject; softfail is not fail.
        queued_id(self.send(d, "a@softfail.example", message("a@softfail.example"))[1])
        queued_id(self.send(d, "a@pass.example", message("a@pass.example"))[1])
        # GET /metrics counts every checked message's verdicts and each refusal by its policy.
        verdicts, refused = self.outcome_metrics(d)
        self.assertEqual(refused, {"spf": 1, "dmarc": 1})
        self.assertEqual({r: n for r, n in verdicts["spf"].items() if n},
                         {"fail": 1, "pass": 2, "softfail": 1})
        self.assertEqual({r: n for r, n in verdicts["dkim"].items() if n}, {"none": 4})
        self.assertEqual(sum(verdicts["dmarc"].values()), 4)
        self.assertEqual(len(verdicts["dmarc"]), 7)  # every result, zeros included

    def outcome_metrics(self, d):
        """inlet_mailauth_verdicts_total as {check: {result: n}}, inlet_mailauth_refused_total as
        {policy: n}, from GET /metrics."""
        status, _, body = d.http("GET", "/metrics")
        self.assertEqual(status, 200, body)
        verdicts, refused = {}, {}
        for line in body.decode().splitlines():
            if line.startswith("inlet_mailauth_verdicts_total{"):
                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
                verdicts.setdefault(labels["check"].strip('"'), {})[labels["result"].strip('"')] = \
                    int(line.rsplit(" ", 1)[1])
            elif line.startswith("inlet_mailauth_refused_total{"):
                refused[line.split('policy="', 1)[1].split('"', 1)[0]] = int(line.rsplit(" ", 1)[1])
        return verdicts, refused

    @staticmethod
    def sampled(mid, pct):
        """inlet's pct= sample (mailauth_dmarc_sampled): FNV-1a-32 of the message id, mod 100."""
        h = 2166136261
        for c in mid.encode():
            h = ((h ^ c) * 16777619) & 0xFFFFFFFF
        return h % 100 < pct

    def test_dmarc_pct_samples_the_reject_policy(self):
        d = self.start("--dmarc-reject", "yes")
        self.route(d, "store()")
        # pct=100: always rejected; pct=0: never, the verdict says quarantine was applied.
        for _ in range(3):
            self.assertReply(self.send(d, "a@pct100.example", message("a@pct100.example")), 550,
                             "550 5.7.1 Rejected by the DMARC policy of the From: domain")
        mids = [self.verdicts(d, "a@pct0.example", message("a@pct0.example")) for _ in range(3)]
        for mid, kv in mids:
            self.assertEqual((kv.get("dmarc"), kv.get("dmarc_policy"), kv.get("dmarc_applied")),
                             ("fail", "reject", "quarantine"))
        head = self.raw(d, mids[0][0]).split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\tdmarc=fail (p=reject pct=0 applied=quarantine rua=mailto:agg@pct0.example,"
                      b"mailto:agg2@pct0.example ruf=mailto:f@pct0.example) header.from=pct0.example\r\n", head)
        (row,) = d.query("SELECT key FROM stored WHERE message_id = ?", (mids[0][0],))
        status, _, body = d.http("GET", "/v3/domains/example.com/messages/%s" % row[0])
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["authentication"]["dmarc"],
                         {"result": "fail", "reason": "", "policy": "reject", "aligned": [], "pct": 0,
                          "applied": "quarantine", "rua": ["mailto:agg@pct0.example", "mailto:agg2@pct0.example"],
                          "ruf": ["mailto:f@pct0.example"], "from": "pct0.example"})
        # p=quarantine outside the sample: none applied (nothing is refused for quarantine anyway).
        _, kv = self.verdicts(d, "a@qpct0.example", message("a@qpct0.example"))
        self.assertEqual((kv.get("dmarc_policy"), kv.get("dmarc_applied")), ("quarantine", "none"))

    def test_dmarc_pct_sample_is_drawn_from_the_message_id(self):
        d = self.start("--dmarc-reject", "yes")
        for _ in range(20):
            self.send(d, "a@pct50.example", message("a@pct50.example"))
        lines = d.find_lines(topic="mailauth", startswith="checked ")
        self.assertEqual(len(lines), 20)
        refused = {l.kv["id"]: l.kv.get("refused") == "dmarc" for l in lines}
        # Both kinds occur (each message is in the sample with probability 1/2: all 20 alike
        # happens once in 2^19 runs), and each is where FNV-1a of its id puts it.
        self.assertEqual(set(refused.values()), {True, False}, refused)
        self.assertEqual(refused, {mid: self.sampled(mid, 50) for mid in refused})
        for l in lines:
            self.assertEqual(l.kv["dmarc_applied"], "reject" if refused[l.kv["id"]] else "quarantine")

    def test_off_by_default_policies_accept(self):
        d = self.start()
        queued_id(self.send(d, "a@fail.example", message("a@fail.example"))[1])

    def test_dns_never_answers_is_temperror_within_budget(self):
        hole = dnsserver.BlackHole()
        try:
            d = self.start("--auth-budget", "700", server="127.0.0.1:%d" % hole.port)
            signed = sign(message("a@signed.example"), "rsa", "signed.example", self.keys.rsa)
            t0 = time.monotonic()
            mid, kv = self.verdicts(d, "a@pass.example", signed)
            took = time.monotonic() - t0
            self.assertEqual((kv.get("spf"), kv.get("spf_helo"), kv.get("dkim"), kv.get("dmarc")),
                             ("temperror", "temperror", "temperror", "temperror"))
            self.assertLess(took, 3.0)
            self.assertGreater(hole.count, 0)
            self.assertIn(b"X-Mailgun-Spf: Neutral", self.raw(d, mid))
        finally:
            hole.stop()

    def test_route_on_mailgun_spf_header(self):
        d = self.start()
        fields = [("priority", "0"), ("expression", 'match_header("X-Mailgun-Spf", "^Pass$")'),
                  ("action", "store()")]
        status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)
        ok, _ = self.verdicts(d, "a@pass.example", message("a@pass.example"))
        bad, _ = self.verdicts(d, "a@fail.example", message("a@fail.example",
                                                         extra=b"X-Mailgun-Spf: Pass\r\n"))  # forged
        def stored(mid):
            line = d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("routed ") and
                              l.kv.get("id") == mid, what="routed " + mid)
            return int(line.kv["stored"])
        self.assertGreaterEqual(stored(ok), 1)
        self.assertEqual(stored(bad), 0)

    def test_payload_and_stored_copy_carry_the_verdicts(self):
        d = self.start()
        hook = receivers.WebhookReceiver()
        self.addCleanup(hook.stop)
        fields = [("priority", "0"), ("expression", 'match_recipient(".*")'),
                  ("action", 'forward("%s")' % hook.url()), ("action", "store()")]
        status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)
        signed = sign(message("a@signed.example"), "rsa", "signed.example", self.keys.rsa)
        mid, _ = self.verdicts(d, "a@pass.example", signed)
        (req,) = hook.wait_for(1)
        payload = req.json()
        auth = payload["authentication"]
        self.assertEqual(auth["authserv-id"], "mx.inlet.example")
        self.assertEqual(auth["spf"], {"result": "pass", "reason": "matched ip4:127.0.0.0/8",
                                       "mailfrom": "a@pass.example"})
        self.assertEqual(auth["spf-helo"], {"result": "none", "reason": "client.example has no SPF record",
                                            "helo": "client.example"})
        (sig,) = auth["dkim"]
        self.assertEqual({k: sig[k] for k in ("result", "domain", "selector", "algorithm")},
                         {"result": "pass", "domain": "signed.example", "selector": "rsa", "algorithm": "rsa-sha256"})
        self.assertEqual(auth["dmarc"], {"result": "pass", "reason": "", "policy": "reject", "aligned": ["dkim"],
                                         "pct": 100, "applied": "none", "rua": [], "ruf": [],
                                         "from": "signed.example"})
        headers = dict((k, v) for k, v in payload["message-headers"])
        self.assertEqual((headers["X-Mailgun-Spf"], headers["X-Mailgun-Dkim-Check-Result"]), ("Pass", "Pass"))
        self.assertEqual(payload["message-headers"][0][0], "Authentication-Results")
        # The stored copy: the same object, and Mailgun's headers as their own keys.
        (row,) = d.query("SELECT key FROM stored WHERE message_id = ?", (mid,))
        status, _, body = d.http("GET", "/v3/domains/example.com/messages/%s" % row[0])
        self.assertEqual(status, 200, body)
        stored = json.loads(body)
        self.assertEqual(stored["authentication"], auth)
        self.assertEqual((stored["X-Mailgun-Spf"], stored["X-Mailgun-Dkim-Check-Result"]), ("Pass", "Pass"))

    def route(self, d, *actions, expression='match_recipient(".*")'):
        fields = [("priority", "0"), ("expression", expression)] + [("action", a) for a in actions]
        status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)

    def events(self, d, mid, want, wait_s=10):
        """The events of message `mid` (GET /v3/example.com/events, ascending) once `want` (a set of
        event names) are all there."""
        deadline = time.monotonic() + wait_s
        while True:
            status, _, body = d.http("GET", "/v3/example.com/events?ascending=yes&inlet-id=" + mid)
            self.assertEqual(status, 200, body)
            items = json.loads(body)["items"]
            if want <= {i["event"] for i in items}:
                return items
            if time.monotonic() > deadline:
                self.fail("events of %s: %r, want %r" % (mid, [i["event"] for i in items], want))
            time.sleep(0.05)

    def test_events_carry_the_verdicts(self):
        d = self.start()
        hook = receivers.WebhookReceiver()
        self.addCleanup(hook.stop)
        self.route(d, 'forward("%s")' % hook.url(), "store()")
        # Two signatures (RSA and ed25519): one dkim entry each, with its domain and selector.
        base = message("a@signed.example")
        signed = sign(sign(base, "rsa", "signed.example", self.keys.rsa), "ed", "signed.example", self.keys.ed,
                      "ed25519-sha256")
        smid, _ = self.verdicts(d, "a@pass.example", signed)
        umid, _ = self.verdicts(d, "a@pass.example", message("a@pass.example"))
        hook.wait_for(2)
        for mid in (smid, umid):
            items = self.events(d, mid, {"accepted", "stored", "delivered"})
            (row,) = d.query("SELECT key FROM stored WHERE message_id = ?", (mid,))
            status, _, body = d.http("GET", "/v3/domains/example.com/messages/%s" % row[0])
            self.assertEqual(status, 200, body)
            want = json.loads(body)["authentication"]
            for it in items:
                self.assertEqual(it.get("authentication"), want, "%s event of %s" % (it["event"], mid))
        (it,) = [i for i in self.events(d, smid, {"stored"}) if i["event"] == "stored"]
        auth = it["authentication"]
        self.assertEqual(auth["spf"]["result"], "pass")
        self.assertEqual([(s["result"], s["domain"], s["selector"]) for s in auth["dkim"]],
                         [("pass", "signed.example", "ed"), ("pass", "signed.example", "rsa")])
        self.assertEqual((auth["dmarc"]["result"], auth["dmarc"]["policy"], auth["dmarc"]["aligned"]),
                         ("pass", "reject", ["dkim"]))
        (it,) = [i for i in self.events(d, umid, {"accepted"}) if i["event"] == "accepted"]
        auth = it["authentication"]
        self.assertEqual((auth["spf"]["result"], auth["dkim"], auth["dmarc"]["result"], auth["dmarc"]["aligned"]),
                         ("pass", [{"result": "none", "reason": ""}], "pass", ["spf"]))
        # Kept once per message, not in every event row.
        self.assertEqual(d.query("SELECT count(*) FROM message_auth WHERE message_id IN (?, ?)", (smid, umid))[0][0], 2)
        for (detail,) in d.query("SELECT detail FROM events WHERE message_id IN (?, ?)", (smid, umid)):
            self.assertNotIn("dkim", detail)
            self.assertNotIn("authentication", detail)

    def test_mailgun_form_has_the_verdict_fields(self):
        """A Mailgun receiver reads request.form["X-Mailgun-Spf"]: the urlencoded form (no attachment),
        the multipart one (an attachment) and a store() notify POST, each parsed as such a receiver
        would (receivers.py: urllib.parse for urlencoded, the email package for multipart)."""
        d = self.start()
        hook = receivers.WebhookReceiver()
        self.addCleanup(hook.stop)
        self.route(d, 'forward("%s", format="mailgun")' % hook.url("/mg"),
                   'store(notify="%s", format="mailgun")' % hook.url("/notify"))
        signed = sign(message("a@signed.example"), "rsa", "signed.example", self.keys.rsa)
        self.verdicts(d, "a@fail.example", signed)  # SPF fails, the signature passes
        attached = message("a@pass.example", extra=b"MIME-Version: 1.0\r\n"
                           b"Content-Type: multipart/mixed; boundary=b1\r\n",
                           body="--b1\r\nContent-Type: text/plain\r\n\r\nHello.\r\n--b1\r\n"
                                "Content-Type: application/octet-stream\r\n"
                                "Content-Disposition: attachment; filename=a.bin\r\n\r\nxyz\r\n--b1--\r\n")
        self.verdicts(d, "a@pass.example", attached)
        reqs = hook.wait_for(4)
        forms = {}
        for req in reqs:
            form = req.form()
            forms[(req.path, form.kind, form.one("X-Mailgun-Spf"))] = form
        self.assertEqual(sorted(forms), [("/mg", "multipart", "Pass"), ("/mg", "urlencoded", "Fail"),
                                         ("/notify", "urlencoded", "Fail"), ("/notify", "urlencoded", "Pass")])
        for (path, kind, spf), form in forms.items():
            want_dkim = "Pass" if spf == "Fail" else "Fail"  # the signed message came with SPF fail
            self.assertEqual(form.one("X-Mailgun-Dkim-Check-Result"), want_dkim, (path, kind))
            self.assertTrue(form.one("Authentication-Results").startswith("mx.inlet.example;"), form.fields)
            headers = json.loads(form.one("message-headers"))
            self.assertEqual([v for n, v in headers if n == "X-Mailgun-Spf"], [spf])
            self.assertEqual([v for n, v in headers if n == "X-Mailgun-Dkim-Check-Result"], [want_dkim])
        self.assertEqual(forms[("/mg", "multipart", "Pass")].file("attachment-1").data, b"xyz")

    # --- The cached path (mailauth_check_cached): checks on the SMTP loop when every answer is cached.

    def checks(self, d):
        """inlet_mailauth_checks_total by path, from GET /metrics."""
        status, _, body = d.http("GET", "/metrics")
        self.assertEqual(status, 200, body)
        got = {}
        for line in body.decode().splitlines():
            if line.startswith("inlet_mailauth_checks_total{"):
                got[line.split('path="', 1)[1].split('"', 1)[0]] = int(float(line.rsplit(" ", 1)[1]))
        return got

    def hooked(self, d, sender, msg, hook, n):
        """Sends msg, waits for its mailauth line and its POST (the n-th): (log kv, payload)."""
        mid, kv = self.verdicts(d, sender, msg)
        payload = hook.wait_for(n)[n - 1].json()
        self.assertEqual(payload["message-headers"][0][0], "Authentication-Results")
        return kv, payload

    @staticmethod
    def auth_headers(payload):
        return [(k, v) for k, v in payload["message-headers"]
                if k in ("Authentication-Results", "X-Mailgun-Spf", "X-Mailgun-Dkim-Check-Result")]

    def test_cached_path_gives_the_async_verdicts(self):
        """The same signed message twice: the first finds the DKIM key and the DMARC record
        uncached (a worker checks it), the second finds every answer cached (checked on the loop);
        the verdicts, the authentication object and the header fields are the same."""
        d = self.start()
        hook = receivers.WebhookReceiver()
        self.addCleanup(hook.stop)
        self.route(d, 'forward("%s")' % hook.url())
        signed = sign(message("a@signed.example"), "rsa", "signed.example", self.keys.rsa)
        cold, cold_payload = self.hooked(d, "a@pass.example", signed, hook, 1)
        warm, warm_payload = self.hooked(d, "a@pass.example", signed, hook, 2)
        self.assertEqual((cold.get("path"), warm.get("path")), ("async", "cached"))
        self.assertEqual(self.checks(d), {"cached": 1, "async": 1})
        verdicts = ("spf", "spf_helo", "dkim", "dmarc", "dmarc_policy", "dmarc_applied")
        self.assertEqual([warm.get(k) for k in verdicts], ["pass", "none", "pass", "pass", "reject", "none"])
        self.assertEqual([warm.get(k) for k in verdicts], [cold.get(k) for k in verdicts])
        self.assertEqual(warm_payload["authentication"], cold_payload["authentication"])
        self.assertEqual(self.auth_headers(warm_payload), self.auth_headers(cold_payload))
        self.assertEqual(len(self.auth_headers(warm_payload)), 3)
        # The refusal policies hold on the cached path: the second SPF fail is refused from the loop.
        d2 = self.start("--spf-reject", "yes", "--dmarc-reject", "yes")
        for sender, frm, reply, refused in (
                ("a@fail.example", "a@pass.example", "550 5.7.23 SPF validation failed", "spf"),
                ("a@pass.example", "a@fail.example", "550 5.7.1 Rejected by the DMARC policy of the From: domain",
                 "dmarc")):
            for path in ("async", "cached"):
                after = len(d2.lines())
                self.assertReply(self.send(d2, sender, message(frm)), 550, reply)
                line = d2.wait_log(lambda l: l.topic == "mailauth" and l.rest.startswith("checked "), after=after,
                                   what="mailauth checked")
                self.assertEqual((line.kv.get("path"), line.kv.get("refused")), (path, refused))
        self.assertEqual(self.checks(d2), {"cached": 2, "async": 2})
        # The loop answers at once (a synchronous commit): the session goes on after each reply.
        with d2.session() as s:
            for sender, frm, code in (("a@fail.example", "a@pass.example", 550),
                                      ("a@pass.example", "a@fail.example", 550),
                                      ("a@pass.example", "a@pass.example", 250),
                                      ("a@fail.example", "a@pass.example", 550)):
                self.assertReply(s.transaction(sender, ["bob@example.com"], message(frm), ehlo="client.example"), code)
        self.assertEqual(self.checks(d2), {"cached": 6, "async": 2})

    def test_large_message_always_async(self):
        """Past MAILAUTH_CACHED_BYTES_MAX (256 KiB) the loop never hashes the body: a worker does,
        however warm the cache."""
        d = self.start()
        big = sign(message("a@signed.example", body=("z" * 1022 + "\r\n") * 270), "rsa", "signed.example",
                   self.keys.rsa)
        small = sign(message("a@signed.example"), "rsa", "signed.example", self.keys.rsa)
        got = [self.verdicts(d, "a@pass.example", m)[1] for m in (small, small, big, big)]
        self.assertGreater(len(big), 256 * 1024)
        self.assertEqual([(kv.get("path"), kv.get("dkim"), kv.get("dmarc")) for kv in got],
                         [("async", "pass", "pass"), ("cached", "pass", "pass"),
                          ("async", "pass", "pass"), ("async", "pass", "pass")])
        self.assertEqual(self.checks(d), {"cached": 1, "async": 3})

    def test_uncached_key_falls_back_to_a_worker(self):
        """Every answer cached but one signature's key: the loop gives up, a worker looks the key up
        and both signatures pass; once that key is cached too, the loop checks it alike."""
        d = self.start()
        k = self.keys
        rsa_only = sign(message("a@signed.example"), "rsa", "signed.example", k.rsa)
        self.verdicts(d, "a@pass.example", rsa_only)  # caches SPF, DMARC and the rsa key
        self.assertEqual(self.verdicts(d, "a@pass.example", rsa_only)[1].get("path"), "cached")
        both = sign(sign(message("a@signed.example"), "rsa", "signed.example", k.rsa), "ed", "signed.example",
                    k.ed, "ed25519-sha256")
        mids = []
        for path in ("async", "cached"):
            mid, kv = self.verdicts(d, "a@pass.example", both)
            mids.append(mid)
            self.assertEqual((kv.get("path"), kv.get("dkim"), kv.get("dmarc")), (path, "pass", "pass"))
        heads = [self.raw(d, mid).split(b"\r\n\r\n", 1)[0] for mid in mids]
        for head in heads:
            self.assertIn(b"\tdkim=pass header.d=signed.example header.s=ed", head)
            self.assertIn(b"\tdkim=pass header.d=signed.example header.s=rsa", head)
        self.assertEqual(heads[0].split(b"\r\nReceived: ")[0], heads[1].split(b"\r\nReceived: ")[0])
        # A key that does not exist (NXDOMAIN) is an answer too: cached, it is permerror on the loop.
        missing = sign(message("a@signed.example"), "nokey", "signed.example", k.rsa)
        got = [self.verdicts(d, "a@pass.example", missing)[1] for _ in range(2)]
        self.assertEqual([(kv.get("path"), kv.get("dkim")) for kv in got],
                         [("async", "permerror"), ("cached", "permerror")])
        self.assertEqual(self.checks(d), {"cached": 3, "async": 3})

    def test_without_sender_auth_no_object_even_if_forged(self):
        d = self.daemon(args=["--reject-unrouted", "no", "--hostname", "mx.inlet.test"])
        hook = receivers.WebhookReceiver()
        self.addCleanup(hook.stop)
        fields = [("priority", "0"), ("expression", 'match_recipient(".*")'), ("action", 'forward("%s")' % hook.url())]
        status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)
        forged = b"Authentication-Results: mx.inlet.test; spf=pass smtp.mailfrom=a@pass.example\r\n"
        code, lines = self.send(d, "a@fail.example", forged + message("a@pass.example"))
        queued_id(lines)
        (req,) = hook.wait_for(1)
        self.assertNotIn("authentication", req.json())


if __name__ == "__main__":
    unittest.main()
