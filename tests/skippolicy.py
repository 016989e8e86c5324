"""tests/skippolicy.py — when a skipped test is acceptable (README "Tests": the skip policy).

A test that cannot run says so as a skip that meson sees (exit 77, or a TAP `ok N - ... # SKIP why`
line), never as a pass.  Under CI (the environment variable CI set to anything but "", "0",
"false", "no"; `.ci/run` sets CI=true) a skip is a failure unless its test and reason match an entry
of tests/skip-allowlist.txt, each of which says why the thing cannot run on a CI machine.  A
prerequisite the project installs itself (scripts/install-deps: swaks, openssl, node/npm, the SDK
through npm ci, the shared corpus) is never on the list.

Used by the black-box runner (tests/blackbox/runtap.py: a skip not on the list is reported as
`not ok` under CI) and by scripts/test (which counts every test: passed, failed, or skipped; under
CI a skip not on the list counts as failed, whatever the test itself reported).
"""
import fnmatch
import os
import re

ALLOWLIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "skip-allowlist.txt")


def in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class Entry:
    def __init__(self, lineno, test_glob, reason_re, why):
        self.lineno, self.test_glob, self.why = lineno, test_glob, why
        self.reason_re = re.compile(reason_re)

    def matches(self, test, reason):
        return fnmatch.fnmatchcase(test, self.test_glob) and self.reason_re.search(reason) is not None

    def __repr__(self):
        return "skip-allowlist.txt:%d (%s: /%s/)" % (self.lineno, self.test_glob, self.reason_re.pattern)


def load(path=ALLOWLIST):
    """The entries of the allow-list: lines `TEST-GLOB<TAB>REASON-REGEX<TAB>WHY`; '#' lines and
    blank lines are comments.  A malformed line (fewer than three fields, an empty WHY, a regex
    that does not compile) raises ValueError: the list must stay reviewable."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise ValueError("%s:%d: expected TEST-GLOB<TAB>REASON-REGEX<TAB>WHY" % (path, n))
            try:
                entries.append(Entry(n, parts[0].strip(), parts[1].strip(), parts[2].strip()))
            except re.error as e:
                raise ValueError("%s:%d: bad regex: %s" % (path, n, e))
    return entries


def allowed(test, reason, entries=None):
    """The allow-list entry that covers a skip of `test` (meson test name) for `reason`, or None."""
    for e in (load() if entries is None else entries):
        if e.matches(test, reason):
            return e
    return None
