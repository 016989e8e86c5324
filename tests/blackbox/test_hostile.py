"""Hostile SMTP clients (issue 14): each test shows one way a client could take more than its
share, and that inlet now holds.  Settings are made small so that every test is quick."""

import os
import signal
import socket
import threading
import time
import unittest

import harness
from harness import InletTestCase, make_message, queued_id


def rss_kib(pid):
    """Resident memory of `pid` in KiB (VmRSS of /proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


class DataDirLock(InletTestCase):
    def test_second_serve_on_one_data_dir_refuses_and_names_the_first(self):
        first = self.daemon()
        second = self.daemon(data_dir=first.data_dir, start=False)
        second.spawn()
        self.assertNotEqual(second.expect_exit(), 0, "a second inlet started on the same data dir")
        err = [l for l in second.lines() if l.level == "error" and l.topic == "engine"]
        self.assertTrue(err, second.log_text())
        self.assertIn("is in use by another inlet (pid %d" % first.proc.pid, err[0].rest)
        # The first goes on undisturbed, and the lock file says who holds it.
        with first.session() as s:
            code, lines = s.transaction("a@sender.test", ["bob@example.com"], make_message())
            self.assertEqual(code, 250, lines)
        with open(os.path.join(first.data_dir, "inlet.lock")) as f:
            self.assertEqual(f.read().strip(), str(first.proc.pid))
        # Once the first has stopped (even killed: the kernel drops the lock), the next one starts.
        first.kill9()
        second.start()


if __name__ == "__main__":
    unittest.main()
