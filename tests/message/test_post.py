#!/usr/bin/env python3
"""Receiver-side test of the webhook POST bodies (message/post.c), the stored-message JSON and
body-mime (message/stored.c).

    test_post.py TEST_POST_EXE DIR...

Runs `test-post --write` over every DIR/*.eml (plus a generated message of more than 100 KiB
without attachments) and parses what it wrote the way receivers do: JSON with json.loads,
application/x-www-form-urlencoded with urllib.parse.parse_qs / parse_qsl, multipart/form-data
with the email package (BytesParser over a synthetic "Content-Type: multipart/form-data;
boundary=..." header).  The fields are checked against the message's parsed JSON
(message_to_json, every attachment inlined): the names mailgun-go's ExtractForwardedMessage and
Rails ActionMailbox's Mailgun ingress read, attachment-N bytes, content-id-map, the reserved-name
rule (headers named like our fields never override them), body-mime byte for byte.
Output is TAP, one line per (message, check)."""
import base64
import email.message
import email.parser
import email.utils
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import urllib.parse

TIMESTAMP = "1700000000"
TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmn"
SIGNATURE = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
RECIPIENT = "Bob@Example.COM"
SENDER = "alice@example.org"
NOTIFY_URL = "http://127.0.0.1:8080/v3/domains/example.com/messages/KEY1"
STORED_URL = "http://127.0.0.1:8080/v3/domains/example.com/messages/KEY2"
URLENCODED_MAX = 100 * 1024
HEADER_FIELDS_MAX = 500

# SPEC §3 reserved names (message.c): the fields inlet vouches for, ignoring case, and the parsed
# header fields spelled exactly so ("From", "Subject", "Message-Id" are fields beside them).
RESERVED = {
    "recipient", "sender", "timestamp", "token", "signature", "message-headers",
    "content-id-map", "attachments", "domain", "recipients", "message-url", "parse-warnings",
}
RESERVED_PREFIXES = ("body-", "stripped-", "attachment-")
PARSED_NAMES = {"from", "subject", "message-id"}
# The headers Mailgun adds to inbound mail, first in message-headers and the per-header fields.
MAILGUN_ADDED = [["X-Mailgun-Incoming", "Yes"], ["X-Envelope-From", "<%s>" % SENDER]]
OWN_FIELDS = ["recipient", "sender", "from", "subject", "message-id", "domain", "body-plain",
              "body-html", "stripped-text", "stripped-signature", "stripped-html",
              "message-headers", "content-id-map", "parse-warnings", "id"]
# mailgun-go ExtractForwardedMessage (routes.go) and Rails ActionMailbox's Mailgun ingress.
GO_FIELDS = ["body-plain", "from", "recipient", "sender", "signature", "stripped-html",
             "stripped-text", "subject", "token", "timestamp", "message-headers"]
RAILS_FIELDS = ["body-mime", "recipient", "timestamp", "token", "signature"]


def reserved(name):
    n = name.lower()
    return n in RESERVED or n.startswith(RESERVED_PREFIXES) or name in PARSED_NAMES


def header_field_ok(name):
    """post.c header_field_ok(): a form field of its own."""
    if not name or len(name.encode()) > 256:
        return False
    if any(ord(c) < 33 or ord(c) > 126 or c in ":[]" for c in name):
        return False
    return not reserved(name) and name.lower() not in ("id", "_charset_")


def header_fields(headers):
    out, seen = [], set()
    for name, value in headers:
        if len(seen) >= HEADER_FIELDS_MAX:
            break
        if not header_field_ok(name) or name.lower() in seen:
            continue
        seen.add(name.lower())
        out.append((name, value))
    return out


def stored_header_keys(headers):
    out, seen = [], set()
    for name, value in headers:
        if not name or reserved(name) or name.lower() in seen:
            continue
        seen.add(name.lower())
        out.append((name, value))
    return out


def form_quoted(s):
    """What the email package returns for a name/filename post.c quoted (HTML form rules)."""
    esc = s.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    return email.utils.unquote('"' + esc + '"')


