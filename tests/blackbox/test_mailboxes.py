"""Mailboxes for POP3 pollers, their REST API and the route action that files into them (SPEC §9).

POST/GET/PUT/DELETE /v3/mailboxes with every error; the password kept only as a yescrypt hash and
never logged; store(mailbox="...") with captures and ttl=, the mailbox's retention, the "stored"
event naming the mailbox; deleting a mailbox deletes its messages.  The POP3 side is
test_pop3.py."""

import json
import os
import threading
import time
import urllib.parse

import harness
from harness import InletTestCase
from test_storage_api import create_route, send, wait_routed

PASSWORD = "correct horse battery"


def form(d, method, path, fields):
    return d.http(method, path, urllib.parse.urlencode(fields).encode(),
                  {"Content-Type": "application/x-www-form-urlencoded"})


def create_mailbox(d, name, password=PASSWORD, **extra):
    status, _, body = form(d, "POST", "/v3/mailboxes", [("name", name), ("password", password)] +
                           [(k, str(v)) for k, v in extra.items()])
    assert status == 200, (status, body)
    return json.loads(body)["mailbox"]


class MailboxApiTest(InletTestCase):
    def test_create_get_list_update_delete(self):
        d = self.daemon()
        status, _, body = form(d, "POST", "/v3/mailboxes", [("name", "Support"), ("password", PASSWORD)])
        self.assertEqual(status, 200, body)
        j = json.loads(body)
        self.assertEqual(j["message"], "Mailbox has been created")
        m = j["mailbox"]
        self.assertEqual((m["name"], m["retention"], m["messages"], m["size"]), ("support", None, 0, 0))
        self.assertNotIn("password", body.decode())
        (row,) = harness.query(d, "SELECT password_hash FROM mailboxes WHERE name = 'support'")
        self.assertTrue(row["password_hash"].startswith("$y$"), row["password_hash"])
        self.assertNotIn(PASSWORD, d.all_log_text())
        self.assertNotIn(row["password_hash"], d.all_log_text())

        status, _, body = form(d, "POST", "/v3/mailboxes", [("name", "support"), ("password", PASSWORD)])
        self.assertEqual((status, json.loads(body)), (409, {"message": "Mailbox already exists"}))
        create_mailbox(d, "billing", retention=3600)

        status, _, body = d.http("GET", "/v3/mailboxes")
        self.assertEqual(status, 200)
        self.assertEqual([x["name"] for x in json.loads(body)["items"]], ["billing", "support"])
        status, _, body = d.http("GET", "/v3/mailboxes?limit=1&after=billing")
        self.assertEqual([x["name"] for x in json.loads(body)["items"]], ["support"])
        status, _, body = d.http("GET", "/v3/mailboxes/billing")
        self.assertEqual(json.loads(body)["mailbox"]["retention"], 3600)

        before = row["password_hash"]
        status, _, body = form(d, "PUT", "/v3/mailboxes/support", [("password", "another password 2")])
        self.assertEqual(status, 200, body)
        (row,) = harness.query(d, "SELECT password_hash FROM mailboxes WHERE name = 'support'")
        self.assertNotEqual(row["password_hash"], before)
        status, _, body = form(d, "PUT", "/v3/mailboxes/support", [("retention", "60")])
        self.assertEqual(json.loads(body)["mailbox"]["retention"], 60)
        status, _, body = form(d, "PUT", "/v3/mailboxes/support", [("retention", "0")])
        self.assertIsNone(json.loads(body)["mailbox"]["retention"])

        status, _, body = d.http("DELETE", "/v3/mailboxes/support")
        self.assertEqual((status, json.loads(body)), (200, {"message": "Mailbox has been deleted", "name": "support"}))
        for method in ("GET", "DELETE"):
            status, _, body = d.http(method, "/v3/mailboxes/support")
            self.assertEqual((status, json.loads(body)), (404, {"message": "Mailbox not found"}))
        status, _, body = form(d, "PUT", "/v3/mailboxes/support", [("password", PASSWORD)])
        self.assertEqual(status, 404)

    def test_password_hashing_holds_no_api_thread(self):
        """A mailbox write hashes its password (yescrypt, tens of ms) on the API's own hashers
        while the request waits suspended: three writes whose hashes are held (the shim's
        INLET_SHIM_CRYPT_HOLD) leave the API_THREADS (2) free, and a read is answered meanwhile."""
        hold = os.path.join(self.tmp, "crypt-hold")
        open(hold, "w").close()
        d = self.daemon(shim=True, env={"INLET_SHIM_CRYPT_HOLD": hold})
        results = {}

        def create(name):
            results[name] = form(d, "POST", "/v3/mailboxes", [("name", name), ("password", PASSWORD)])[0]

        writers = [threading.Thread(target=create, args=("m%d" % i,)) for i in range(3)]
        for t in writers:
            t.start()
        # Let go of the hashes after a while whatever happens, so that the test ends either way.
        release = threading.Timer(harness.timeout(8), lambda: os.path.exists(hold) and os.unlink(hold))
        release.start()
        try:
            # Two hashes under way (two hashers; the third write waits for one): before, the two
            # API threads would have been the ones hashing, and the read would wait for them.
            deadline = time.monotonic() + harness.timeout(10)
            while sum(1 for e in d.shim_events() if e["kind"] == "CRYPT") < 2:
                self.assertLess(time.monotonic(), deadline, "no two password hashes began")
                time.sleep(0.05)
            status, _, body = d.http("GET", "/v3/mailboxes", http_timeout=harness.timeout(30))
            answered_while_held = os.path.exists(hold)
            self.assertEqual(status, 200, body)
            self.assertTrue(answered_while_held, "the read waited for the held hashes")
            self.assertTrue(all(t.is_alive() for t in writers), "the writes waited for their hashes")
        finally:
            release.cancel()
            if os.path.exists(hold):
                os.unlink(hold)
            for t in writers:
                t.join(harness.timeout(30))
        self.assertEqual(results, {"m0": 200, "m1": 200, "m2": 200})
        status, _, body = d.http("GET", "/v3/mailboxes")
        self.assertEqual(sorted(m["name"] for m in json.loads(body)["items"]), ["m0", "m1", "m2"])

    def test_errors(self):
        d = self.daemon()
        cases = [
            ([("password", PASSWORD)], "Invalid 'name' parameter"),
            ([("name", "has space"), ("password", PASSWORD)], "Invalid 'name' parameter"),
            ([("name", "x" * 65), ("password", PASSWORD)], "Invalid 'name' parameter"),
            ([("name", "ok")], "Invalid 'password' parameter"),
            ([("name", "ok"), ("password", "short")], "Invalid 'password' parameter"),
            ([("name", "ok"), ("password", "p" * 257)], "Invalid 'password' parameter"),
            ([("name", "ok"), ("password", "line\nbreak!")], "Invalid 'password' parameter"),
            ([("name", "ok"), ("password", PASSWORD), ("retention", "-1")], "Invalid 'retention' parameter"),
            ([("name", "ok"), ("password", PASSWORD), ("retention", "316224001")], "Invalid 'retention' parameter"),
        ]
        for fields, want in cases:
            status, _, body = form(d, "POST", "/v3/mailboxes", fields)
            self.assertEqual(status, 400, (fields, body))
            self.assertTrue(json.loads(body)["message"].startswith(want), (fields, body))
        create_mailbox(d, "x" * 64)
        status, _, body = form(d, "PUT", "/v3/mailboxes/" + "x" * 64, [])
        self.assertEqual(status, 400, body)
        status, _, body = d.http("GET", "/v3/mailboxes?limit=0")
        self.assertEqual(status, 400, body)
        status, _, _ = d.http("GET", "/v3/mailboxes", auth=None)
        self.assertEqual(status, 401)
        status, _, _ = d.http("POST", "/v3/mailboxes", b"name=a&password=abcdefghij", auth="wrong")
        self.assertEqual(status, 401)


