"""Receivers for delivery tests (SPEC §5): a webhook endpoint and an SMTP relay sink, both on
127.0.0.1 port 0, in threads of the test process.  Standard library only.

WebhookReceiver records every request (method, path, headers, exact body bytes, time) and answers
from a script: a list of responses used in order, then a default.  A response is
  an int                      that status, empty body
  (int, bytes)                that status and body
  "hang"                      never answer: hold the connection until the receiver stops (or
                              release_hangs(); at most HANG_MAX seconds), then close it
  ("redirect", url)           302 with Location: url
  ("at_fraction", f, status)  answer `status` when the wall clock reaches the fraction f of a
                              second (0 <= f < 1), to end an attempt right before a second boundary
  "close"                     close the connection without answering
Every wait is bounded.  stop() closes the listener *and* every open connection, so a client that
keeps connections alive cannot reach a stopped receiver.

Ports (the port rule of tests/README.md): a receiver binds port 0 and reports the port it got
(`.port`, `.url()`); it never takes a port number from the test.  A test that needs "nobody
listens here yet, a receiver comes up later on the same port" holds a bound, not listening socket
(harness.InletTestCase.hold_port(): connections to it are refused) and hands it over with
`sock=`; a test that replaces one receiver by another on the same port takes the first one's
listening socket with `detach()` (it stops serving and drops its connections, the socket stays
open) and gives it to the next one with `sock=`.  No port is ever released and bound again.

Body helpers read bodies the way receivers do: JSON with json.loads; urlencoded with
urllib.parse.parse_qs; multipart/form-data with the `email` package (a BytesParser over a
synthetic header carrying the request's Content-Type), as Python frameworks of the cgi lineage do.

SmtpSink is a minimal SMTP server (EHLO without STARTTLS, AUTH PLAIN/LOGIN recorded, pipelining
tolerant) that records (mail_from, rcpt_tos, data) with data exactly as received after
dot-unstuffing, and answers from per-stage scripts (MAIL, RCPT, DATA, EOD = after the end of data).
"""

import email.parser
import email.policy
import email.utils
import base64
import hashlib
import hmac
import http.server
import json
import re
import socket
import socketserver
import threading
import time
import urllib.parse

HANG_MAX = 120.0


# ---------------------------------------------------------------------------------------------
# Signatures, exactly as Mailgun's SDKs check them.
def verify_signature(key, timestamp, token, signature, max_age=300, now=None):
    """mailgun-python's verify_webhook (and Rails' ActionMailbox check, with max_age=120):
    timestamp must be an integer string no older (or newer) than max_age seconds; the signature
    is the lower-case hex HMAC-SHA256 of timestamp + token under the signing key, compared in
    constant time.  Returns True/False."""
    if not all(isinstance(x, str) for x in (key, timestamp, token, signature)):
        return False
    if not key or not timestamp or not token or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if max_age is not None and abs(now - ts) > max_age:
        return False
    digest = hmac.new(key.encode("utf-8"), (timestamp + token).encode("utf-8"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, digest)


# ---------------------------------------------------------------------------------------------
# Bodies.
class FilePart:
    def __init__(self, name, filename, content_type, data, headers):
        self.name, self.filename, self.content_type, self.data = name, filename, content_type, data
        self.headers = headers  # [(name, value)] of the part

    def __repr__(self):
        return "FilePart(name=%r, filename=%r, content_type=%r, %d bytes)" % (
            self.name, self.filename, self.content_type, len(self.data))


class Form:
    """A parsed form body.  fields: {name: [str, ...]} in order of appearance; raw_fields: the
    same as bytes (multipart only; for urlencoded the UTF-8 encoding of the values); files:
    [FilePart] in order; order: [(name, "field"|"file")] in order; kind: "urlencoded" or
    "multipart"."""

    def __init__(self, kind):
        self.kind = kind
        self.fields, self.raw_fields, self.files, self.order = {}, {}, [], []
        self.parts = []  # multipart: [(headers, name, filename, data)]

    def get(self, name, default=None):
        """The first value of a field (Go's url.Values.Get, PHP/Rack take the last; there must be one)."""
        v = self.fields.get(name)
        return v[0] if v else default

    def one(self, name):
        """The value of a field that must occur exactly once."""
        v = self.fields.get(name)
        if v is None or len(v) != 1:
            raise AssertionError("field %r occurs %d times (want 1); fields: %s"
                                 % (name, 0 if v is None else len(v), sorted(self.fields)))
        return v[0]

    def file(self, name):
        got = [f for f in self.files if f.name == name]
        if len(got) != 1:
            raise AssertionError("file field %r occurs %d times; files: %r" % (name, len(got), self.files))
        return got[0]

    def names_ci(self, name):
        """Every field or file name equal to `name` ignoring case."""
        return [n for n, _ in self.order if n.lower() == name.lower()]


def parse_urlencoded(body):
    text = body.decode("ascii")  # percent-encoded: ASCII only, or the body is wrong
    form = Form("urlencoded")
    for k, v in urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                       encoding="utf-8", errors="strict"):
        form.fields.setdefault(k, []).append(v)
        form.raw_fields.setdefault(k, []).append(v.encode("utf-8"))
        form.order.append((k, "field"))
    return form


