"""RCPT-time route check (SPEC §2 "550 5.1.1" and postmaster rows, §4 "could match",
`--reject-unrouted`)."""

import json
import urllib.parse

import harness
from harness import InletTestCase, make_message, queued_id


def create_route(d, expression, actions, priority=0):
    fields = [("priority", str(priority)), ("expression", expression)] + [("action", a) for a in actions]
    status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, (status, body)
    return json.loads(body)["route"]["id"]


class RejectUnrouted(InletTestCase):
    def rcpt(self, d, addr):
        with d.session() as s:
            self.assertReply(s.cmd("EHLO client.test"), 250)
            self.assertReply(s.cmd("MAIL FROM:<a@sender.test>"), 250)
            return s.cmd("RCPT TO:<%s>" % addr)

    def test_default_is_yes_and_no_route_refuses_everything_but_postmaster(self):
        d = self.daemon(args=["--reject-unrouted", "yes"])
        self.assertTrue(d.find_lines("warn", "engine", "no routes yet"))
        self.assertReply(self.rcpt(d, "bob@example.com"), 550, "550 5.1.1 No such recipient")
        self.assertReply(self.rcpt(d, "postmaster@example.com"), 250)
        self.assertReply(self.rcpt(d, "POSTMASTER@EXAMPLE.COM"), 250)
        self.assertReply(self.rcpt(d, "postmaster"), 250)
        # Not hosted stays a relay refusal.
        self.assertReply(self.rcpt(d, "bob@elsewhere.test"), 550, "550 5.7.1")
        # check-config shows the default.
        out = harness.run_cli(["check-config", "--domain", "example.com"])
        self.assertIn("reject-unrouted=yes", out.stdout.splitlines())

    def test_could_match(self):
        d = self.daemon(args=["--reject-unrouted", "yes"])
        # A header filter counts as true: the recipient filter decides.
        create_route(d, r'match_recipient("sales-(\d+)@example\.com") and match_header("subject", "x")',
                     ['forward("https://hooks.test/sales")'])
        self.assertReply(self.rcpt(d, "sales-12@example.com"), 250)
        self.assertReply(self.rcpt(d, "SALES-12@EXAMPLE.COM"), 550, "550 5.1.1")  # local part as received
        self.assertReply(self.rcpt(d, "sales-12@Example.Com"), 250)                # domain lower-cased
        self.assertReply(self.rcpt(d, "bob@example.com"), 550, "550 5.1.1 No such recipient")
        # A header-only route could match anyone; the change is seen by the next RCPT.
        create_route(d, 'match_header("subject", "(?i)urgent")', ["stop()"])
        self.assertReply(self.rcpt(d, "bob@example.com"), 250)

    def test_catch_all_accepts_everyone(self):
        d = self.daemon(args=["--reject-unrouted", "yes"])
        create_route(d, "catch_all()", ["store()"])
        with d.session() as s:
            code, lines = s.transaction("a@sender.test", ["anyone@example.com", "postmaster@example.com"],
                                        make_message())
            self.assertEqual(code, 250, lines)
            queued_id(lines)

    def test_refused_recipient_leaves_the_others(self):
        d = self.daemon(args=["--reject-unrouted", "yes"])
        create_route(d, r'match_recipient("bob@example\.com")', ['forward("https://hooks.test/b")'])
        with d.session() as s:
            self.assertReply(s.cmd("EHLO client.test"), 250)
            self.assertReply(s.cmd("MAIL FROM:<a@sender.test>"), 250)
            self.assertReply(s.cmd("RCPT TO:<carol@example.com>"), 550, "550 5.1.1")
            self.assertReply(s.cmd("RCPT TO:<bob@example.com>"), 250)
            self.assertReply(s.cmd("DATA"), 354)
            s.send(make_message() + b".\r\n")
            code, lines = s.reply()
            self.assertEqual(code, 250, lines)
            msg_id = queued_id(lines)
        self.assertEqual(json.loads(self.message(d, msg_id)["recipients"]), ["bob@example.com"])

    def test_no_accepts_without_routes(self):
        d = self.daemon(args=["--reject-unrouted", "no"])
        self.assertReply(self.rcpt(d, "bob@example.com"), 250)

    def test_environment_and_bad_value(self):
        d = self.daemon(env={"INLET_REJECT_UNROUTED": "yes"})
        self.assertReply(self.rcpt(d, "bob@example.com"), 550, "550 5.1.1")
        out = harness.run_cli(["check-config", "--reject-unrouted", "maybe"])
        self.assertEqual(out.returncode, 1)
        self.assertIn("--reject-unrouted", out.stderr)


if __name__ == "__main__":
    harness.main()