class FilingTest(InletTestCase):
    def test_store_mailbox_with_captures_ttl_and_retention(self):
        d = self.daemon()
        create_mailbox(d, "support")
        create_mailbox(d, "kept", retention=7200)
        create_route(d, r'match_recipient("(?P<user>[a-z]+)@example\.com")',
                     ['store(mailbox="\\g<user>")', 'forward("https://hooks.invalid/x")'])
        create_route(d, r'match_recipient("ttl@example\.com")', ['store(mailbox="Support", ttl=600)', 'stop()'], priority=-1)
        body = b"From: a@sender.test\r\nSubject: filed\r\n\r\nhello\r\n"
        ids = {}
        for rcpt in ("support@example.com", "kept@example.com", "ttl@example.com"):
            ids[rcpt] = send(d, [rcpt], body)
            wait_routed(d, ids[rcpt])
        rows = {r["recipient"]: r for r in harness.query(
            d, "SELECT recipient, mailbox, expires_at - created_at AS ttl FROM stored")}
        self.assertEqual((rows["support@example.com"]["mailbox"], rows["support@example.com"]["ttl"]),
                         ("support", 5184000))
        self.assertEqual((rows["kept@example.com"]["mailbox"], rows["kept@example.com"]["ttl"]), ("kept", 7200))
        # The first route (priority -1) matched ttl@ and files into "support" (lower case).
        self.assertEqual(rows["ttl@example.com"]["mailbox"], "support")
        self.assertEqual(rows["ttl@example.com"]["ttl"], 600)

        status, _, b = d.http("GET", "/v3/example.com/events?event=stored&recipient=kept@example.com")
        (ev,) = json.loads(b)["items"]
        self.assertEqual(ev["mailbox"], "kept", ev)
        self.assertEqual(ev["storage"]["key"], harness.query(
            d, "SELECT key FROM stored WHERE mailbox = 'kept'")[0]["key"])

        status, _, b = d.http("GET", "/v3/mailboxes/support")
        m = json.loads(b)["mailbox"]
        self.assertEqual(m["messages"], 2)
        self.assertGreater(m["size"], len(body) * 2)

        # Deleting a mailbox deletes its messages.
        d.http("DELETE", "/v3/mailboxes/support")
        left = harness.query(d, "SELECT mailbox FROM stored ORDER BY mailbox")
        self.assertEqual([r["mailbox"] for r in left], ["kept"])

    def test_invalid_name_after_substitution_is_not_filed(self):
        d = self.daemon()
        create_route(d, r'match_recipient("(.*)@example\.com")', ['store(mailbox="\\1")'])
        msg = send(d, ["we%ird@example.com"], b"Subject: x\r\n\r\nx\r\n")
        wait_routed(d, msg)
        self.assertEqual(harness.query(d, "SELECT key FROM stored"), [])
        (row,) = harness.query(d, "SELECT warnings FROM recipients WHERE message_id = ?", (msg,))
        self.assertIn("mailbox name not valid", row["warnings"])

    def test_action_errors(self):
        d = self.daemon()
        for action, want in [('store(ttl=5)', "ttl= needs mailbox="),
                             ('store(mailbox="")', "empty mailbox name"),
                             ('store(mailbox="a", ttl=0)', "ttl must be"),
                             ('store(mailbox="a", ttl="x")', "ttl must be"),
                             ('store(mailbox="a", mailbox="b")', "mailbox= given twice")]:
            fields = [("expression", "catch_all()"), ("action", action)]
            status, _, body = d.http("POST", "/v3/routes", urllib.parse.urlencode(fields),
                                     {"Content-Type": "application/x-www-form-urlencoded"})
            self.assertEqual(status, 400, (action, body))
            self.assertIn(want, json.loads(body)["message"], action)


if __name__ == "__main__":
    harness.main()