def parse_multipart(body, content_type):
    """multipart/form-data with the email package: a BytesParser over a synthetic header."""
    head = b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + body)
    if not msg.is_multipart():
        raise AssertionError("multipart body did not parse as multipart (Content-Type %r)" % content_type)
    if msg.defects:
        raise AssertionError("multipart defects: %r" % (msg.defects,))
    form = Form("multipart")
    for part in msg.get_payload():
        if part.defects:
            raise AssertionError("part defects: %r" % (part.defects,))
        disp = part.get("Content-Disposition", "")
        if not disp.lower().startswith("form-data"):
            raise AssertionError("part without Content-Disposition: form-data: %r" % part.items())
        name = part.get_param("name", header="content-disposition")
        if name is None:
            raise AssertionError("part without a name: %r" % part.items())
        name = email.utils.collapse_rfc2231_value(name)
        filename = part.get_filename()
        if part.is_multipart():
            raise AssertionError("form part %r is itself multipart" % name)
        # decode=True: base64 / quoted-printable decoded, any other part as its exact bytes
        # (BytesParser keeps 8-bit bytes as surrogates; decode=False would replace them).
        data = part.get_payload(decode=True)
        form.parts.append((part.items(), name, filename, data))
        if filename is None:
            form.fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
            form.raw_fields.setdefault(name, []).append(data)
            form.order.append((name, "field"))
        else:
            form.files.append(FilePart(name, filename, part.get_content_type() if part.get("Content-Type") else None,
                                       data, part.items()))
            form.order.append((name, "file"))
    return form


# ---------------------------------------------------------------------------------------------
class Request:
    """One request a WebhookReceiver got."""

    def __init__(self, method, path, headers, body, t, status, seq, conn_id):
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.time = t                 # time.time() when the body was read
        self.mono = time.monotonic()  # the same on the monotonic clock
        self.status = status          # what the receiver answered (None: hung or closed)
        self.seq = seq                # 0-based order of arrival at this receiver
        self.conn_id = conn_id        # which TCP connection carried it
        self.answered = self.answered_mono = None  # when the answer was written (None: not answered)

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def content_type(self):
        return self.headers.get("Content-Type", "")

    def json(self):
        if not self.content_type.split(";")[0].strip().lower() == "application/json":
            raise AssertionError("Content-Type %r is not application/json" % self.content_type)
        return json.loads(self.body.decode("utf-8"))

    def form(self):
        """Form of an urlencoded or multipart body (whichever the Content-Type says)."""
        ct = self.content_type.split(";")[0].strip().lower()
        if ct == "application/x-www-form-urlencoded":
            return parse_urlencoded(self.body)
        if ct == "multipart/form-data":
            return parse_multipart(self.body, self.content_type)
        raise AssertionError("Content-Type %r is not a form" % self.content_type)

    def __repr__(self):
        return "Request(%s %s, %s, %d bytes, status %s)" % (self.method, self.path, self.content_type,
                                                            len(self.body), self.status)


