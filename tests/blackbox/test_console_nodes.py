"""Web console sessions across nodes on one PostgreSQL (SPEC §7.1): a login made on one node is a
session on every node (a console behind a load balancer), and a logout on any node ends it on all
of them.  PostgreSQL only by nature (registered as bb-console-nodes-pg); one node's sessions are
test_console.py's."""

import json

from test_console import ConsoleCase


class ConsoleNodesTest(ConsoleCase):
    def test_a_login_is_known_to_every_node(self):
        a = self.start()
        b = self.daemon(database_url=a.database_url)
        cookie, csrf = self.session(a)
        c = {"Cookie": cookie, "X-Inlet-Console": "1"}
        st, _, body = b.http("GET", "/ui/session", headers=c, auth=False)
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["csrf"], csrf)
        # A change through the other node takes the session's CSRF token, and only it.
        check = "expression=" + "match_recipient(%22.*%22)"
        hdrs = dict(c, **{"Content-Type": "application/x-www-form-urlencoded"})
        st, _, body = b.http("POST", "/v3/routes/check", check, dict(hdrs, **{"X-CSRF-Token": csrf}), auth=False)
        self.assertEqual(st, 200, body)
        st, _, _ = b.http("POST", "/v3/routes/check", check, dict(hdrs, **{"X-CSRF-Token": "x" + csrf}), auth=False)
        self.assertEqual(st, 403)
        # Logged out on the second node: gone on the first too.
        st, _, _ = b.http("POST", "/ui/logout", headers=dict(c, **{"X-CSRF-Token": csrf}), auth=False)
        self.assertEqual(st, 200)
        st, _, body = a.http("GET", "/v3/routes", headers=c, auth=False)
        self.assertEqual((st, json.loads(body)["message"]), (401, "Invalid credentials"))
