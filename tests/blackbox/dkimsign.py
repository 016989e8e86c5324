"""Signs a message with Debian's python3-dkim (dkimpy): run by Debian's own python3
(/usr/bin/python3, where the package is installed), whatever python runs the tests.

  dkimsign.py SELECTOR DOMAIN KEYFILE ALGORITHM < message > signature-header

KEYFILE: a PEM RSA key for rsa-sha256, or the base64 32-byte seed for ed25519-sha256."""

import sys

import dkim


def main():
    selector, domain, keyfile, alg = sys.argv[1:5]
    msg = sys.stdin.buffer.read()
    with open(keyfile, "rb") as f:
        key = f.read()
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key, signature_algorithm=alg.encode(),
                    include_headers=[b"from", b"to", b"subject", b"message-id"])
    sys.stdout.buffer.write(sig)


main()