def file_ctype(ct):
    if len(ct) <= 127 and re.fullmatch(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+", ct):
        return ct
    return "application/octet-stream"


def utf8_cut(s, n):
    b = s.encode()
    if len(b) <= n:
        return s
    return b[:n].decode("utf-8", "ignore")


def unsurrogate(s):
    return s.encode("ascii", "surrogateescape").decode("utf-8") if s is not None else None


def parse_multipart(body, ctype):
    """[(name, filename, content-type header or None, bytes)] in order."""
    m = re.fullmatch(r"multipart/form-data; boundary=(inlet[0-9a-f]{32})", ctype)
    if not m:
        raise AssertionError(f"bad multipart content type {ctype!r}")
    boundary = m.group(1).encode()
    assert body.count(b"--" + boundary + b"--") == 1 and body.endswith(
        b"\r\n--" + boundary + b"--\r\n"), "closing delimiter once, at the end"
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    assert msg.is_multipart(), "not parsed as multipart"
    assert not msg.defects, f"defects: {msg.defects}"
    # the same split done by hand, for the bytes of message/* file parts (which the email
    # package parses as messages instead of giving their bytes)
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary)
    raw = [p.split(b"\r\n\r\n", 1)[1] for p in pieces[1:-1]]
    out = []
    parts = msg.get_payload()
    eq(len(parts), len(raw), "parts by hand")
    for part, rb in zip(parts, raw):
        # header bytes are UTF-8 (as browsers send them): read the raw value that way
        disp = unsurrogate(dict(part.raw_items()).get("Content-Disposition", ""))
        assert disp.startswith("form-data;"), f"disposition {disp!r}"
        d = email.message.Message()
        d["Content-Disposition"] = disp
        name = d.get_param("name", header="content-disposition")
        filename = d.get_filename()
        ct = part.get("Content-Type")
        data = part.get_payload(decode=True)
        if part.is_multipart():
            assert filename is not None and ct.lower().startswith("message/"), \
                f"{name!r} parsed as a message"
            data = rb
        else:
            assert not part.defects, f"part defects: {part.defects}"
            eq(data, rb, f"{name!r}: the email package and the split by hand agree")
        out.append((name, filename, None if ct is None else str(ct), data))
    return out


class Checker:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, what, fn):
        self.n += 1
        try:
            fn()
            print(f"ok {self.n} - {what}")
        except Exception as e:  # noqa: BLE001 - report every failure as TAP
            self.failed += 1
            print(f"not ok {self.n} - {what}")
            for line in f"{type(e).__name__}: {e}".splitlines()[:20]:
                print(f"#   {line[:300]}")


def eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {str(got)[:200]!r}, want {str(want)[:200]!r}")


def one(fields, name):
    vals = [f for f in fields if f[0] == name]
    if len(vals) != 1:
        raise AssertionError(f"field {name!r} appears {len(vals)} times")
    return vals[0]


def text(fields, name):
    return one(fields, name)[3].decode("utf-8")


def attachment_bytes(a):
    return base64.b64decode(a["content"]) if a["content"] is not None else None