def _make_server(cls, host, sock, handler):
    """A socketserver on a new socket bound to (host, 0), or on `sock` (bound, maybe already
    listening: it is handed over, never re-bound)."""
    if sock is None:
        return cls((host, 0), handler)
    server = cls(sock.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()[:2]
    server.server_activate()   # listen(); harmless when it already listens
    return server


def _detach(server, thread):
    """Stops serve_forever and returns the listening socket, still open."""
    server.shutdown()
    thread.join(10)
    sock = server.socket
    server.socket = socket.socket()   # server_close() must not close the handed-over one
    server.server_close()
    return sock


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class WebhookReceiver:
    def __init__(self, responses=(), default=200, host="127.0.0.1", sock=None):
        self.script = list(responses)
        self.default = default
        self.requests = []
        self.cond = threading.Condition()
        self.stop_event = threading.Event()
        self.release_event = threading.Event()
        self.conns = set()
        self.conn_seq = 0
        self.errors = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with receiver.cond:
                    receiver.conn_seq += 1
                    self.conn_id = receiver.conn_seq
                    receiver.conns.add(self.connection)

            def finish(self):
                try:
                    super().finish()
                finally:
                    with receiver.cond:
                        receiver.conns.discard(self.connection)

            def _body(self):
                te = (self.headers.get("Transfer-Encoding") or "").lower()
                if "chunked" in te:
                    out = b""
                    while True:
                        line = self.rfile.readline(65537)
                        if not line:
                            raise ConnectionError("EOF in chunked body")
                        size = int(line.split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline(65537)
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else b""
                if len(data) != n:
                    raise ConnectionError("EOF in body (%d of %d bytes)" % (len(data), n))
                return data

            def _handle(self):
                try:
                    body = self._body()
                except (ConnectionError, ValueError, OSError) as e:
                    receiver.errors.append("%s %s: %r" % (self.command, self.path, e))
                    self.close_connection = True
                    return
                with receiver.cond:
                    resp = receiver.script.pop(0) if receiver.script else receiver.default
                    req = Request(self.command, self.path, self.headers, body, time.time(), None,
                                  len(receiver.requests), self.conn_id)
                    if isinstance(resp, int):
                        req.status = resp
                    elif isinstance(resp, tuple) and isinstance(resp[0], int):
                        req.status = resp[0]
                    elif isinstance(resp, tuple) and resp[0] == "redirect":
                        req.status = 302
                    elif isinstance(resp, tuple) and resp[0] == "at_fraction":
                        req.status = resp[2]
                    receiver.requests.append(req)
                    receiver.cond.notify_all()
                if resp == "hang":
                    deadline = time.monotonic() + HANG_MAX
                    while not receiver.stop_event.is_set() and not receiver.release_event.is_set() \
                            and time.monotonic() < deadline:
                        receiver.stop_event.wait(0.05)
                    self.close_connection = True
                    return
                if resp == "close":
                    self.close_connection = True
                    return
                if isinstance(resp, tuple) and resp[0] == "at_fraction":
                    # Answer when the wall clock's fraction of a second reaches resp[1] (to end
                    # an attempt right before a second boundary).
                    now = time.time()
                    target = int(now) + resp[1]
                    if target <= now + 0.05:
                        target += 1
                    receiver.stop_event.wait(target - now)
                    status, payload, extra = resp[2], b"", []
                elif isinstance(resp, tuple) and resp[0] == "redirect":
                    status, payload, extra = 302, b"", [("Location", resp[1])]
                elif isinstance(resp, tuple):
                    status, payload, extra = resp[0], resp[1], []
                else:
                    status, payload, extra = resp, b"", []
                self.send_response(status)
                for k, v in extra:
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                req.answered = time.time()
                req.answered_mono = time.monotonic()

            do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _handle

        self.server = _make_server(_HTTPServer, host, sock, Handler)
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.stopped = False

    # -- control --------------------------------------------------------------------------------
    def url(self, path="/hook"):
        return "http://%s:%d%s" % (self.host, self.port, path)

    def set_script(self, responses, default=None):
        with self.cond:
            self.script = list(responses)
            if default is not None:
                self.default = default

    def release_hangs(self):
        self.release_event.set()

    def stop(self):
        """Closes the listener and every open connection (hung ones too); idempotent."""
        if self.stopped:
            return
        self.stopped = True
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()
        self._drop_connections()
        self.thread.join(10)

    def detach(self):
        """Stops serving like stop(), but returns the listening socket still open (and still
        bound) for the next receiver's `sock=`: the port is never free in between.  Connections
        that arrive meanwhile wait in the listen queue for the next receiver."""
        assert not self.stopped, "detach() after stop()"
        self.stopped = True
        self.stop_event.set()
        sock = _detach(self.server, self.thread)
        self._drop_connections()
        return sock

    def _drop_connections(self):
        with self.cond:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()

    # -- observation ----------------------------------------------------------------------------
    def count(self):
        with self.cond:
            return len(self.requests)

    def wait_for(self, n, wait_s=10, what=None):
        """Waits (bounded) until at least n requests arrived; returns the first n.  Fails with
        what arrived otherwise."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: %d of %d requests within %.1fs: %r; errors %r" % (
                        what or self.url(""), len(self.requests), n, wait_s, self.requests, self.errors))
                self.cond.wait(min(left, 0.2))
            return list(self.requests[:n])

    def wait_until(self, pred, wait_s=10, what="condition"):
        """Waits (bounded) until pred(list of requests) is true; returns the requests."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while not pred(list(self.requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s not reached within %.1fs: %r" % (what, wait_s, self.requests))
                self.cond.wait(min(left, 0.2))
            return list(self.requests)

    def no_more_than(self, n, wait_s):
        """Waits wait_s seconds; fails when more than n requests arrived by then."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                if len(self.requests) > n:
                    raise AssertionError("%d requests, expected at most %d: %r" % (
                        len(self.requests), n, self.requests))
                left = deadline - time.monotonic()
                if left <= 0:
                    return list(self.requests)
                self.cond.wait(min(left, 0.2))


# ---------------------------------------------------------------------------------------------
class SmtpTransaction:
    def __init__(self, mail_from, rcpt_tos, data, reply, auth, helo, conn_id):
        self.mail_from, self.rcpt_tos, self.data, self.reply = mail_from, rcpt_tos, data, reply
        self.auth, self.helo, self.conn_id = auth, helo, conn_id
        self.time = time.time()

    @property
    def code(self):
        return int(self.reply[:3])

    def __repr__(self):
        return "SmtpTransaction(from=%r, to=%r, %d bytes, reply=%r)" % (
            self.mail_from, self.rcpt_tos, len(self.data), self.reply)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SmtpSink:
    """replies: {"MAIL"|"RCPT"|"DATA"|"EOD": [reply, ...]} used in order for successive
    occurrences of that stage (across connections), then `always.get(stage)` or the normal
    answer.  A reply is an int (a text is added) or a full line such as "451 4.3.0 later".
    A refused RCPT or a refused DATA/EOD ends the transaction without recording a message;
    every end of data is recorded in `transactions` with its reply, the 250 ones also in
    `messages`.

    lax_lines=True makes it a sloppy relay (issue 14 item 4): a bare LF ends a line, and the data
    ends at any line holding only "." (LF.LF and LF.CRLF too), so bytes after such a line in a
    message would be read as commands: what inlet must never let happen."""

    NORMAL = {"MAIL": "250 2.1.0 Ok", "RCPT": "250 2.1.5 Ok", "DATA": "354 End data with <CR><LF>.<CR><LF>",
              "EOD": "250 2.0.0 Ok: queued"}

    def __init__(self, replies=None, always=None, host="127.0.0.1", advertise_auth=True,
                 hostname="sink.inlet.test", sock=None, lax_lines=False):
        self.lax_lines = lax_lines
        self.scripts = {k: list(v) for k, v in (replies or {}).items()}
        self.always = dict(always or {})
        self.advertise_auth = advertise_auth
        self.hostname = hostname
        self.transactions = []   # every end of data, with the reply given
        self.messages = []       # the accepted ones
        self.events = []         # (stage, argument, reply) of every command, for diagnostics
        self.auths = []          # (mechanism, user, password)
        self.connections = 0
        self.cond = threading.Condition()
        self.errors = []
        sink = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    sink._session(self.request)
                except (OSError, ConnectionError) as e:
                    sink.errors.append(repr(e))

        self.server = _make_server(_TCPServer, host, sock, Handler)
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.stopped = False

    def url(self, user=None):
        return "smtp://%s%s:%d" % (user + "@" if user else "", self.host, self.port)

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()

    def _reply_for(self, stage):
        with self.cond:
            script = self.scripts.get(stage)
            r = script.pop(0) if script else self.always.get(stage, self.NORMAL[stage])
        if isinstance(r, int):
            r = "%d %s" % (r, {2: "2.0.0 Ok", 3: "Go ahead", 4: "4.3.0 Try again later",
                                5: "5.7.1 Refused"}[r // 100])
        return r

    def _session(self, sock):
        sock.settimeout(60)
        with self.cond:
            self.connections += 1
            conn_id = self.connections
        buf = bytearray()

        def send(line):
            sock.sendall(line.encode() + b"\r\n")

        eol = b"\n" if self.lax_lines else b"\r\n"

        def readline():
            while eol not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buf.extend(chunk)
            i = buf.index(eol)
            line = bytes(buf[:i])
            del buf[:i + len(eol)]
            return line.rstrip(b"\r") if self.lax_lines else line

        def read_data_lax():
            # Any line that is only "." (after LF, ended by LF or CRLF) ends the data.
            data = bytearray(b"\n")
            while True:
                m = re.search(rb"\n\.\r?\n", data)
                if m:
                    break
                if buf:
                    data.extend(buf)
                    del buf[:]
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data.extend(chunk)
            buf.extend(data[m.end():])
            content = bytes(data[:m.start() + 1])
            return re.sub(rb"\n\.", b"\n", content)[1:]

        def read_data():
            if self.lax_lines:
                return read_data_lax()
            # The data ends at CRLF.CRLF; the CRLF before the dot belongs to the message.  A
            # virtual CRLF in front lets an empty message ("." alone) end at once.
            data = bytearray(b"\r\n")
            while True:
                i = data.find(b"\r\n.\r\n")
                if i >= 0:
                    break
                # move what is buffered, keep reading
                if buf:
                    data.extend(buf)
                    del buf[:]
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data.extend(chunk)
            rest = bytes(data[i + 5:])
            content = bytes(data[:i + 2])
            buf.extend(rest)
            content = content.replace(b"\r\n.", b"\r\n")  # dot-unstuffing, after CRLF only
            return content[2:]

        send("220 %s ESMTP sink" % self.hostname)
        helo, mail_from, rcpts, auth = None, None, [], None
        while True:
            line = readline()
            if line is None:
                return
            verb, _, arg = line.decode("utf-8", "replace").partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                helo = arg
                mail_from, rcpts = None, []
                if verb == "EHLO":
                    ext = ["PIPELINING", "SIZE 104857600", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
                    if self.advertise_auth:
                        ext.append("AUTH PLAIN LOGIN")
                    send("250-%s" % self.hostname)
                    for i, e in enumerate(ext):
                        send(("250 " if i == len(ext) - 1 else "250-") + e)
                else:
                    send("250 %s" % self.hostname)
            elif verb == "AUTH":
                mech, _, initial = arg.partition(" ")
                mech = mech.upper()
                if mech == "PLAIN":
                    if not initial:
                        send("334 ")
                        initial = (readline() or b"").decode()
                    try:
                        _, user, pw = base64.b64decode(initial).decode("utf-8").split("\0", 2)
                    except ValueError:
                        send("501 5.5.2 bad PLAIN")
                        continue
                elif mech == "LOGIN":
                    if not initial:
                        send("334 VXNlcm5hbWU6")
                        initial = (readline() or b"").decode()
                    user = base64.b64decode(initial).decode("utf-8")
                    send("334 UGFzc3dvcmQ6")
                    pw = base64.b64decode((readline() or b"").decode()).decode("utf-8")
                else:
                    send("504 5.5.4 mechanism not supported")
                    continue
                auth = (mech, user, pw)
                with self.cond:
                    self.auths.append(auth)
                send("235 2.7.0 Authentication successful")
            elif verb == "MAIL":
                r = self._reply_for("MAIL")
                self.events.append(("MAIL", arg, r))
                if r.startswith("2"):
                    mail_from = _addr(arg[len("FROM:"):])
                    rcpts = []
                send(r)
            elif verb == "RCPT":
                r = self._reply_for("RCPT")
                self.events.append(("RCPT", arg, r))
                if r.startswith("2"):
                    rcpts.append(_addr(arg[len("TO:"):]))
                send(r)
            elif verb == "DATA":
                if mail_from is None or not rcpts:
                    send("503 5.5.1 need MAIL and RCPT first")
                    continue
                r = self._reply_for("DATA")
                self.events.append(("DATA", "", r))
                send(r)
                if not r.startswith("3"):
                    continue
                data = read_data()
                if data is None:
                    return
                r = self._reply_for("EOD")
                t = SmtpTransaction(mail_from, list(rcpts), data, r, auth, helo, conn_id)
                with self.cond:
                    self.transactions.append(t)
                    if r.startswith("2"):
                        self.messages.append(t)
                    self.cond.notify_all()
                self.events.append(("EOD", "%d bytes" % len(data), r))
                mail_from, rcpts = None, []
                send(r)
            elif verb == "RSET":
                mail_from, rcpts = None, []
                send("250 2.0.0 Ok")
            elif verb == "NOOP":
                send("250 2.0.0 Ok")
            elif verb == "QUIT":
                send("221 2.0.0 Bye")
                return
            else:
                self.events.append((verb, arg, "502"))
                send("502 5.5.2 not implemented")

    # -- observation ----------------------------------------------------------------------------
    def wait_for(self, n, wait_s=10, accepted=True):
        """Waits (bounded) for n accepted messages (or n ends of data when accepted=False)."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                got = self.messages if accepted else self.transactions
                if len(got) >= n:
                    return list(got[:n])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("sink: %d of %d %s within %.1fs; events %r; errors %r" % (
                        len(got), n, "messages" if accepted else "transactions", wait_s, self.events,
                        self.errors))
                self.cond.wait(min(left, 0.2))

    def wait_events(self, pred, wait_s=10, what="event"):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if pred(list(self.events)):
                return list(self.events)
            time.sleep(0.05)
        raise AssertionError("sink: no %s within %.1fs; events %r" % (what, wait_s, self.events))


def _addr(s):
    """'<a@b> SIZE=12' -> 'a@b'."""
    s = s.strip()
    if s.startswith("<"):
        return s[1:s.index(">")] if ">" in s else s[1:]
    return s.split(" ")[0]
