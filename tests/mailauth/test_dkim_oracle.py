"""Differential test of inlet's DKIM verifier against libopendkim (tests/mailauth/dkim_oracle.c).

  test_dkim_oracle.py DKIM_ORACLE_BINARY

Makes keys (RSA 2048 and 1024, ed25519) and their key records, then signs messages with Debian's
python3-dkim (run by /usr/bin/python3, where it is installed) over every canonicalization, both
algorithms, with and without l=, with over-signed fields, several signatures, x=/t=, and mutates
them (bodies and fields altered, blanks added, line ends changed to LF, fields added, removed,
renamed, b=/bh= damaged, tags broken, keys missing, revoked, of the wrong type, refusing the hash or
the subdomain, a lookup that fails).  dkim-oracle verifies each with both and must see the same
verdicts; this script also checks that the verdicts are varied (so that "everything permerror"
cannot pass) and that some expected ones hold.  Then, in a run of their own, 310 messages signed by
300 ed25519 keys of their own (more than the decoded-key cache holds): every one passes, also
after its key was evicted, and the cache ends holding exactly its bound."""

import base64
import os
import random
import subprocess
import sys
import tempfile
import time

SIGNER_PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def openssl(*args, data=None):
    return subprocess.run(["openssl"] + list(args), input=data, capture_output=True, check=True).stdout