def check_form_fields(fields, parsed, notify, multipart):
    """fields: [(name, filename, ctype, bytes)] from either encoding."""
    atts = parsed["attachments"]
    hdr = header_fields(MAILGUN_ADDED + parsed["message-headers"])
    names = list(OWN_FIELDS)
    if notify:
        names += ["message-url", "attachments"]
    names += [n for n, _ in hdr]
    if not notify and atts:
        names += ["attachment-count"] + [f"attachment-{i}" for i in range(1, len(atts) + 1)]
    names += ["timestamp", "token", "signature"]
    want_names = [form_quoted(n) if multipart else n for n in names]
    eq([f[0] for f in fields], want_names, "field names in order")

    eq(text(fields, "recipient"), RECIPIENT, "recipient")
    eq(text(fields, "sender"), SENDER, "sender")
    for k in ["from", "subject", "message-id", "domain", "body-plain", "body-html",
              "stripped-text", "stripped-signature", "stripped-html", "id"]:
        eq(text(fields, k), parsed[k], k)
    eq(json.loads(text(fields, "message-headers")), MAILGUN_ADDED + parsed["message-headers"],
       "message-headers")
    eq(json.loads(text(fields, "parse-warnings")), parsed["parse-warnings"], "parse-warnings")
    eq(text(fields, "timestamp"), TIMESTAMP, "timestamp")
    eq(text(fields, "token"), TOKEN, "token")
    eq(text(fields, "signature"), SIGNATURE, "signature")
    # mailgun-go ExtractForwardedMessage: strings, Atoi(timestamp), [][]string headers
    for k in GO_FIELDS:
        one(fields, k)
    int(text(fields, "timestamp"))
    mh = json.loads(text(fields, "message-headers"))
    assert all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
               for p in mh), "message-headers is [][2]string"
    for name, value in hdr:
        eq(text(fields, form_quoted(name) if multipart else name), value, f"header field {name}")
    for f in fields:
        assert f[0] in want_names, f"unexpected field {f[0]!r}"

    cid = json.loads(text(fields, "content-id-map"))
    want_cid = {}
    for k, v in parsed["content-id-map"].items():
        want_cid[k] = (f"{NOTIFY_URL}/attachments/{v['index']}" if notify
                       else f"attachment-{v['index'] + 1}")
    eq(cid, want_cid, "content-id-map")

    if notify:
        eq(text(fields, "message-url"), NOTIFY_URL, "message-url")
        want = [{"size": a["size"], "url": f"{NOTIFY_URL}/attachments/{i}", "name": a["name"],
                 "content-type": a["content-type"]} for i, a in enumerate(atts)]
        eq(json.loads(text(fields, "attachments")), want, "notify attachments")
        assert not any(f[1] for f in fields), "notify: no file parts"
    elif atts:
        eq(text(fields, "attachment-count"), str(len(atts)), "attachment-count")
        for i, a in enumerate(atts, 1):
            name, filename, ctype, data = one(fields, f"attachment-{i}")
            eq(data, attachment_bytes(a), f"attachment-{i} bytes")
            want_fn = utf8_cut(a["name"], 255) if a["name"] else f"attachment-{i}"
            eq(filename, form_quoted(want_fn), f"attachment-{i} filename")
            eq(ctype, file_ctype(a["content-type"]), f"attachment-{i} content type")
    for f in fields:
        if not f[0].startswith("attachment-") or f[0] == "attachment-count":
            assert f[1] is None and f[2] is None, f"plain field {f[0]!r} has no filename/type"


def check_mailgun(body, ctype, parsed, notify):
    atts = parsed["attachments"]
    if ctype == "application/x-www-form-urlencoded":
        assert notify or not atts, "urlencoded with attachments"
        assert len(body) <= URLENCODED_MAX, f"urlencoded body of {len(body)} bytes"
        s = body.decode("ascii")
        qs = urllib.parse.parse_qs(s, keep_blank_values=True, strict_parsing=True)
        for k, v in qs.items():
            assert len(v) == 1, f"{k!r} given {len(v)} times"
        pairs = urllib.parse.parse_qsl(s, keep_blank_values=True, strict_parsing=True)
        fields = [(k, None, None, v.encode("utf-8")) for k, v in pairs]
        check_form_fields(fields, parsed, notify, False)
    else:
        fields = parse_multipart(body, ctype)
        if notify or not atts:
            # multipart without files only when the urlencoded body would be too big
            pairs = [(f[0], f[3]) for f in fields]
            assert len(urllib.parse.urlencode(pairs)) > URLENCODED_MAX - 1024, \
                "multipart although the urlencoded body would be small"
        check_form_fields(fields, parsed, notify, True)


def check_mime(body, ctype, parsed, eml, notify):
    fields = parse_multipart(body, ctype)
    names = ["recipient", "sender", "from", "subject"]
    if notify:
        names += ["domain", "message-url", "attachments"]
    names += ["body-mime", "timestamp", "token", "signature"]
    eq([f[0] for f in fields], names, "field names in order")
    for k in RAILS_FIELDS:
        one(fields, k)
    name, filename, ct, data = one(fields, "body-mime")
    assert filename is None and ct is None, "body-mime: a plain field (no filename, no type)"
    eq(data, eml, "body-mime bytes")
    eq(text(fields, "recipient"), RECIPIENT, "recipient")
    eq(text(fields, "sender"), SENDER, "sender")
    eq(text(fields, "from"), parsed["from"], "from")
    eq(text(fields, "subject"), parsed["subject"], "subject")
    eq(text(fields, "timestamp"), TIMESTAMP, "timestamp")
    eq(text(fields, "token"), TOKEN, "token")
    eq(text(fields, "signature"), SIGNATURE, "signature")
    if notify:
        eq(text(fields, "domain"), parsed["domain"], "domain")
        eq(text(fields, "message-url"), NOTIFY_URL, "message-url")
        eq(len(json.loads(text(fields, "attachments"))), len(parsed["attachments"]),
           "attachments")


