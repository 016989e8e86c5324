"""Full disk and health (SPEC §2 "storage unavailable / disk full", §7 /healthz).

ENOSPC is injected by the LD_PRELOAD shim (tests/shim/syncshim.c): while the flag file exists,
writes and syncs of the files under the data dir fail with ENOSPC."""

import json
import os

import harness
from harness import InletTestCase, make_message, queued_id


class DiskFull(InletTestCase):
    def test_enospc_gives_452_and_accepting_resumes(self):
        flag = self.tmp_path("enospc")
        # The accept path only: the routing pipeline is held by its test hook, so both messages
        # are still 'accepted' at the restart below.
        d = self.daemon(shim=True, shim_enospc=flag, env={"INLET_TEST_PAUSE_PIPELINE": "1"})
        with d.session() as s:
            s.cmd("EHLO c.test")
            first = make_message(subject="before")
            code, lines = s.transaction("a@b.test", ["x@example.com"], first, ehlo=None)
            self.assertEqual(code, 250, lines)
            id1 = queued_id(lines)

            open(flag, "w").close()
            marker = b"NOSPACE-" + os.urandom(8).hex().encode()
            full = make_message(subject="while full", body_text=marker.decode() + "\r\n" + "f" * 50000)
            code, lines = s.transaction("a@b.test", ["x@example.com"], full, ehlo=None)
            self.assertEqual(code, 452, lines)
            self.assertTrue(lines[-1].startswith(b"452 4.3.1"), lines)
            self.assertReply(s.cmd("NOOP"), 250)

            os.unlink(flag)
            after = make_message(subject="after")
            code, lines = s.transaction("a@b.test", ["x@example.com"], after, ehlo=None)
            self.assertEqual(code, 250, lines)
            id3 = queued_id(lines)
            self.assertReply(s.cmd("QUIT"), 221)

        injected = [e for e in d.shim_events() if e["kind"] == "ENOSPC"]
        self.assertTrue(injected, "the shim injected no ENOSPC: is it preloaded?")
        rows = self.messages(d)
        self.assertEqual(sorted(r["id"] for r in rows), sorted([id1, id3]))
        for r in rows:
            self.assertNotIn(marker, bytes(r["raw"]))
        self.assertEqual(harness.split_received(bytes(self.message(d, id1)["raw"]))[1], first)
        self.assertEqual(harness.split_received(bytes(self.message(d, id3)["raw"]))[1], after)
        self.assertEqual(harness.query(d, "PRAGMA integrity_check")[0][0], "ok")
        # And after a restart nothing half-written shows up either.
        self.assertEqual(d.stop(), 0)
        d.start()
        rec = [l for l in d.find_lines("info", "engine") if "recovered" in l.kv]
        self.assertEqual([l.kv["recovered"] for l in rec], ["2"])
        self.assertEqual(len(self.messages(d)), 2)

    def test_enospc_across_sessions(self):
        """A failed batch fails every message in it; none of them is stored; later ones are."""
        flag = self.tmp_path("enospc")
        d = self.daemon(shim=True, shim_enospc=flag)
        open(flag, "w").close()
        sessions = [d.session() for _ in range(3)]
        for s in sessions:
            self.addCleanup(s.close)
            s.cmd("EHLO c.test")
            s.cmd("MAIL FROM:<a@b.test>")
            s.cmd("RCPT TO:<x@example.com>")
            self.assertReply(s.cmd("DATA"), 354)
        for s in sessions:
            s.send(make_message(subject="full") + b".\r\n")
        for s in sessions:
            code, lines = s.reply()
            self.assertEqual(code, 452, lines)
            self.assertTrue(lines[-1].startswith(b"452 4.3.1"), lines)
        os.unlink(flag)
        for s in sessions:
            code, lines = s.transaction("a@b.test", ["x@example.com"], make_message(subject="ok"), ehlo=None)
            self.assertEqual(code, 250, lines)
        self.assertEqual(len(self.messages(d)), 3)


class Health(InletTestCase):
    def test_healthz_ok(self):
        d = self.daemon()
        self.assertTrue(d.http_addrs, "no 'http listening' line")
        status, headers, body = d.http_get("/healthz")
        self.assertEqual(status, 200, body)
        self.assertTrue(headers.get("Content-Type", "").startswith("application/json"), headers)
        self.assertEqual(json.loads(body), {"status": "ok"})

    def test_healthz_low_disk(self):
        d = self.daemon(args=["--min-free-disk", "10000000000000000"])
        status, headers, body = d.http_get("/healthz")
        self.assertEqual(status, 503, body)
        self.assertTrue(headers.get("Content-Type", "").startswith("application/json"), headers)
        doc = json.loads(body)
        self.assertIsInstance(doc.get("message"), str, doc)
        self.assertTrue(doc["message"].strip(), doc)

    def test_healthz_unknown_path_and_method(self):
        d = self.daemon()
        status, _, _ = d.http_get("/no-such-path")
        self.assertEqual(status // 100, 4)


if __name__ == "__main__":
    harness.main()
