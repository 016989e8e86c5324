"""Sync before reply, group commit (SPEC §2 "accepted", DESIGN "Known hazards": group commit).

The LD_PRELOAD shim (tests/shim/syncshim.c) records, numbered by one global counter and with the
thread that made them, the syncs and positioned writes of the files under the data dir and every
socket read and write of the daemon.  Under a load of 10 concurrent sessions the test shows, by
the order of events and not by timing, with routing held (the test hook) and with routing on:
  - the writer thread (the one that writes the WAL) syncs the WAL exactly once per committed batch
    ("storage commit" debug lines, in order), and there are fewer batches than messages;
  - it writes each batch's frames into the WAL in one write, not two per page;
  - with routing held, every "250 2.0.0 Ok: queued as" is written after the writer's sync of *its
    own* batch, which follows the read that ended that message's data.  The batches are then FIFO
    runs of the writer's queue: sorted by the read that ended their data, the first n1 messages are
    the first batch's (n1 from its commit line), the next n2 the second's, and so on;
  - with routing on, a message is routed before its commit by one of two first workers, which may
    finish in another order than the ends of data, so the batches are no FIFO runs of them: every
    250 is written after a sync of the writer that follows the read that ended its data (the same
    reply path as with routing held, where the stricter order is checked).
`kill -9` cannot show this: the page cache survives a killed process."""

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

    def test_sync_before_250_routing_held(self):
        # Only the accept path: the routing pipeline (its outcome commits) is held by the test hook.
        self.check_sync_order(routing=False)

    def test_sync_before_250_routing_on(self):
        # Messages routed before their commit reach the writer in the order the first workers
        # finish them; committed alone (a backlog), their outcomes come between the batches.
        self.check_sync_order(routing=True)

    def check_sync_order(self, routing):
        env = {} if routing else {"INLET_TEST_PAUSE_PIPELINE": "1"}
        d = self.daemon(shim=True, log_level="debug", env=env)
        ids = self.load(d)
        total = SESSIONS * PER_SESSION
        self.assertEqual(len(set(ids)), total)
        if routing:
            for i in ids:
                d.wait_log(lambda l: l.topic == "engine" and l.rest.startswith("routed ") and l.kv.get("id") == i,
                           30, "'engine routed id=%s'" % i)
        d.stop()
        events = d.shim_events()
        datadir = os.path.realpath(d.data_dir)
        wal = os.path.join(datadir, "inlet.db-wal")

        pairs = self.reply_pairs(events)
        self.assertEqual(len(pairs), total, "250 replies seen by the shim")

        # The writer: the thread that writes the WAL after the first end of data.
        first_eod = pairs[0][0]
        wal_writers = {}
        for e in events:
            if e["kind"] == "FWRITE" and e["path"] == wal and e["seq"] > first_eod:
                wal_writers[e["tid"]] = wal_writers.get(e["tid"], 0) + 1
        self.assertEqual(len(wal_writers), 1, "one thread writes the WAL during the load: %r" % wal_writers)
        (writer,) = wal_writers
        syncs = [e["seq"] for e in events if e["kind"] == "SYNC" and e["rc"] == 0 and e["tid"] == writer
                 and e["path"] == wal]

        # A commit's frames reach the WAL in one write (storage/sqlite_walbuf.c; SQLite alone makes
        # two per frame, some 20 frames a commit here): between two of the writer's syncs, one
        # write, two when the WAL started over (its header) or the frames passed 64 KiB.
        wal_writes = sum(n for tid, n in wal_writers.items() if tid == writer)
        self.assertLessEqual(wal_writes, 2 * len(syncs),
                             "the writer's WAL writes (%d) over its WAL syncs (%d): a commit's frames were not "
                             "gathered into one write" % (wal_writes, len(syncs)))

        # One commit line per batch, in order; one WAL sync of the writer per batch.
        commits = [int(l.kv["messages"]) for l in d.find_lines("debug", "storage", "commit")]
        self.assertTrue(commits, "no 'storage commit' debug line")
        self.assertEqual(len(syncs), len(commits),
                         "the writer's WAL syncs (%d) and its 'storage commit' lines (%d) must pair one to one"
                         % (len(syncs), len(commits)))
        self.assertEqual(sum(commits), total, "messages over all 'storage commit' lines: %r" % commits)

        bad = []
        if not routing:
            # Each message to its own batch (FIFO runs in the order of the ends of data); its 250
            # after that batch's sync, which follows its end of data.
            i = 0
            for k, n in enumerate(commits):
                for eod, reply, fd in pairs[i:i + n]:
                    if not eod < syncs[k] < reply:
                        bad.append((eod, syncs[k], reply, fd, k))
                i += n
        else:
            # Its 250 after a sync of the writer that follows its end of data.
            for eod, reply, fd in pairs:
                if not any(eod < s < reply for s in syncs):
                    bad.append((eod, None, reply, fd, None))
        self.assertEqual(bad, [], "250 not preceded by the sync of its own batch (end of data, the batch's sync, "
                                  "reply, fd, batch) — %d of %d" % (len(bad), total))

        # Group commit.
        batches = [n for n in commits if n > 0]
        print("\nrouting %s: %d messages, %d batches with messages (largest %d), %d commits, %d WAL syncs "
              "of the writer" % ("on" if routing else "held", total, len(batches), max(batches), len(commits),
                                 len(syncs)))
        self.assertLess(len(batches), total, "no group commit: as many batches as messages")
        self.assertGreater(max(batches), 1, "no batch held more than one message")

    def reply_pairs(self, events):
        """[(seq of the read that ended a message's data, seq of its 250, fd)] sorted by the first."""
        reads = [e for e in events if e["kind"] == "READ"]
        writes = [e for e in events if e["kind"] == "WRITE"]
        self.assertTrue(reads and writes, "the shim recorded no socket I/O: is it preloaded? (%d events)"
                        % len(events))
        tails = {}        # fd -> last bytes read
        pending = {}      # fd -> seq of the read that ended a DATA not yet answered
        pairs = []
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
        return sorted(pairs)


if __name__ == "__main__":
    harness.main()
