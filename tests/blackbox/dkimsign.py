"""Signs a message with Debian's python3-dkim (dkimpy): run by Debian's own python3
(/usr/bin/python3, where the package is installed), whatever python runs the tests.

  dkimsign.py SELECTOR DOMAIN KEYFILE ALGORITHM [MODE] < message > signature-header

KEYFILE: a PEM RSA key for rsa-sha256, or the base64 32-byte seed for ed25519-sha256.
MODE: "expired" (t= two hours ago, x= one hour ago: signed over, so only the expiry fails), or
"length" (an l= body length tag)."""

import sys
import time

import dkim


def expire():
    """dkimpy writes no x=: add t= and x= in the past to the fields it signs."""
    gen = dkim.DKIM.gen_header

    def gen_header(self, fields, *a, **kw):
        now = int(time.time())
        fields = [f for f in fields if f[0] != b"t"]
        fields.insert(-3, (b"t", str(now - 7200).encode()))
        fields.insert(-3, (b"x", str(now - 3600).encode()))
        return gen(self, fields, *a, **kw)

    dkim.DKIM.gen_header = gen_header


def main():
    selector, domain, keyfile, alg = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else ""
    if mode == "expired":
        expire()
    msg = sys.stdin.buffer.read()
    with open(keyfile, "rb") as f:
        key = f.read()
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key, signature_algorithm=alg.encode(),
                    include_headers=[b"from", b"to", b"subject", b"message-id"], length=mode == "length")
    sys.stdout.buffer.write(sig)


main()