def check_json(body, ctype, parsed, notify):
    eq(ctype, "application/json", "content type")
    got = json.loads(body.decode("utf-8"))
    want = dict(parsed)
    if notify:
        want["attachments"] = [
            {"size": a["size"], "url": f"{NOTIFY_URL}/attachments/{i}", "name": a["name"],
             "content-type": a["content-type"]} for i, a in enumerate(parsed["attachments"])]
        want["content-id-map"] = {
            k: dict(v, url=f"{NOTIFY_URL}/attachments/{v['index']}")
            for k, v in parsed["content-id-map"].items()}
        want["message-url"] = NOTIFY_URL
    want.update(timestamp=TIMESTAMP, token=TOKEN, signature=SIGNATURE)
    eq(got, want, "json post")
    eq(list(got)[-3:], ["timestamp", "token", "signature"], "tail keys last")


def check_stored(stored, parsed):
    keys = ["recipients", "sender", "from", "subject", "message-id", "body-plain",
            "stripped-text", "stripped-signature", "body-html", "stripped-html", "attachments",
            "message-headers", "content-id-map"]
    hk = stored_header_keys(MAILGUN_ADDED + parsed["message-headers"])
    eq(list(stored), keys + [n for n, _ in hk], "keys in order")
    eq(stored["recipients"], RECIPIENT, "recipients")
    eq(stored["sender"], SENDER, "sender")
    for k in keys[2:10]:
        if k != "attachments":
            eq(stored[k], parsed[k], k)
    eq(stored["message-headers"], MAILGUN_ADDED + parsed["message-headers"], "message-headers")
    want = [{"size": a["size"], "url": f"{STORED_URL}/attachments/{i}", "name": a["name"],
             "content-type": a["content-type"]} for i, a in enumerate(parsed["attachments"])]
    eq(stored["attachments"], want, "attachments")
    want_cid = {k: {"url": f"{STORED_URL}/attachments/{v['index']}",
                    "content-type": v["content-type"], "name": v["name"], "size": v["size"]}
                for k, v in parsed["content-id-map"].items()}
    eq(stored["content-id-map"], want_cid, "content-id-map")
    for n, v in hk:
        eq(stored[n], v, f"header key {n}")
    assert "message-url" not in stored, "no message-url"


