"""A real authoritative DNS server for the sender-authentication tests: Debian's NSD, serving zones
the test writes, on a free loopback UDP/TCP port, started and stopped by the test (even when it
fails).  inlet is pointed at it with --dns-server 127.0.0.1:PORT.

Also: a "black hole" UDP port that reads queries and never answers (the timeout cases)."""

import os
import signal
import socket
import struct
import subprocess
import threading
import time

NSD = "/usr/sbin/nsd"


def available():
    return os.access(NSD, os.X_OK)


def free_port():
    """A port free for both UDP and TCP right now (NSD binds it a moment later)."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


def query(port, name, qtype=16, timeout=0.5):
    """One UDP query; the rcode, or None without an answer."""
    qid = os.getpid() & 0xFFFF
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        if label:
            q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
        return data[3] & 0x0F
    except OSError:
        return None
    finally:
        s.close()


def txt(value):
    """A TXT rdata in zone-file syntax: strings of at most 255 bytes each."""
    parts = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"%s"' % p.replace("\\", "\\\\").replace('"', '\\"') for p in parts)


def soa_serial(port, name, timeout=0.5):
    """The SOA serial NSD gives for `name`, or None."""
    qid = (os.getpid() + 1) & 0xFFFF
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        if label:
            q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 6, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, ("127.0.0.1", port))
        data, _ = s.recvfrom(65535)
        if struct.unpack(">H", data[6:8])[0] < 1:
            return None
        i = _skip_name(data, 12) + 4                  # the question
        i = _skip_name(data, i) + 10                  # the answer's owner, type, class, TTL, length
        i = _skip_name(data, _skip_name(data, i))     # MNAME, RNAME
        return struct.unpack(">I", data[i:i + 4])[0]
    except (OSError, IndexError, struct.error):
        return None
    finally:
        s.close()


def _skip_name(data, i):
    while True:
        n = data[i]
        if n == 0:
            return i + 1
        if n >= 0xC0:
            return i + 2
        i += n + 1


class Nsd:
    def __init__(self, workdir, zones, serial=1):
        """zones: {origin: [record lines relative to the origin]}; origin "." is the root zone."""
        self.dir = os.path.join(workdir, "nsd")
        os.makedirs(self.dir, exist_ok=True)
        self.zones = zones
        self.serial = serial
        self.proc = None
        self.port = None

    def _write(self):
        conf = ["server:", "  ip-address: 127.0.0.1", "  port: %d" % self.port, '  username: ""',
                '  chroot: ""', "  zonesdir: \"%s\"" % self.dir, '  database: ""',
                "  pidfile: \"%s/nsd.pid\"" % self.dir, "  xfrdfile: \"%s/xfrd.state\"" % self.dir,
                "  zonelistfile: \"%s/zone.list\"" % self.dir, "  logfile: \"%s/nsd.log\"" % self.dir,
                "  server-count: 1", "  do-ip6: no", "  verbosity: 1",
                "remote-control:", "  control-enable: no"]
        for i, (origin, records) in enumerate(sorted(self.zones.items())):
            fname = "z%d.zone" % i
            apex = "" if origin == "." else origin + "."
            path = os.path.join(self.dir, fname)
            with open(path, "w") as f:
                f.write("$ORIGIN %s\n$TTL 300\n" % (apex or "."))
                f.write("@ IN SOA ns.%s hostmaster.%s %d 3600 600 86400 60\n" % (apex, apex, self.serial))
                f.write("@ IN NS ns.%s\nns IN A 127.0.0.1\n" % apex)
                for r in records:
                    f.write(r + "\n")
            # NSD reloads a zone file whose time changed (reload()): a new file gets a later one
            # even within the same second.
            os.utime(path, (1_000_000_000 + self.serial, 1_000_000_000 + self.serial))
            conf += ["zone:", "  name: %s" % origin, "  zonefile: %s" % fname]
        self.conf = os.path.join(self.dir, "nsd.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")

    def start(self, wait_s=10):
        last = None
        for _ in range(3):  # the port may be taken between free_port() and NSD's bind
            self.port = free_port()
            self._write()
            self.proc = subprocess.Popen([NSD, "-d", "-c", self.conf], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            origin = sorted(self.zones)[0]
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                if query(self.port, origin, 6, 0.2) is not None:
                    return self
                time.sleep(0.05)
            last = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else "no answer"
            self.stop()
        log = ""
        try:
            with open(os.path.join(self.dir, "nsd.log")) as f:
                log = f.read()
        except OSError:
            pass
        raise RuntimeError("nsd did not start: %s %s" % (last, log))

    def reload(self, zones, serial, wait_s=10):
        """New records for the same zones (SIGHUP: NSD reads the changed files); returns once NSD
        answers with the new serial."""
        if set(zones) != set(self.zones):
            raise ValueError("reload keeps the zones; only their records change")
        self.zones, self.serial = zones, serial
        self._write()
        origin = sorted(self.zones)[0]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            until = time.monotonic() + 1
            while time.monotonic() < until:
                if soa_serial(self.port, origin, 0.2) == serial:
                    return self
                time.sleep(0.02)
        raise RuntimeError("nsd did not load serial %d" % serial)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


class BlackHole:
    """A UDP and TCP port that takes DNS queries and never answers."""

    def __init__(self):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.tcp.bind(("127.0.0.1", self.port))
            self.tcp.listen(16)
        except OSError:
            pass
        self.udp.settimeout(0.2)
        self.stopping = False
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                self.udp.recvfrom(65535)
                self.count += 1
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.udp.close()
        self.tcp.close()


QTYPES = {1: "A", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 99: "SPF"}


def question(msg):
    """(lower-case name without the final dot, type name) of a DNS query, or None."""
    try:
        i, labels = 12, []
        while msg[i]:
            labels.append(msg[i + 1:i + 1 + msg[i]].decode("latin-1"))
            i += msg[i] + 1
        qtype = struct.unpack(">H", msg[i + 1:i + 3])[0]
        return ".".join(labels).lower(), QTYPES.get(qtype, str(qtype))
    except (IndexError, struct.error):
        return None


class Dropper:
    """A DNS proxy in front of a server on 127.0.0.1:upstream (UDP and TCP) that never answers the
    queries whose (name, type) is in `drop` (the RFC 7208 suite's TIMEOUT): the resolver's own
    deadline ends them, as with a server that does not answer."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.drop = set()
        self.dropped = 0
        for _ in range(50):  # a UDP port whose TCP twin is free too
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.tcp.close()
                self.udp.close()
        else:
            raise RuntimeError("no free port for the DNS proxy")
        self.udp.settimeout(0.2)
        self.tcp.listen(16)
        self.tcp.settimeout(0.2)
        self.stopping = False
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._udp, self._tcp)]
        for t in self.threads:
            t.start()

    def _wanted(self, msg):
        if question(msg) in self.drop:
            self.dropped += 1
            return False
        return True

    def _udp(self):
        while not self.stopping:
            try:
                msg, peer = self.udp.recvfrom(65535)
            except OSError:
                continue
            if self._wanted(msg):
                threading.Thread(target=self._udp_one, args=(msg, peer), daemon=True).start()

    def _udp_one(self, msg, peer):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        try:
            s.sendto(msg, ("127.0.0.1", self.upstream))
            self.udp.sendto(s.recvfrom(65535)[0], peer)
        except OSError:
            pass
        finally:
            s.close()

    def _tcp(self):
        while not self.stopping:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            threading.Thread(target=self._tcp_one, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(sock, n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _tcp_one(self, conn):
        conn.settimeout(5)
        try:
            with conn, socket.create_connection(("127.0.0.1", self.upstream), timeout=5) as up:
                while not self.stopping:
                    head = self._read(conn, 2)
                    msg = self._read(conn, struct.unpack(">H", head)[0])
                    if not self._wanted(msg):
                        continue
                    up.sendall(head + msg)
                    rhead = self._read(up, 2)
                    conn.sendall(rhead + self._read(up, struct.unpack(">H", rhead)[0]))
        except OSError:
            pass

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join(5)
        self.udp.close()
        self.tcp.close()
