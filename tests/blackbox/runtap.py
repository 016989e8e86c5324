"""Runs one unittest file and reports every test to meson as TAP (protocol 'tap'), so that a
skipped test is a skip meson counts, never a pass.

    python3 runtap.py test_x.py        (what tests/blackbox/meson.build runs)
    python3 runtap.py test_x.py NAME.. only the tests whose id contains a NAME (a glob when it
                                       has * or ?), e.g. `meson test bb-deliveries --test-args
                                       Retries` (tests/mutants/run uses this)
    python3 test_x.py                  (harness.main(): the same runner on the file itself)

stdout carries only TAP: `ok N - id`, `not ok N - id`, `ok N - id # SKIP reason`, then `1..N`
(`1..0 # SKIP ...` when the file has no test).  Everything else the tests print, and unittest's
verbose report with tracebacks, goes to stderr (file descriptor 1 is pointed at 2, so child
processes' output goes there too).

The skip policy (tests/skippolicy.py): under CI a skip whose reason is not on
tests/skip-allowlist.txt for this test (INLET_TEST_NAME, else the file's name) is reported as
`not ok`: the test fails and says why.  Exit status 1 when any test failed, else 0.
"""
import importlib.util
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import skippolicy  # noqa: E402  (tests/skippolicy.py)


def one_line(text):
    return " ".join(str(text).split()) or "(no reason given)"


class TapResult(unittest.TextTestResult):
    tap = None          # the TAP stream (set by run())
    test_name = ""      # meson test name, for the allow-list

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.n = 0
        self.bad_skips = []
        self._subfail = set()

    def _emit(self, ok, test, directive=""):
        self.n += 1
        line = "%s %d - %s" % ("ok" if ok else "not ok", self.n, one_line(test.id()).replace("#", "-"))
        self.tap.write(line + (" # " + directive if directive else "") + "\n")
        self.tap.flush()

    def addSuccess(self, test):
        super().addSuccess(test)
        if test.id() not in self._subfail:
            self._emit(True, test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._emit(False, test)

    def addError(self, test, err):
        super().addError(test, err)
        self._emit(False, test)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None and test.id() not in self._subfail:
            self._subfail.add(test.id())
            self._emit(False, subtest)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._emit(True, test, "TODO expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._emit(False, test, "TODO unexpected success")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        reason = one_line(reason)
        if skippolicy.in_ci() and not skippolicy.allowed(self.test_name, reason):
            self.bad_skips.append((test.id(), reason))
            self.stream.write("\nSKIP UNDER CI IS A FAILURE: %s: %s (not on tests/skip-allowlist.txt for %s)\n"
                              % (test.id(), reason, self.test_name))
            self.n += 1
            self.tap.write("not ok %d - %s: skipped under CI, reason not on tests/skip-allowlist.txt: %s\n"
                           % (self.n, test.id(), reason.replace("#", "-")))
            self.tap.flush()
            return
        self._emit(True, test, "SKIP " + reason)

    def wasSuccessful(self):
        return super().wasSuccessful() and not self.bad_skips and not self._subfail


def run(suite, test_name):
    """Runs `suite` with TAP on the real stdout; returns the process exit status."""
    sys.stdout.flush()
    tap = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    TapResult.tap, TapResult.test_name = tap, test_name
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=TapResult)
    result = runner.run(suite)
    if result.n == 0:
        tap.write("1..0 # SKIP %s: no test ran\n" % test_name)
    else:
        tap.write("1..%d\n" % result.n)
    tap.flush()
    return 0 if result.wasSuccessful() else 1


def run_module(module, test_name=None, only=()):
    name = test_name or os.environ.get("INLET_TEST_NAME") or \
        os.path.splitext(os.path.basename(getattr(module, "__file__", "test")))[0]
    loader = unittest.TestLoader()
    if only:
        loader.testNamePatterns = [p if "*" in p or "?" in p else "*%s*" % p for p in only]
    suite = loader.loadTestsFromModule(module)
    return run(suite, name)


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: runtap.py TEST_FILE.py [NAME...]\n")
        return 2
    path = os.path.abspath(argv[1])
    sys.path.insert(0, os.path.dirname(path))
    modname = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return run_module(module, only=argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
