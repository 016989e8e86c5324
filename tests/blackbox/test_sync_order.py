"""Sync before reply, group commit (SPEC §2 "accepted", DESIGN "Known hazards": group commit).

The LD_PRELOAD shim (tests/shim/syncshim.c) records fsync/fdatasync of the files under the data dir
and every socket read and write of the daemon, numbered by one global counter.  Under a load of 10
concurrent sessions the test shows, by the order of events and not by timing:
  - at least one sync of the database per committed batch, and fewer syncs than messages;
  - for every "250 2.0.0 Ok: queued as" written to a socket, a completed sync of the database's
    WAL or main file between the read that ended that message's data and the write of the reply.
`kill -9` cannot show this: the page cache survives a killed process."""

import bisect
import os

import harness
from harness import InletTestCase, make_message

SESSIONS = 10
PER_SESSION = 15
EOD = b"\r\n.\r\n"
QUEUED = b"250 2.0.0 Ok: queued as "


class SyncOrder(InletTestCase):
    def load(self, d):
        def make(w, i):
            body = make_message(subject="w%d m%d" % (w, i), body_text="x" * (100 * i))
            return "a@b.test", ["x@example.com"], body, None

        return list(harness.run_concurrent(d, SESSIONS, PER_SESSION, make))

    def test_sync_before_250_and_group_commit(self):
        # Only the accept path: the routing pipeline (its outcome commits) is held by the test hook.
        d = self.daemon(shim=True, log_level="debug", env={"INLET_TEST_PAUSE_PIPELINE": "1"})
        ids = self.load(d)
        total = SESSIONS * PER_SESSION
        self.assertEqual(len(set(ids)), total)
        events = d.shim_events()
        datadir = os.path.realpath(d.data_dir)
        db_files = (os.path.join(datadir, "inlet.db"), os.path.join(datadir, "inlet.db-wal"))

        reads = [e for e in events if e["kind"] == "READ"]
        writes = [e for e in events if e["kind"] == "WRITE"]
        self.assertTrue(reads and writes, "the shim recorded no socket I/O: is it preloaded? (%d events)"
                        % len(events))

        # Match every 250 to the read that ended its data on the same connection (fd).
        tails = {}        # fd -> last bytes read
        pending = {}      # fd -> seq of the read that ended a DATA not yet answered
        pairs = []        # (eod_seq, reply_seq, fd)
        for e in events:
            if e["kind"] == "READ" and e["rc"] > 0:
                prev = tails.get(e["fd"], b"")
                joined = prev[-4:] + e["tail"]
                tails[e["fd"]] = joined[-64:]
                if EOD in joined:
                    pending[e["fd"]] = e["seq"]
            elif e["kind"] == "READ" and e["rc"] == 0:
                tails.pop(e["fd"], None)          # EOF: the fd number may be reused
                pending.pop(e["fd"], None)
            elif e["kind"] == "WRITE" and QUEUED in e["head"]:
                eod = pending.pop(e["fd"], None)
                self.assertIsNotNone(eod, "a 250 on fd %d at seq %d without a preceding end of data"
                                     % (e["fd"], e["seq"]))
                pairs.append((eod, e["seq"], e["fd"]))
        self.assertEqual(len(pairs), total, "250 replies seen by the shim")

        syncs = [e for e in events if e["kind"] == "SYNC" and e["rc"] == 0
                 and (e["path"] == datadir or e["path"].startswith(datadir + "/"))]
        db_syncs = sorted(e["seq"] for e in syncs if e["path"] in db_files)
        self.assertTrue(db_syncs, "no sync of %s recorded" % (db_files,))

        bad = []
        for eod, reply, fd in pairs:
            i = bisect.bisect_right(db_syncs, eod)
            if i >= len(db_syncs) or db_syncs[i] >= reply:
                bad.append((eod, reply, fd))
        self.assertEqual(bad, [], "250 written with no database sync between the end of data and the "
                                  "reply (eod seq, reply seq, fd) — %d of %d" % (len(bad), len(pairs)))

        # Group commit: one debug line per batch, at least one sync per batch, fewer syncs than messages.
        batches = []
        for l in d.find_lines("debug", "storage", "commit"):
            batches.append(int(l.kv["messages"]))
            for k in ("bytes", "ms"):
                self.assertIn(k, l.kv, l.raw)
        batches = [n for n in batches if n > 0]
        self.assertEqual(sum(batches), total, "messages over all 'storage commit' lines: %r" % batches)
        first_eod = min(eod for eod, _, _ in pairs)
        load_syncs = [e for e in syncs if e["seq"] > first_eod]
        load_db_syncs = [s for s in db_syncs if s > first_eod]
        print("\n%d messages, %d batches (largest %d), %d syncs of the database during the load "
              "(%d syncs under the data dir)" % (total, len(batches), max(batches), len(load_db_syncs),
                                                 len(load_syncs)))
        self.assertGreaterEqual(len(load_db_syncs), len(batches), "fewer syncs than batches")
        self.assertLess(len(load_syncs), total, "no group commit: as many syncs as messages")
        self.assertGreater(max(batches), 1, "no batch held more than one message")


if __name__ == "__main__":
    harness.main()
