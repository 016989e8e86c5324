"""A real authoritative DNS server for the sender-authentication tests: Debian's NSD, serving zones
the test writes, on a free loopback UDP/TCP port, started and stopped by the test (even when it
fails).  inlet is pointed at it with --dns-server 127.0.0.1:PORT.

Also: a "black hole" UDP port that reads queries and never answers (the timeout cases)."""

import os
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


class Nsd:
    def __init__(self, workdir, zones):
        """zones: {origin: [record lines relative to the origin]}"""
        self.dir = os.path.join(workdir, "nsd")
        os.makedirs(self.dir, exist_ok=True)
        self.zones = zones
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
            with open(os.path.join(self.dir, fname), "w") as f:
                f.write("$ORIGIN %s.\n$TTL 300\n" % origin)
                f.write("@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 60\n" % (origin, origin))
                f.write("@ IN NS ns.%s.\nns IN A 127.0.0.1\n" % origin)
                for r in records:
                    f.write(r + "\n")
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
