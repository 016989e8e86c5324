"""The official mailgun.js SDK against the real inlet: routes (issue 4: "creates with two actions,
lists, gets, updates and deletes routes"), and stored messages and events (storage_sdk.mjs:
messages.retrieveStoredEmail, messages.resendEmail, events.get with paging).

Starts inlet (tests/blackbox/harness.py), installs the SDK pinned by package-lock.json with
`npm ci` into a cache folder (INLET_SDK_DIR, by default tests/sdk/node_modules' sibling under the
build dir; reinstalled only when the lockfile changed), then runs `node routes_sdk.mjs` (and
`node storage_sdk.mjs` after storing a message sent over SMTP) with INLET_URL and INLET_API_KEY,
and prints their output.

When node or npm is missing, or the npm registry cannot be reached (a name that does not resolve, a
connection refused, reset or timed out), the test is SKIPPED (TAP `# SKIP`, meson's SKIP) with a
message saying why, unless INLET_REQUIRE_SDK=1 or CI is set, which turn that into a failure.  A
certificate error is not "unreachable": the registry answered and its certificate was refused (a
proxy or a missing CA), which is a broken set-up and always a failure.  Environment: INLET_BIN (required), INLET_SDK_DIR, INLET_SDK_NPM_TIMEOUT
(seconds, default 300)."""

import os
import re
import shutil
import subprocess
import sys
import unittest
import urllib.parse

import harness
from harness import InletTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import skippolicy  # noqa: E402  (tests/skippolicy.py)

REQUIRE = os.environ.get("INLET_REQUIRE_SDK", "") == "1" or skippolicy.in_ci()
SDK_DIR = os.environ.get("INLET_SDK_DIR") or os.path.join(HERE, "build-sdk")
NPM_TIMEOUT = int(os.environ.get("INLET_SDK_NPM_TIMEOUT", "300"))
FILES = ("package.json", "package-lock.json", ".npmrc", "routes_sdk.mjs", "storage_sdk.mjs")
# npm's words for "the registry cannot be reached" (no answer at all).  Certificate errors
# (SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, CERT_HAS_EXPIRED, ...) are not among
# them: the registry, or something in between, answered.
NETWORK_RE = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
                        r"socket hang up|getaddrinfo", re.I)
CERT_RE = re.compile(r"CERT|certificate|self.signed|SSL|TLS", re.I)


def unavailable(why):
    """Skips, or fails when INLET_REQUIRE_SDK=1."""
    msg = "mailgun.js SDK test not run: %s" % why
    if REQUIRE:
        raise AssertionError(msg + " (INLET_REQUIRE_SDK=1 makes this a failure)")
    raise unittest.SkipTest(msg)


