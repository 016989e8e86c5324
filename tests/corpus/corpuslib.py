"""tests/corpus/corpuslib.py — where the shared mail corpus is, and the skip rule every corpus test uses.

The corpus folder is, in order: the environment variable INLET_CORPUS; the meson option `corpus`
(passed in as INLET_CORPUS_DEFAULT, already resolved to `<source root>/../shared/corpus` when the option
is empty).  The messages are `<folder>/messages/*.eml`; a folder without a `messages/` subfolder is
taken to be the messages folder itself.

When the folder is absent the test prints why and exits 77 (meson's "skipped"), unless the
environment variable CI is set (to anything but "" / "0" / "false"): then a skipped corpus is a failure.
"""
import os
import sys

SKIP = 77


def corpus_root():
    return os.environ.get("INLET_CORPUS") or os.environ.get("INLET_CORPUS_DEFAULT") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "corpus")


def in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def corpus_files(test_name):
    """Sorted absolute paths of every corpus message, or exits (77 skip / 1 in CI) when absent."""
    root = os.path.abspath(corpus_root())
    msgdir = os.path.join(root, "messages")
    if not os.path.isdir(msgdir):
        msgdir = root
    files = []
    if os.path.isdir(msgdir):
        files = sorted(os.path.join(msgdir, n) for n in os.listdir(msgdir)
                       if not n.startswith(".") and os.path.isfile(os.path.join(msgdir, n))
                       and n not in ("README.md", "MANIFEST.tsv"))
    if not files:
        why = (f"{test_name}: corpus not found at {root} (no messages in {msgdir}); "
               "set INLET_CORPUS or -Dcorpus=PATH to run it")
        if in_ci():
            print(why + " — CI is set, so a skipped corpus is a failure", flush=True)
            sys.exit(1)
        print(why + " — skipped", flush=True)
        sys.exit(SKIP)
    return files


def timeout_s(base=20.0):
    """Per-file timeout: `base` seconds, four times that under sanitizers (INLET_SANITIZED=1)."""
    return base * (4 if os.environ.get("INLET_SANITIZED") == "1" else 1)


def inlet_bin():
    b = os.environ.get("INLET_BIN")
    if not b:
        here = os.path.dirname(os.path.abspath(__file__))
        b = os.path.join(here, "..", "..", "build", "inlet")
    return b