def make_keys(d):
    keys, records = {}, {}
    for name, bits in (("rsa", 2048), ("rsa1k", 1024)):
        path = os.path.join(d, name + ".pem")
        with open(path, "wb") as f:
            f.write(openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:%d" % bits))
        keys[name] = path
        records[name] = base64.b64encode(openssl("pkey", "-in", path, "-pubout", "-outform", "DER")).decode()
    der = openssl("genpkey", "-algorithm", "ed25519", "-outform", "DER")
    keys["ed"] = os.path.join(d, "ed.seed")
    with open(keys["ed"], "wb") as f:
        f.write(base64.b64encode(der[-32:]))
    pub = openssl("pkey", "-inform", "DER", "-pubout", "-outform", "DER", data=der)
    records["ed"] = base64.b64encode(pub[-32:]).decode()
    return keys, records


def key_table(records):
    """Selectors of o.example: sel -> its key record."""
    rsa, rsa1k, ed = records["rsa"], records["rsa1k"], records["ed"]
    return {
        "rsa": "v=DKIM1; k=rsa; p=" + rsa,
        "rsa1k": "v=DKIM1; p=" + rsa1k,
        "ed": "v=DKIM1; k=ed25519; p=" + ed,
        "folded": "v=DKIM1; k=rsa; t=y; p=" + rsa[:60] + " " + rsa[60:],
        "sha1only": "v=DKIM1; k=rsa; h=sha1; p=" + rsa,
        "sha256ok": "v=DKIM1; k=rsa; h=sha1:sha256; s=email; p=" + rsa,
        "strict": "v=DKIM1; k=rsa; t=s; p=" + rsa,
        "revoked": "v=DKIM1; k=rsa; p=",
        "wrongtype": "v=DKIM1; k=rsa; p=" + ed,
        "edasrsa": "v=DKIM1; k=ed25519; p=" + rsa,
        "badversion": "v=DKIM2; k=rsa; p=" + rsa,
        "unknownk": "v=DKIM1; k=dsa; p=" + rsa,
        "notemail": "v=DKIM1; k=rsa; s=tlsrpt; p=" + rsa,
        "garbage": "v=DKIM1; k=rsa; p=" + rsa[:40] + "!!" + rsa[42:],
        "temp": "-temp",
    }


GEN = r'''
import base64, os, random, sys, time
import dkim

out, seed = sys.argv[1], int(sys.argv[2])
keys = dict(a.split("=", 1) for a in sys.argv[3:])
rnd = random.Random(seed)
gen = dkim.DKIM.gen_header
extra_tags = []

def gen_header(self, fields, *a, **kw):
    fields = [f for f in fields if f[0] not in [t[0] for t in extra_tags]] if extra_tags else fields
    for t in extra_tags:
        fields.insert(-3, t)
    return gen(self, fields, *a, **kw)
dkim.DKIM.gen_header = gen_header

def key_for(sel):
    if sel == "ed":
        return keys["ed"], b"ed25519-sha256"
    if sel == "rsa1k":
        return keys["rsa1k"], b"rsa-sha256"
    return keys["rsa"], b"rsa-sha256"

def sign(msg, sel, canon, include, length=False, alg=None, identity=None, tags=()):
    path, a = key_for(sel)
    with open(path, "rb") as f:
        key = f.read()
    extra_tags[:] = list(tags)
    try:
        return dkim.sign(msg, sel.encode(), b"o.example", key, identity=identity, canonicalize=canon,
                         signature_algorithm=alg or a, include_headers=include, length=length)
    finally:
        extra_tags[:] = []

BODIES = [
    b"Hello,\r\n\r\nthe body.\r\n",
    b"",
    b"\r\n\r\n\r\n",
    b"no final line end",
    b"  leading\tand  inner   blanks  \r\n\ttabbed line\t\r\n\r\n\r\n",
    b"".join(b"line %d of a longer body with some words\r\n" % i for i in range(200)),
    b"dots\r\n.\r\n..\r\nend\r\n \r\n",
]
HEADS = [
    b"From: Alice <a@o.example>\r\nTo: bob@example.com\r\nSubject: hello there\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@o.example>\r\n",
    b"Received: by relay\r\nFrom:   a@o.example  \r\nTo: bob@example.com,\r\n\tcarol@example.com\r\nSubject:  folded\r\n  subject\twith  blanks \r\nX-Extra: x\r\n",
    b"from: a@o.example\r\nSUBJECT: upper\r\nTo: b@example.com\r\nTo: c@example.com\r\n",
]
CANONS = [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple"), (b"simple", b"relaxed")]
INCLUDES = [None, [b"from", b"to", b"subject"], [b"from", b"from", b"subject", b"subject", b"to", b"x-missing"]]

def mutations(signed, body):
    yield "none", signed
    yield "body-char", signed.replace(b"the body", b"the b0dy") if b"the body" in signed else signed + b"x"
    yield "trailing-blank-lines", signed + b"\r\n\r\n"
    yield "blanks-at-line-ends", signed.replace(b"\r\n", b" \r\n")[: len(signed) + 20] if False else \
        signed[: signed.index(b"\r\n\r\n") + 4] + body.replace(b"\r\n", b"  \r\n")
    yield "inner-blanks", signed[: signed.index(b"\r\n\r\n") + 4] + body.replace(b" ", b"  ")
    yield "appended", signed + b"Appended by a list.\r\n"
    yield "lf-only", signed.replace(b"\r\n", b"\n")
    yield "subject-value", signed.replace(b"Subject: hello", b"Subject: hellO").replace(b"Subject:  folded", b"Subject:  Folded")
    yield "subject-name-case", signed.replace(b"Subject:", b"SuBjEcT:")
    yield "subject-refolded", signed.replace(b"Subject: hello there", b"Subject: hello\r\n there")
    yield "from-prepended", b"From: evil@example.net\r\n" + signed
    yield "subject-added", signed.replace(b"\r\n\r\n", b"\r\nSubject: second\r\n", 1)
    yield "unsigned-added", b"X-Added: yes\r\n" + signed
    yield "to-removed", signed.replace(b"To: bob@example.com\r\n", b"")
    yield "sig-name-case", signed.replace(b"DKIM-Signature:", b"dkim-signature:", 1)
    i = signed.index(b" b=") + 3
    flip = b"A" if signed[i + 5:i + 6] != b"A" else b"B"
    yield "b-damaged", signed[: i + 5] + flip + signed[i + 6:]
    i = signed.index(b"bh=") + 3
    flip = b"A" if signed[i + 2:i + 3] != b"A" else b"B"
    yield "bh-damaged", signed[: i + 2] + flip + signed[i + 3:]
    yield "v2", signed.replace(b"v=1;", b"v=2;", 1)
    yield "a-unknown", signed.replace(b"a=rsa-sha256", b"a=rsa-sha512", 1).replace(b"a=ed25519-sha256", b"a=ed448-sha256", 1)
    yield "c-unknown", signed.replace(b"c=relaxed/", b"c=loose/", 1).replace(b"c=simple/", b"c=loose/", 1)
    yield "dup-tag", signed.replace(b"v=1;", b"v=1; v=1;", 1)
    yield "no-d", signed.replace(b" d=o.example;", b"", 1)
    yield "unknown-tag", signed.replace(b"v=1;", b"v=1; zz=whatever;", 1)

n = 0
def write(name, data):
    global n
    n += 1
    with open(os.path.join(out, "%04d-%s.eml" % (n, name)), "wb") as f:
        f.write(data)

for hi, head in enumerate(HEADS):
    for bi, body in enumerate(BODIES):
        msg = head + b"\r\n" + body
        canon = CANONS[(hi + bi) % len(CANONS)]
        include = INCLUDES[(hi * 7 + bi) % len(INCLUDES)]
        for sel in ("rsa", "ed") if bi % 2 == 0 else ("rsa", "rsa1k"):
            signed = sign(msg, sel, canon, include, length=(bi == 5)) + msg
            for name, m in mutations(signed, body):
                write("h%d-b%d-%s-%s-%s" % (hi, bi, sel, b"-".join(canon).decode(), name), m)
# Every canonicalization over the first message, plain and mutated by blanks.
msg = HEADS[1] + b"\r\n" + BODIES[4]
for canon in CANONS:
    for length in (False, True):
        signed = sign(msg, "rsa", canon, None, length=length) + msg
        for name, m in mutations(signed, BODIES[4]):
            write("canon-%s-l%d-%s" % (b"-".join(canon).decode(), length, name), m)
# Keys: each selector of the table, signed with the RSA key (ed25519 for "ed").
msg = HEADS[0] + b"\r\n" + BODIES[0]
for sel in ("folded", "sha1only", "sha256ok", "strict", "revoked", "wrongtype", "edasrsa", "badversion",
            "unknownk", "notemail", "garbage", "temp", "nokey"):
    write("key-" + sel, sign(msg, sel, CANONS[1], None) + msg)
write("key-strict-subdomain", sign(msg, "strict", CANONS[1], None, identity=b"@sub.o.example") + msg)
write("key-strict-same", sign(msg, "strict", CANONS[1], None, identity=b"a@o.example") + msg)
write("identity-sub", sign(msg, "rsa", CANONS[1], None, identity=b"@sub.o.example") + msg)
write("identity-outside", sign(msg, "rsa", CANONS[1], None, identity=b"@sub.o.example").replace(b"i=@sub.o.example", b"i=@example.net") + msg)
write("key-ed-for-rsa-sig", sign(msg, "rsa", CANONS[1], None).replace(b"s=rsa;", b"s=ed;") + msg)
# Times.
now = int(time.time())
write("expired", sign(msg, "rsa", CANONS[1], None, tags=[(b"t", b"%d" % (now - 7200)), (b"x", b"%d" % (now - 3600))]) + msg)
write("not-expired", sign(msg, "rsa", CANONS[1], None, tags=[(b"t", b"%d" % (now - 60)), (b"x", b"%d" % (now + 3600))]) + msg)
write("future", sign(msg, "rsa", CANONS[1], None, tags=[(b"t", b"%d" % (now + 7200))]) + msg)
write("x-before-t", sign(msg, "rsa", CANONS[1], None, tags=[(b"t", b"%d" % (now - 60)), (b"x", b"%d" % (now - 120))]) + msg)
# Several signatures: good + damaged, two algorithms.
s1 = sign(msg, "rsa", CANONS[0], None)
s2 = sign(msg, "ed", CANONS[1], None)
write("two-good", s1 + s2 + msg)
write("two-one-bad", s1 + s2.replace(b"bh=", b"bh=AA", 1) + msg)
write("two-one-nokey", sign(msg, "nokey", CANONS[1], None) + s1 + msg)
# Several signatures asking for the same body hash (inlet computes it once per message).
r1, e1 = sign(msg, "rsa", CANONS[1], None), sign(msg, "ed", CANONS[1], None)
write("same-body-hash", r1 + e1 + msg)
write("same-body-hash-one-bad", r1 + e1.replace(b"bh=", b"bh=AA", 1) + msg)
write("same-body-hash-altered", r1 + e1 + msg.replace(b"the body", b"the b0dy"))
write("same-canon-l-and-not", sign(msg, "rsa", CANONS[1], None, length=True) + e1 + msg + b"Appended.\r\n")
write("same-canon-not-and-l", e1 + sign(msg, "rsa", CANONS[1], None, length=True) + msg + b"Appended.\r\n")
# rsa-sha1 (RFC 8301 deprecates it; both verifiers still read it).
write("rsa-sha1", sign(msg, "rsa", CANONS[1], None, alg=b"rsa-sha1") + msg)
write("rsa-sha1-sha1only", sign(msg, "sha1only", CANONS[1], None, alg=b"rsa-sha1") + msg)
# Past the key cache's bound (MAILAUTH_DKIM_KEYS_MAX): an ed25519 key of its own for each of
# `many` selectors m0, m1, ..., each signing one message, then m0-m9 again (evicted by then, the
# least recently used): every one must still pass, in both passes of dkim-oracle.
import nacl.signing
many = int(keys["many"])
seeds = []
with open(keys["table"], "a") as t:
    for i in range(many):
        sk = nacl.signing.SigningKey.generate()
        seeds.append(base64.b64encode(bytes(sk)))
        t.write("m%d._domainkey.o.example\tv=DKIM1; k=ed25519; p=%s\n" % (i, base64.b64encode(bytes(sk.verify_key)).decode()))
for i in list(range(many)) + list(range(10)):
    m = HEADS[0] + b"\r\n" + BODIES[0]
    write("many-m%d" % i, dkim.sign(m, b"m%d" % i, b"o.example", seeds[i], signature_algorithm=b"ed25519-sha256") + m)
'''


# Where inlet's verifier knowingly differs from libopendkim (file name ending -> our verdict):
# - a tag twice in the signature: RFC 6376 §3.2 makes the whole tag-list invalid (permerror);
#   libopendkim reads it and fails the hash;
# - a key record of type ed25519 for an rsa-sha256 signature: §3.6.1 k= names the key type, and
#   the types differ (permerror); libopendkim ignores k= for RSA signatures and passes;
# - a key lookup that fails: libopendkim then lists no signature at all (inlet's old code turned
#   that into temperror, as inlet does now).
KNOWN = {"-dup-tag": "permerror", "key-edasrsa": "permerror", "key-temp": "temperror"}

# Selectors with a key of their own, more than mailauth/dkim.c's cache holds (MAILAUTH_DKIM_KEYS_MAX).
MANY_KEYS = 300


def many_keys(oracle, keys, files):
    """The messages of the many keys, in a run of their own: all pass, in both of dkim-oracle's
    passes and with libopendkim, and the key cache ends full, and no fuller."""
    r = subprocess.run([oracle, keys] + files, capture_output=True, text=True, timeout=300)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    summary = (r.stdout.strip().splitlines() or [""])[-1]
    kv = dict(p.split("=", 1) for p in summary.split() if "=" in p)
    bound = int(kv.get("cached_keys_max", "0"))
    ok = r.returncode == 0 and len(files) == MANY_KEYS + 10 and kv.get("pass") == str(len(files))
    if not ok:
        print("many keys: want %d messages, all pass, no mismatch" % (MANY_KEYS + 10))
    if not 0 < bound < MANY_KEYS or kv.get("cached_keys") != str(bound):
        print("many keys: the key cache holds %s keys, want its bound %d" % (kv.get("cached_keys"), bound))
        ok = False
    return ok


def main():
    oracle = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="inlet-dkim-oracle-") as d:
        keys, records = make_keys(d)
        table = key_table(records)
        with open(os.path.join(d, "keys"), "w") as f:
            for sel, rec in table.items():
                f.write("%s._domainkey.o.example\t%s\n" % (sel, rec))
        out = os.path.join(d, "msgs")
        os.mkdir(out)
        gen = os.path.join(d, "gen.py")
        with open(gen, "w") as f:
            f.write(GEN)
        keys["table"] = os.path.join(d, "keys")
        keys["many"] = str(MANY_KEYS)
        subprocess.run([SIGNER_PY, gen, out, "1"] + ["%s=%s" % kv for kv in keys.items()], check=True)
        files = sorted(os.path.join(out, n) for n in os.listdir(out))
        many = [f for f in files if "-many-m" in f]
        files = [f for f in files if f not in many]
        r = subprocess.run([oracle, os.path.join(d, "keys")] + files, capture_output=True, text=True, timeout=300)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        lines = r.stdout.strip().splitlines()
        summary = lines[-1] if lines else ""
        kv = dict(p.split("=", 1) for p in summary.split() if "=" in p)
        ok = r.returncode in (0, 1) and summary.startswith("messages=")
        known = 0
        for line in lines[:-1]:
            name = os.path.basename(line.split()[1].rstrip(":"))[:-len(".eml")]
            ours = line.split()[2].split("(")[0]
            want = [v for k, v in KNOWN.items() if name.endswith(k)]
            if want and ours == "ours=" + want[0]:
                known += 1
            else:
                print("unexpected disagreement: " + line)
                ok = False
        print("known disagreements=%d" % known)
        # Varied verdicts: a verifier that always says the same cannot pass.
        for verdict, least in (("pass", 100), ("fail", 100), ("permerror", 20), ("temperror", 1)):
            if int(kv.get(verdict, "0")) < least:
                print("too few %s verdicts: %s (want >= %d)" % (verdict, kv.get(verdict), least))
                ok = False
        if int(kv.get("cached_keys", "0")) < 3:
            print("the key cache kept fewer than 3 keys")
            ok = False
        ok = many_keys(oracle, os.path.join(d, "keys"), many) and ok
        print("files=%d" % len(files))
        return 0 if ok else 1


sys.exit(main())