def utf8_without_nul(b):
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in b


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    exe = sys.argv[1]
    emls = sorted(p for d in sys.argv[2:] for p in pathlib.Path(d).glob("*.eml"))
    c = Checker()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        big = tmp / "generated-big-no-attachments.eml"
        line = "Gr\u00fc\u00dfe aus K\u00f6ln, \u00e9t\u00e9 \u2014 caf\u00e9 & cr\u00e8me = 100%\r\n"
        big.write_bytes(("From: A <a@example.org>\r\nSubject: big\r\nX-Big: yes\r\n"
                         "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                         + line * (150 * 1024 // len(line.encode()))).encode())
        emls.append(big)
        out = tmp / "out"
        out.mkdir()
        r = subprocess.run([exe, "--write", str(out)] + [str(e) for e in emls],
                           capture_output=True, timeout=300)
        c.check("test-post --write", lambda: eq(r.returncode, 0, r.stderr.decode(errors="replace")))
        if r.returncode != 0:
            print(f"1..{c.n}")
            return 1
        # body-mime re-encodings are parsed again and compared below
        bm_dir = tmp / "bm"
        bm_dir.mkdir()
        reencoded = []
        for eml in emls:
            raw = eml.read_bytes()
            if not utf8_without_nul(raw):
                p = bm_dir / eml.name
                p.write_bytes((out / f"{eml.stem}.body-mime").read_bytes())
                reencoded.append(p)
        bm_out = tmp / "bm-out"
        bm_out.mkdir()
        if reencoded:
            subprocess.run([exe, "--write", str(bm_out)] + [str(e) for e in reencoded],
                           check=True, capture_output=True, timeout=300)

        for eml in emls:
            stem = eml.stem
            raw = eml.read_bytes()
            parsed = json.loads((out / f"{stem}.parsed.json").read_bytes())

            def post(fmt):
                return ((out / f"{stem}.{fmt}.post").read_bytes(),
                        (out / f"{stem}.{fmt}.ctype").read_text())

            for notify in (False, True):
                pre = "notify-" if notify else ""
                c.check(f"{eml.name}: {pre}json",
                        lambda: check_json(*post(pre + "json"), parsed, notify))
                c.check(f"{eml.name}: {pre}mailgun ({post(pre + 'mailgun')[1].split(';')[0]})",
                        lambda: check_mailgun(*post(pre + "mailgun"), parsed, notify))
                c.check(f"{eml.name}: {pre}mime",
                        lambda: check_mime(*post(pre + "mime"), parsed, raw, notify))
            c.check(f"{eml.name}: stored json",
                    lambda: check_stored(json.loads((out / f"{stem}.stored.json").read_bytes()),
                                         parsed))

            def body_mime():
                bm = (out / f"{stem}.body-mime").read_bytes()
                if utf8_without_nul(raw):
                    eq(bm, raw, "exact bytes")
                    return
                bad = [b for b in bm if b >= 0x80 or b == 0]
                assert not bad, f"{len(bad)} bytes not 7-bit"
                back = json.loads((bm_out / f"{stem}.parsed.json").read_bytes())
                for k in ["from", "subject", "message-id", "body-plain", "body-html"]:
                    eq(back[k], parsed[k], f"re-parsed {k}")
                eq([(a["name"], a["content-type"], a["content"]) for a in back["attachments"]],
                   [(a["name"], a["content-type"], a["content"]) for a in parsed["attachments"]],
                   "re-parsed attachments")
            c.check(f"{eml.name}: body-mime", body_mime)

        def forged():
            p = out / "forged-fields.mailgun.post"
            ct = (out / "forged-fields.mailgun.ctype").read_text()
            fields = parse_multipart(p.read_bytes(), ct)
            names = [f[0] for f in fields]
            for n in ["Recipient", "Signature", "Timestamp", "Token", "Body-Mime",
                      "Attachment-Count", "Attachment-1", "Message-Url", "Domain", "Sender",
                      "Id", "Message-Headers", "Content-Id-Map", "Recipients", "Recipient[x]",
                      "_charset_", "X-Arr[]"]:
                assert n not in names, f"header {n} emitted as a field"
            eq(text(fields, "attachment-count"), "4", "attachment-count")
            eq(names.count("X-Normal") + names.count("x-normal"), 1, "repeated header once")
            eq(text(fields, "X-Normal"), "first", "first occurrence")
            eq(one(fields, "attachment-2")[1], 'a%22b%0D%0Ac\\\u20ac.txt', "escaped filename")
        if any(e.name == "forged-fields.eml" for e in emls):
            c.check("forged-fields.eml: forged header fields do not override", forged)

        def forged_urlencoded():
            body = (out / "forged-fields-urlencoded.mailgun.post").read_text()
            eq((out / "forged-fields-urlencoded.mailgun.ctype").read_text(),
               "application/x-www-form-urlencoded", "content type")
            qs = urllib.parse.parse_qs(body, keep_blank_values=True)
            for k in ["recipient", "signature", "timestamp", "token", "sender", "id"]:
                eq(len(qs[k]), 1, f"{k} once")
            for n in ["Recipient", "SIGNATURE", "timestamp", "Token", "Body-Mime", "ID",
                      "Attachment-Count", "Sender", "Recipients"]:
                assert n not in qs or n in ("timestamp",) and qs[n] == [TIMESTAMP], \
                    f"header {n} emitted"
            eq(qs["signature"], [SIGNATURE], "signature")
            eq(qs["X-Plus"], ["a+b=c&d%20e f"], "value with + = & %")
            eq(qs["X-Normal"], ["first"], "first occurrence")
            assert "X-NORMAL" not in qs, "a repeat in another case is not a field"
        if any(e.name == "forged-fields-urlencoded.eml" for e in emls):
            c.check("forged-fields-urlencoded.eml: forged header fields do not override",
                    forged_urlencoded)

        def big_is_multipart():
            eq((out / f"{big.stem}.mailgun.ctype").read_text().split(";")[0],
               "multipart/form-data", "over 100 KiB urlencoded: multipart")
        c.check("generated message over 100 KiB: multipart", big_is_multipart)
    print(f"1..{c.n}")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
