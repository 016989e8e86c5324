"""Black-box harness: runs the real `inlet` binary and talks to it.

Standard library only.  Environment:
  INLET_BIN         path of the binary (required)
  INLET_SHIM        path of libsyncshim.so (tests that need it skip when it is unset, and fail
                    when it names no file: a wrong path is a broken set-up, not a reason to skip)
  INLET_SANITIZED   "1": the binary is built with sanitizers, every wait is longer
  INLET_BB_VERBOSE  "1": print the daemon's log after every test, not only after failures
  INLET_BB_TMPDIR   where temporary data dirs go (default: the system's temp dir)
  INLET_TEST_BACKEND  "sqlite" (default) or "postgres": the database every daemon gets
  INLET_TEST_PG_URL   postgres: the cluster's base URL (scripts/pg-test-cluster start prints it,
                      with PGPASSFILE); without it this process starts a private cluster through
                      INLET_PG_CLUSTER (the script's path) and stops it when it exits

Ports: no port number is ever chosen before its server binds it.  Every daemon listens on port 0
and the ports it got are read back from its log (`smtp listening addr=...`, `http listening
addr=...`: Daemon.smtp_port, .http_port, .smtp_addrs, .http_addrs); receivers (receivers.py) bind
port 0 too; a test that needs a port nobody listens on holds one (InletTestCase.hold_port()).

Every daemon is started with a fresh temporary data dir, SMTP and HTTP on 127.0.0.1 port 0,
`--domain example.com`, `--hostname mx.inlet.test` and `--reject-unrouted no` unless the test
says otherwise.  With the postgres backend every daemon also gets `--database` naming a database
made for it (CREATE DATABASE, dropped when the test ends; daemons of one test that share a data
dir share it).  Tests read the database through Daemon.query() / query(daemon, ...), which speaks
to either backend.  Every daemon is stopped by its PID when the test ends, whatever happened;
every wait is bounded.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

INLET_BIN = os.environ.get("INLET_BIN", "")
INLET_SHIM = os.environ.get("INLET_SHIM", "")
SANITIZED = os.environ.get("INLET_SANITIZED", "") == "1"
VERBOSE = os.environ.get("INLET_BB_VERBOSE", "") == "1"
# Every timeout is multiplied by this: sanitizer builds are several times slower.
SLOW = 4.0 if SANITIZED else 1.0

BACKEND = os.environ.get("INLET_TEST_BACKEND", "") or "sqlite"
if BACKEND not in ("sqlite", "postgres"):
    raise SystemExit("INLET_TEST_BACKEND=%s: expected sqlite or postgres" % BACKEND)
PG = BACKEND == "postgres"

HOSTNAME = "mx.inlet.test"
ID_RE = re.compile(r"^[0-9a-f]{24}$")
QUEUED_RE = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9a-f]{24})$")

LOG_LINE_RE = re.compile(r"^(\S+) (error|warn|info|debug) (\S+)(?: (.*))?$")
KV_RE = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def timeout(seconds):
    return seconds * SLOW


def parse_kv(text):
    out = {}
    for k, v in KV_RE.findall(text or ""):
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = v[1:-1]
        out[k] = v
    return out


class LogLine:
    def __init__(self, raw):
        self.raw = raw
        m = LOG_LINE_RE.match(raw)
        if m:
            self.time, self.level, self.topic, rest = m.group(1), m.group(2), m.group(3), m.group(4) or ""
            self.rest = rest
            self.kv = parse_kv(rest)
            self.ok = True
        else:
            self.time = self.level = self.topic = self.rest = ""
            self.kv = {}
            self.ok = False

    def __repr__(self):
        return "LogLine(%r)" % self.raw


class HeldPort:
    """A TCP port nobody listens on, held for as long as this object lives: a socket bound to
    (host, 0) that never listens, so connections to it are refused and no other socket (client or
    server) can be given the port.  Tests get one from InletTestCase.hold_port() (closed at the
    test's end); a receiver can take it over with `sock=held.take()`."""

    def __init__(self, host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            self.sock.bind((host, 0))
        except OSError:
            self.sock.close()
            raise
        self.host, self.port = self.sock.getsockname()[:2]

    def take(self):
        """Hands the bound socket over (to a server that will listen on it); no longer closed here."""
        sock, self.sock = self.sock, None
        assert sock is not None, "port already handed over"
        return sock

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def split_addr(addr):
    """'127.0.0.1:25' or '[::1]:25' -> (host, port)."""
    m = re.match(r"^\[(.*)\]:(\d+)$", addr)
    if m:
        return m.group(1), int(m.group(2))
    host, _, port = addr.rpartition(":")
    return host, int(port)


def run_cli(args, env=None, timeout_s=20, cwd=None):
    """Runs `inlet ARGS` to completion; returns CompletedProcess (text, stdout/stderr captured)."""
    return subprocess.run([INLET_BIN] + list(args), env=inlet_env(env), cwd=cwd,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout(timeout_s), text=True, errors="replace")


def clean_env(extra=None):
    """The test's environment without any INLET_* variable (the binary would read them as
    settings) and without a stray LD_PRELOAD, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INLET_") and k != "LD_PRELOAD"}
    if extra:
        env.update(extra)
    return env


def inlet_env(extra=None):
    """clean_env for the inlet binary itself, with glibc's resolver bounded to one try of one
    second (RES_OPTIONS).  Routes in the tests forward to names that do not exist (hooks.test, ...),
    and libcurl resolves them with getaddrinfo through the machine's resolver; when that drops a
    query glibc waits 5 s, twice, and a stop waits for the delivery in flight, so the daemon outlived
    the harness's stop_timeout now and then (bb-pipeline's Outcome, about one stop in three on a
    lossy resolver).  inlet never needs an answer from that resolver in a test: a name it must reach
    is 127.0.0.1 or the test's own DNS server.  (Not for npm and the other tools: they do.)"""
    env = clean_env(extra)
    env.setdefault("RES_OPTIONS", "timeout:1 attempts:1")
    return env


# ---------------------------------------------------------------------------------------------
class Daemon:
    """One `inlet serve` process.  Create it through InletTestCase.daemon() so it is cleaned up."""

    def __init__(self, workdir, args=None, env=None, domains=("example.com",), defaults=True,
                 shim=False, shim_enospc=None, data_dir=None, umask=None, log_level=None,
                 database_url=None, shim_hold=None):
        self.workdir = workdir
        self.data_dir = data_dir or os.path.join(workdir, "data")
        # --database of this daemon: the postgres backend's database made for it, or a test's
        # sqlite:PATH ("" or None: <data-dir>/inlet.db)
        self.database_url = database_url
        self.extra_args = list(args or [])
        self.extra_env = dict(env or {})
        self.domains = list(domains or [])
        self.defaults = defaults
        self.shim = shim
        self.shim_log = os.path.join(workdir, "shim.log") if shim else None
        self.shim_enospc = shim_enospc
        self.shim_hold = shim_hold  # INLET_SHIM_HOLD: syncs of the data dir wait while it exists
        self.umask = umask
        self.log_level = log_level
        self.proc = None
        self.logs = []       # every log file this daemon wrote, in order
        self.log_path = None
        self.smtp_addrs = []
        self.http_addrs = []
        self.starts = 0
        self.returncode = None

    # -- command line ------------------------------------------------------------------------
    def argv(self):
        a = [INLET_BIN, "serve"]
        if self.defaults:
            a += ["--smtp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                  "--data-dir", self.data_dir, "--hostname", HOSTNAME]
            for d in self.domains:
                a += ["--domain", d]
        # Also with defaults=False: tests that send to hosted recipients need no route then; a test
        # of the RCPT check gives --reject-unrouted (or INLET_REJECT_UNROUTED) itself.
        if "INLET_REJECT_UNROUTED" not in self.extra_env and not any(
                x == "--reject-unrouted" or x.startswith("--reject-unrouted=") for x in self.extra_args):
            a += ["--reject-unrouted", "no"]
        if self.log_level:
            a += ["--log-level", self.log_level]
        return a + self.store_args(data_dir=False) + self.extra_args

    def store_args(self, data_dir=True):
        """The options that name this daemon's database, for `inlet keys`, `inlet backup`, ...:
        --data-dir (unless data_dir=False), and --database with the postgres backend unless the
        test chose a database itself."""
        a = ["--data-dir", self.data_dir] if data_dir else []
        chosen = "INLET_DATABASE" in self.extra_env or any(
            x == "--database" or x.startswith("--database=") for x in self.extra_args)
        if self.database_url and not chosen:
            a += ["--database", self.database_url]
        return a

    def environ(self):
        env = inlet_env(self.extra_env)
        if self.shim:
            if not INLET_SHIM:
                raise unittest.SkipTest("INLET_SHIM is not set: cannot preload the sync shim")
            if not os.path.isfile(INLET_SHIM):
                raise AssertionError("INLET_SHIM=%s is not a file: cannot preload the sync shim" % INLET_SHIM)
            env["LD_PRELOAD"] = INLET_SHIM
            env["INLET_SHIM_LOG"] = self.shim_log
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            env["INLET_SHIM_DATADIR"] = os.path.realpath(self.data_dir)
            if self.shim_enospc:
                env["INLET_SHIM_ENOSPC"] = self.shim_enospc
            if self.shim_hold:
                env["INLET_SHIM_HOLD"] = self.shim_hold
            asan = env.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
        return env

    # -- life cycle -----------------------------------------------------------------------------
    def spawn(self):
        """Starts the process without waiting for anything."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.starts += 1
        self.log_path = os.path.join(self.workdir, "inlet.%d.log" % self.starts)
        self.logs.append(self.log_path)
        self.smtp_addrs, self.http_addrs = [], []
        self.returncode = None
        logf = open(self.log_path, "wb")
        umask = self.umask

        def pre():
            if umask is not None:
                os.umask(umask)

        try:
            self.proc = subprocess.Popen(self.argv(), env=self.environ(), cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         preexec_fn=pre if umask is not None else None)
        finally:
            logf.close()
        return self

    def start(self, ready_timeout=10):
        """Starts and waits (bounded) for `engine ready`; fails with the log otherwise."""
        self.spawn()
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, ready_timeout=10):
        line = self.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("ready"),
                             ready_timeout, what="'engine ready'")
        assert line is not None
        for l in self.lines():
            if l.level == "info" and l.topic == "smtp" and l.rest.startswith("listening"):
                self.smtp_addrs.append(split_addr(l.kv["addr"]))
            if l.level == "info" and l.topic == "http" and l.rest.startswith("listening"):
                self.http_addrs.append(split_addr(l.kv["addr"]))
        if not self.smtp_addrs:
            raise AssertionError("no 'smtp listening addr=' line before 'engine ready'\n" + self.log_text())
        return self

    def expect_exit(self, exit_timeout=10):
        """Waits (bounded) for the process to exit on its own; returns the exit status."""
        try:
            self.returncode = self.proc.wait(timeout(exit_timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError("inlet did not exit within %ss\n%s" % (exit_timeout, self.log_text()))
        return self.returncode

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if self.running():
            os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, stop_timeout=10):
        """SIGTERM (or sig), bounded wait, then SIGKILL.  Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
                self.returncode = self.proc.wait(timeout(stop_timeout))
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError("inlet ignored signal %d for %ss\n%s" % (sig, stop_timeout, self.log_text()))
            except ProcessLookupError:
                self.returncode = self.proc.wait(timeout(5))
        else:
            self.returncode = self.proc.returncode
        return self.returncode

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout(10))
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self.returncode = self.proc.returncode

    def restart(self, ready_timeout=10):
        """Starts again on the same data dir (after stop() or kill9())."""
        if self.running():
            self.stop()
        return self.start(ready_timeout)

    # -- addresses ------------------------------------------------------------------------------
    @property
    def smtp_port(self):
        return self.smtp_addrs[0][1]

    @property
    def smtp_host(self):
        return self.smtp_addrs[0][0]

    @property
    def http_port(self):
        return self.http_addrs[0][1]

    @property
    def db_path(self):
        return os.path.join(self.data_dir, "inlet.db")

    @property
    def sqlite_path(self):
        """The SQLite file this daemon uses: --database sqlite:PATH when the test gave it as
        database_url, else <data-dir>/inlet.db."""
        if self.database_url and self.database_url.startswith("sqlite:"):
            return self.database_url[len("sqlite:"):]
        return self.db_path

    # -- log ------------------------------------------------------------------------------------
    def log_text(self, path=None):
        try:
            with open(path or self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def lines(self, path=None):
        return [LogLine(l) for l in self.log_text(path).splitlines()]

    def all_log_text(self):
        return "".join("==== %s\n%s" % (p, self.log_text(p)) for p in self.logs)

    def wait_log(self, pred, wait_s=10, what="log line", after=0):
        """Waits (bounded) until a log line (index >= after) satisfies pred; returns it.  Fails
        when the process exits first or the time is up."""
        deadline = time.monotonic() + timeout(wait_s)
        while True:
            lines = self.lines()
            for l in lines[after:]:
                if pred(l):
                    return l
            if self.proc.poll() is not None:
                # One last read: the line may have been written right before exiting.
                for l in self.lines()[after:]:
                    if pred(l):
                        return l
                raise AssertionError("inlet exited (status %s) before %s\n%s"
                                     % (self.proc.returncode, what, self.log_text()))
            if time.monotonic() > deadline:
                raise AssertionError("no %s within %ss\n%s" % (what, wait_s, self.log_text()))
            time.sleep(0.02)

    def find_lines(self, level=None, topic=None, startswith=None):
        out = []
        for l in self.lines():
            if level and l.level != level:
                continue
            if topic and l.topic != topic:
                continue
            if startswith and not l.rest.startswith(startswith):
                continue
            out.append(l)
        return out

    # -- shim ------------------------------------------------------------------------------------
    def shim_events(self):
        events = []
        if not self.shim_log or not os.path.exists(self.shim_log):
            return events
        with open(self.shim_log, "rb") as f:
            for raw in f.read().decode("latin-1").splitlines():
                parts = raw.split(" ")
                if len(parts) < 3 or not parts[0].isdigit():
                    continue
                ev = {"seq": int(parts[0]), "kind": parts[1]}
                for p in parts[2:]:
                    k, _, v = p.partition("=")
                    ev[k] = v
                for k in ("fd", "rc", "tid"):
                    if k in ev:
                        ev[k] = int(ev[k])
                for k in ("tail", "head"):
                    if k in ev:
                        ev[k] = unescape(ev[k])
                events.append(ev)
        events.sort(key=lambda e: e["seq"])
        return events

    # -- clients --------------------------------------------------------------------------------
    def session(self, read_greeting=True, addr_index=0, source=None, sock_timeout=10):
        host, port = self.smtp_addrs[addr_index]
        s = RawSession(host, port, sock_timeout, source=source)
        if read_greeting:
            code, lines = s.reply()
            assert code == 220, "greeting %r" % lines
        return s

    def smtp(self, addr_index=0, smtp_timeout=10):
        import smtplib
        host, port = self.smtp_addrs[addr_index]
        return smtplib.SMTP(host, port, local_hostname="client.example.test", timeout=timeout(smtp_timeout))

    def db(self):
        """A sqlite3 connection to the daemon's SQLite file (SQLite backend only)."""
        return open_db(self.db_path)

    def query(self, sql, params=()):
        """Rows of `sql` (SQLite's `?` placeholders) on this daemon's database, either backend.
        Each row reads by index or by column name; blobs come back as bytes."""
        if self.database_url and not self.database_url.startswith("sqlite:"):
            return pg_query(self.database_url, sql, params)
        return query(self.sqlite_path, sql, params)

    def execute(self, sql, params=()):
        """Runs one write statement (SQLite's `?` placeholders) on this daemon's database and
        commits it."""
        if self.database_url and not self.database_url.startswith("sqlite:"):
            pg_query(self.database_url, sql, params)
            return
        con = open_db(self.sqlite_path, bodies=False)
        try:
            with con:
                con.execute(sql, params)
        finally:
            con.close()

    def keys(self):
        """{"api_key": ..., "signing_key": ...} from <data-dir>/keys (written by `inlet serve`)."""
        out = {}
        with open(os.path.join(self.data_dir, "keys")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                out[k] = v
        return out

    def http(self, method, path, body=None, headers=None, auth=True, http_timeout=10):
        """One HTTP request to the first HTTP listener; (status, headers, body bytes).
        auth=True: Basic "api" with the key of <data-dir>/keys; a string: that key; a tuple:
        (user, password); None or False: no Authorization header."""
        import base64
        import http.client
        hdrs = dict(headers or {})
        if auth:
            if auth is True:
                auth = ("api", self.keys()["api_key"])
            elif isinstance(auth, str):
                auth = ("api", auth)
            token = base64.b64encode(("%s:%s" % auth).encode()).decode()
            hdrs["Authorization"] = "Basic " + token
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout(http_timeout))
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()

    def http_get(self, path, http_timeout=10):
        """(status, headers, body bytes)."""
        url = "http://127.0.0.1:%d%s" % (self.http_port, path)
        try:
            with urllib.request.urlopen(url, timeout=timeout(http_timeout)) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()


def unescape(s):
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n == "r":
                out += b"\r"; i += 2
            elif n == "n":
                out += b"\n"; i += 2
            elif n == "t":
                out += b"\t"; i += 2
            elif n == "\\":
                out += b"\\"; i += 2
            elif n == "x" and i + 3 < len(s):
                out.append(int(s[i + 2:i + 4], 16)); i += 4
            else:
                out += c.encode("latin-1"); i += 1
        else:
            out += c.encode("latin-1"); i += 1
    return bytes(out)


def read_body(path, segment, offset, size, crc):
    """The bytes of a message in the SQLite backend's body log (<database>-bodies/<segment>, see
    docs/internals/storage.md "Bodies"), checked against the row's CRC-32: a row that points at
    missing or damaged bytes fails the query that reads it."""
    import zlib
    name = os.path.join(path + "-bodies", "%012d" % segment)
    with open(name, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size or (zlib.crc32(data) & 0xffffffff) != (crc & 0xffffffff):
        raise ValueError("body of segment %d at %d (%d bytes) is short or damaged" % (segment, offset, size))
    return data


def open_db(path, bodies=True):
    """A connection to the daemon's database (it may be running: WAL readers do not block it).
    With `bodies`, `messages` reads as the table did before the body log: a temporary view (the
    temp schema is searched before main) whose `raw` is the message's bytes wherever they are, in
    the row or in the body log; writes need bodies=False (main.messages itself)."""
    if not os.path.exists(path):
        raise AssertionError("database %s does not exist" % path)
    con = sqlite3.connect(path, timeout=timeout(10))
    con.row_factory = sqlite3.Row
    if bodies:
        cols = [r[1] for r in con.execute("PRAGMA main.table_info(messages)")]
        if "body_segment" in cols:
            con.create_function("inlet_body", 4, lambda *a: read_body(path, *a), deterministic=True)
            sel = ", ".join("CASE WHEN body_segment IS NULL THEN raw ELSE"
                            " inlet_body(body_segment, body_offset, size, body_crc) END AS raw"
                            if c == "raw" else '"%s"' % c for c in cols)
            con.execute("CREATE TEMP VIEW messages AS SELECT %s FROM main.messages" % sel)
    return con


def query(target, sql, params=()):
    """Rows of `sql` on a daemon's database (target: a Daemon, either backend) or on the SQLite
    file at path `target`."""
    if isinstance(target, Daemon):
        return target.query(sql, params)
    con = open_db(target)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def sqlite_only(why):
    """Decorator of a test about SQLite itself (its file, its PRAGMAs): with the postgres backend
    it is reported as skipped, with the reason, never run against the wrong database."""
    def wrap(fn):
        return unittest.skipIf(PG, "SQLite only: " + why)(fn)
    return wrap


# ---------------------------------------------------------------------------------------------
# PostgreSQL: the cluster (given, or private to this process) and one database per daemon.
class PgRow(tuple):
    """A row that reads like sqlite3.Row: by index or by column name."""

    def __new__(cls, names, values):
        r = super().__new__(cls, values)
        r._names = names
        return r

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self):
        return list(self._names)


_pg_base = None       # base URL of the cluster
_pg_private = None    # the directory of a cluster this process started


def _pg_stop_private():
    global _pg_private
    if _pg_private:
        subprocess.run([os.environ["INLET_PG_CLUSTER"], "stop", _pg_private], timeout=90,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(_pg_private, ignore_errors=True)
        _pg_private = None


def pg_base_url():
    """The cluster's base URL; starts a private cluster on first use when none is given."""
    global _pg_base, _pg_private
    if _pg_base:
        return _pg_base
    if os.environ.get("INLET_TEST_PG_URL"):
        _pg_base = os.environ["INLET_TEST_PG_URL"]
        return _pg_base
    script = os.environ.get("INLET_PG_CLUSTER", "")
    if not script:
        raise AssertionError("backend postgres: set INLET_TEST_PG_URL and PGPASSFILE "
                             "(scripts/pg-test-cluster start DIR prints them) or INLET_PG_CLUSTER")
    _pg_private = tempfile.mkdtemp(prefix="inlet-pg-", dir=os.environ.get("INLET_BB_TMPDIR") or None)
    os.chmod(_pg_private, 0o755)  # the server's user (postgres, when we are root) must enter
    atexit.register(_pg_stop_private)
    # meson ends a test that runs too long with SIGTERM: stop the cluster then too.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    r = subprocess.run([script, "start", _pg_private], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=180)
    if r.returncode != 0:
        raise AssertionError("pg-test-cluster start failed:\n%s%s" % (r.stdout, r.stderr))
    env = dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)
    os.environ["PGPASSFILE"] = env["PGPASSFILE"]
    _pg_base = env["INLET_TEST_PG_URL"]
    return _pg_base


def pg_url_with_db(url, dbname):
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query, u.fragment))