def tool_env():
    env = harness.clean_env()
    env.setdefault("npm_config_cache", os.path.join(SDK_DIR, ".npm-cache"))
    env["npm_config_update_notifier"] = "false"
    return env


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def install():
    """Copies the package files into SDK_DIR and runs `npm ci` there unless the installed tree
    was made from the same lockfile."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            unavailable("`%s` is not installed (apt-get install nodejs npm)" % tool)
    r = subprocess.run(["node", "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    m = re.match(r"v(\d+)", r.stdout.strip())
    if r.returncode != 0 or not m or int(m.group(1)) < 18:
        unavailable("node 18 or later is needed, found %r" % r.stdout.strip())
    os.makedirs(SDK_DIR, exist_ok=True)
    for name in FILES:
        shutil.copyfile(os.path.join(HERE, name), os.path.join(SDK_DIR, name))
    lock = read(os.path.join(HERE, "package-lock.json"))
    stamp = os.path.join(SDK_DIR, "node_modules", ".inlet-lock")
    if read(stamp) == lock and os.path.isdir(os.path.join(SDK_DIR, "node_modules", "mailgun.js")):
        print("npm ci: %s is up to date with package-lock.json" % SDK_DIR)
        return
    cmd = ["npm", "ci", "--no-audit", "--no-fund"]
    print("$ (cd %s && %s)" % (SDK_DIR, " ".join(cmd)), flush=True)
    try:
        r = subprocess.run(cmd, cwd=SDK_DIR, env=tool_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=NPM_TIMEOUT)
    except subprocess.TimeoutExpired:
        unavailable("`npm ci` did not finish within %ds (registry unreachable?)" % NPM_TIMEOUT)
    print(r.stdout, flush=True)
    if r.returncode != 0:
        cert = [l for l in r.stdout.splitlines() if CERT_RE.search(l)]
        if cert:
            raise AssertionError("npm ci failed on a certificate (a broken set-up, not an unreachable "
                                 "registry): %s\n%s" % (cert[0].strip()[:300], r.stdout))
        why = [l for l in r.stdout.splitlines() if NETWORK_RE.search(l)]
        if why:
            unavailable("the npm registry cannot be reached: " + why[0].strip()[:300])
        raise AssertionError("npm ci failed (status %d):\n%s" % (r.returncode, r.stdout))
    with open(stamp, "wb") as f:
        f.write(lock)


class MailgunJs(InletTestCase):
    def test_routes_with_mailgun_js(self):
        install()
        d = self.daemon()
        env = tool_env()
        env["INLET_URL"] = "http://127.0.0.1:%d" % d.http_port
        env["INLET_API_KEY"] = d.keys()["api_key"]
        r = subprocess.run(["node", "routes_sdk.mjs"], cwd=SDK_DIR, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=harness.timeout(120))
        print("$ INLET_URL=%s INLET_API_KEY=... node routes_sdk.mjs\n%s" % (env["INLET_URL"], r.stdout),
              flush=True)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("SDK routes test: OK", r.stdout)

    def test_storage_and_events_with_mailgun_js(self):
        install()
        d = self.daemon()
        status, _, body = d.http("POST", "/v3/routes",
                                 urllib.parse.urlencode([("expression", r'match_recipient(".*@example\.com")'),
                                                         ("action", "store()")]),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)
        subject = "SDK stored message"
        message = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.com\r\nSubject: " + subject.encode() +
                   b"\r\nMessage-ID: <sdk-storage-1@sender.test>\r\nMIME-Version: 1.0\r\n"
                   b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
                   b"--b\r\nContent-Type: text/plain\r\n\r\nhello from the sdk test\r\n"
                   b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"note.txt\"\r\n\r\n"
                   b"a note\r\n--b--\r\n")
        with d.session() as s:
            code, lines = s.transaction("alice@sender.test", ["bob@example.com"], message)
            self.assertEqual(code, 250, lines)
            s.cmd("QUIT")
        msg_id = harness.queued_id(lines)
        d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("routed ") and l.kv.get("id") == msg_id,
                   10, "'engine routed id=%s'" % msg_id)
        (row,) = harness.query(d.db_path, "SELECT key FROM stored WHERE message_id = ?", (msg_id,))
        env = tool_env()
        env.update({"INLET_URL": "http://127.0.0.1:%d" % d.http_port, "INLET_API_KEY": d.keys()["api_key"],
                    "INLET_DOMAIN": "example.com", "INLET_STORAGE_KEY": row["key"], "INLET_MESSAGE_ID": msg_id,
                    "INLET_HEADER_ID": "sdk-storage-1@sender.test", "INLET_SUBJECT": subject,
                    "INLET_RECIPIENT": "bob@example.com", "INLET_SENDER": "alice@sender.test"})
        r = subprocess.run(["node", "storage_sdk.mjs"], cwd=SDK_DIR, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=harness.timeout(120))
        print("$ INLET_URL=%s ... node storage_sdk.mjs\n%s" % (env["INLET_URL"], r.stdout), flush=True)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("SDK storage test: OK", r.stdout)


if __name__ == "__main__":
    harness.main()