def _psql(url, script, what):
    """Runs psql (Debian's postgresql-client) on `script` (stdin); its stdout.  psql rather than a
    Python driver: the harness stays standard library only."""
    r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url],
                       input=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       errors="replace", timeout=timeout(30),
                       env=dict(clean_env(), PGCONNECT_TIMEOUT=str(int(timeout(10)))))
    if r.returncode != 0:
        raise AssertionError("psql (%s) failed: %s" % (what, r.stderr.strip()))
    return r.stdout


def pg_admin(sql):
    """One statement outside a transaction (CREATE / DROP DATABASE) on the cluster."""
    _psql(pg_url_with_db(pg_base_url(), "postgres"), sql + ";\n", sql)


def pg_create_database():
    """A new empty database for one daemon; its URL."""
    name = "inlet_bb_" + os.urandom(6).hex()
    pg_admin("CREATE DATABASE %s" % name)
    return pg_url_with_db(pg_base_url(), name)


def pg_drop_database(url):
    import urllib.parse
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    pg_admin("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def pg_literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "'\\x%s'::bytea" % bytes(v).hex()
    return "'" + str(v).replace("'", "''") + "'"


def pg_bind(sql, params):
    """SQLite's `?` placeholders replaced by literals (outside quoted text)."""
    out, params, quoted = [], list(params), False
    for c in sql:
        if c == "'":
            quoted = not quoted
        if c == "?" and not quoted:
            if not params:
                raise AssertionError("too few parameters for %r" % sql)
            out.append(pg_literal(params.pop(0)))
        else:
            out.append(c)
    if params:
        raise AssertionError("too many parameters for %r" % sql)
    return "".join(out)


def pg_query(url, sql, params=()):
    """sql with SQLite's `?` placeholders, run on PostgreSQL; rows as PgRow (typed as JSON types
    them: numbers, text, booleans, NULL), bytea as bytes."""
    import json
    sql = pg_bind(sql, params).strip().rstrip(";")
    if not sql.split(None, 1)[0].upper() in ("SELECT", "WITH", "VALUES"):
        _psql(url, sql + ";\n", sql)
        return []
    # The columns' names and types (\gdesc), then the rows as one JSON array of objects.
    # (json_agg puts newlines between elements: the JSON is everything after the marker line.)
    marker = "--inlet-harness-json--"
    out = _psql(url, "%s \\gdesc\n\\echo %s\nSELECT coalesce(json_agg(q), '[]') FROM (%s) q;\n"
                % (sql, marker, sql), sql)
    desc, _, text = out.partition(marker + "\n")
    cols = [tuple(l.split("|", 1)) for l in desc.splitlines() if l]
    names = [c[0] for c in cols]
    rows = []
    for obj in json.loads(text):
        values = list(obj.values())
        for i, (_, typ) in enumerate(cols):
            if typ == "bytea" and isinstance(values[i], str):
                values[i] = bytes.fromhex(values[i][2:])
        rows.append(PgRow(names, values))
    return rows


RECEIVED_RE = re.compile(
    rb"^Received: from (?P<helo>[^ \r\n]+) \(\[(?P<ip>[^\]]+)\]\)\r\n"
    rb"\tby (?P<host>[^ \r\n]+) \(inlet\) with (?P<proto>[A-Z0-9]+) id (?P<id>[0-9a-f]{24})\r\n"
    rb"\t\(TLS (?P<tls>[^)]*)\);\r\n"
    rb"\t(?P<date>[^\r\n]+)\r\n")


def split_received(raw):
    """(match of our Received: header, bytes after it); fails when raw does not start with it."""
    m = RECEIVED_RE.match(raw)
    if not m:
        raise AssertionError("raw does not start with inlet's Received: header: %r" % raw[:300])
    return m, raw[m.end():]


# ---------------------------------------------------------------------------------------------
class RawSession:
    """SMTP over a plain socket: send exact bytes, read replies (multi-line aware) with timeouts."""

    def __init__(self, host, port, sock_timeout=10, source=None):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.timeout = timeout(sock_timeout)
        self.sock.settimeout(self.timeout)
        try:
            if source:
                self.sock.bind((source, 0))
            self.sock.connect((host, port))
        except OSError:
            self.sock.close()
            raise
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def line(self, wait_s=None):
        """One reply line without CRLF; None at EOF."""
        deadline = time.monotonic() + (self.timeout if wait_s is None else timeout(wait_s))
        while b"\r\n" not in self.buf:
            if self.eof or not self._fill(deadline):
                return None
        l, _, self.buf = self.buf.partition(b"\r\n")
        return l

    def reply(self, wait_s=None):
        """(code, [lines]) of one complete reply; (None, lines) at EOF."""
        lines = []
        while True:
            l = self.line(wait_s)
            if l is None:
                return None, lines
            lines.append(l)
            if len(l) < 4 or not l[:3].isdigit():
                raise AssertionError("malformed reply line %r" % l)
            if l[3:4] == b" " or len(l) == 3:
                return int(l[:3]), lines
            if l[3:4] != b"-":
                raise AssertionError("malformed reply line %r" % l)

    def replies(self, n, wait_s=None):
        return [self.reply(wait_s) for _ in range(n)]

    def cmd(self, line, wait_s=None):
        """Sends one command line (CRLF added) and returns (code, lines)."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(wait_s)

    def nothing_within(self, seconds):
        """True when no byte arrives within `seconds` (used only to show a reply is NOT sent)."""
        if self.buf:
            return False
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return True
        except ConnectionResetError:
            self.eof = True
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return False

    def closed_by_peer(self, wait_s=5):
        """True when the server closes the connection within wait_s (pending data discarded)."""
        deadline = time.monotonic() + timeout(wait_s)
        self.buf = b""
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
        return False

    def transaction(self, sender, rcpts, body, ehlo="client.example.test", mail_params=""):
        """EHLO (when ehlo), MAIL, RCPTs, DATA, body (must end with CRLF, already dot-stuffed),
        end of data.  Returns the final (code, lines)."""
        if ehlo:
            code, lines = self.cmd("EHLO " + ehlo)
            assert code == 250, lines
        code, lines = self.cmd("MAIL FROM:<%s>%s" % (sender, mail_params))
        assert code == 250, lines
        for r in rcpts:
            code, lines = self.cmd("RCPT TO:<%s>" % r)
            assert code == 250, (r, lines)
        code, lines = self.cmd("DATA")
        assert code == 354, lines
        self.send(body + b".\r\n")
        return self.reply()


def queued_id(lines):
    """The id of a '250 2.0.0 Ok: queued as <id>' reply; fails otherwise."""
    assert lines, "no reply"
    m = QUEUED_RE.match(lines[-1])
    if not m:
        raise AssertionError("not a '250 2.0.0 Ok: queued as <24 hex>' reply: %r" % lines)
    return m.group(1).decode()


def run_concurrent(daemon, sessions, per_session, make, sock_timeout=60):
    """Runs `sessions` SMTP sessions at once (released together by a barrier after EHLO), each
    sending `per_session` transactions.  make(w, i) returns (sender, rcpts, wire_body, info).
    Returns {queued id: info}; raises AssertionError naming every worker that failed."""
    results, errors = {}, []
    lock = threading.Lock()
    barrier = threading.Barrier(sessions, timeout=timeout(30))

    def worker(w):
        try:
            with daemon.session(sock_timeout=sock_timeout) as s:
                code, lines = s.cmd("EHLO worker%d.test" % w)
                assert code == 250, lines
                barrier.wait()
                for i in range(per_session):
                    sender, rcpts, body, info = make(w, i)
                    code, lines = s.transaction(sender, rcpts, body, ehlo=None)
                    assert code == 250, (w, i, lines)
                    with lock:
                        results[queued_id(lines)] = info
                code, lines = s.cmd("QUIT")
                assert code == 221, lines
        except Exception as e:  # reported by the caller's thread
            with lock:
                errors.append("worker %d: %r" % (w, e))
            try:
                barrier.abort()
            except Exception:
                pass

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout(120))
    assert not [t for t in threads if t.is_alive()], "workers still running"
    assert not errors, errors
    assert len(results) == sessions * per_session, "ids are not unique"
    return results


def dot_stuff(body):
    """Dot-stuffs a CRLF message for DATA (only after CRLF, as the server unstuffs)."""
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..")


def make_message(subject="test", body_text="hello", sender="alice@sender.test", to="bob@example.com",
                 extra_headers=b""):
    return (b"From: <" + sender.encode() + b">\r\n" +
            b"To: <" + to.encode() + b">\r\n" +
            b"Subject: " + subject.encode() + b"\r\n" +
            b"Message-ID: <" + os.urandom(8).hex().encode() + b"@sender.test>\r\n" +
            extra_headers +
            b"\r\n" + body_text.encode() + b"\r\n")


# ---------------------------------------------------------------------------------------------
class InletTestCase(unittest.TestCase):
    """Base class: requires INLET_BIN; stops every daemon it started, by PID, even on failure,
    and prints its log when the test failed."""

    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        if not INLET_BIN:
            raise unittest.SkipTest("INLET_BIN is not set")
        if not os.access(INLET_BIN, os.X_OK):
            raise AssertionError("INLET_BIN=%s is not an executable" % INLET_BIN)

    def setUp(self):
        base = os.environ.get("INLET_BB_TMPDIR") or None
        self.tmp = tempfile.mkdtemp(prefix="inlet-bb-", dir=base)
        self.daemons = []
        self.pg_databases = {}  # data dir -> database URL (postgres backend)
        self.addCleanup(self._cleanup)

    def hold_port(self, host="127.0.0.1"):
        """A HeldPort (bound, never listening) closed when the test ends."""
        h = HeldPort(host)
        self.addCleanup(h.close)
        return h

    def tmp_path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def daemon(self, *a, start=True, **kw):
        """A daemon (started unless start=False) in this test's temporary directory."""
        workdir = os.path.join(self.tmp, "d%d" % len(self.daemons))
        os.makedirs(workdir, exist_ok=True)
        d = Daemon(workdir, *a, **kw)
        if PG and d.database_url is None:
            key = os.path.realpath(d.data_dir)
            if key not in self.pg_databases:
                self.pg_databases[key] = pg_create_database()
            d.database_url = self.pg_databases[key]
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def _failed(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return True
        errors = getattr(outcome, "errors", None)
        if errors is not None:  # Python <= 3.10
            return any(exc for _, exc in errors)
        result = getattr(outcome, "result", None)
        if result is None or not getattr(outcome, "success", True):
            return True
        for test, _ in list(getattr(result, "errors", [])) + list(getattr(result, "failures", [])):
            if test is self or getattr(test, "test_case", None) is self:
                return True
        return False

    def _cleanup(self):
        """Stops every daemon still running (SIGTERM, bounded wait, SIGKILL).  A daemon that does
        not exit 0 on SIGTERM (a crash, or a sanitizer report at exit) fails the test."""
        failed = self._failed()
        problems = []
        for d in self.daemons:
            if not d.running():
                continue
            try:
                rc = d.stop(stop_timeout=5)
                if rc != 0:
                    problems.append("daemon pid %d exited with status %s on SIGTERM" % (d.proc.pid, rc))
            except Exception as e:  # stop() already fell back to SIGKILL; keep stopping the others
                d.kill9()
                problems.append("daemon pid %d: %s" % (d.proc.pid, str(e).splitlines()[0][:300]))
        failed = failed or bool(problems)
        if failed or VERBOSE:
            for i, d in enumerate(self.daemons):
                sys.stderr.write("\n---- %s: daemon %d (%s), exit status %s ----\n%s\n" % (
                    self.id(), i, " ".join(d.argv()[1:]), d.returncode, d.all_log_text()[-20000:]))
        if failed and os.environ.get("INLET_BB_KEEP"):
            sys.stderr.write("kept %s (databases: %s)\n" % (self.tmp, " ".join(self.pg_databases.values())))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for url in self.pg_databases.values():
                try:
                    pg_drop_database(url)
                except Exception as e:
                    problems.append("DROP DATABASE of %s: %s" % (url, e))
        if problems:
            raise AssertionError("at cleanup: " + "; ".join(problems))

    # -- assertions ---------------------------------------------------------------------------
    def assertReply(self, reply, code, prefix=None):
        c, lines = reply
        self.assertEqual(c, code, "expected %d, got %r" % (code, lines))
        if prefix is not None:
            if isinstance(prefix, str):
                prefix = prefix.encode()
            self.assertTrue(lines[-1].startswith(prefix), "expected %r..., got %r" % (prefix, lines))

    def messages(self, d):
        return d.query("SELECT * FROM messages ORDER BY received_at, id")

    def message(self, d, msg_id):
        rows = d.query("SELECT * FROM messages WHERE id = ?", (msg_id,))
        self.assertEqual(len(rows), 1, "message %s in the database" % msg_id)
        return rows[0]


def main():
    """Runs the calling test file's tests and reports them as TAP (runtap.py, as meson does)."""
    import runtap
    sys.exit(runtap.run_module(sys.modules["__main__"]))
