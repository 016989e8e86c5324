"""The Routes API (SPEC §4, §7; reference/mailgun-behaviour.md §6): every endpoint, status and
shape, with both body encodings built by hand (urlencoded and multipart/form-data), `action`,
`action[]` and `action[N]`, PUT's flat + nested answer, paging and order, the quota, every 400
message, compile errors with their position, 404s, /match, the dry run /test, the RFC 1123
`created_at`, and routes surviving a restart."""

import email.utils
import json
import os
import re
import time
import urllib.parse

import harness
from harness import InletTestCase

ID_RE = re.compile(r"^[0-9a-f]{24}$")
ROUTE_KEYS = {"id", "priority", "description", "expression", "actions", "created_at"}
CREATED_AT_RE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                           r"\d{4} \d\d:\d\d:\d\d GMT$")

# Expressions and actions with everything that must come back byte for byte: both quote kinds,
# escaped quotes, backslashes PCRE2 reads, non-ASCII.
EXPR_TRICKY = r'''match_recipient("(?P<user>[^@]+)@example\.com") and match_header('Subject', 'it\'s ünïcode \d+')'''
ACTION_TRICKY = [r'''forward("https://hook.test/in/\g<user>?a=1&b=%20, \1@archive.test", format='json')''',
                 "stop()"]


# ---- bodies, built by hand ------------------------------------------------------------------
def urlencoded(fields):
    """fields: [(name, str)] -> (body bytes, content type)."""
    return (urllib.parse.urlencode([(k, v) for k, v in fields]).encode(),
            "application/x-www-form-urlencoded")


def multipart(fields, boundary=None):
    """fields: [(name, str | (filename, bytes, content_type))] -> (body bytes, content type).
    Plain fields are parts without a filename, as mailgun.js (form-data) sends them."""
    boundary = boundary or "----inlet" + os.urandom(8).hex()
    out = b""
    for name, v in fields:
        out += b"--" + boundary.encode() + b"\r\n"
        if isinstance(v, tuple):
            fn, data, ctype = v
            out += ('Content-Disposition: form-data; name="%s"; filename="%s"\r\n' % (name, fn)).encode()
            out += ("Content-Type: %s\r\n\r\n" % ctype).encode() + data + b"\r\n"
        else:
            out += ('Content-Disposition: form-data; name="%s"\r\n\r\n' % name).encode()
            out += v.encode() + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, 'multipart/form-data; boundary="%s"' % boundary


ENCODINGS = {"urlencoded": urlencoded, "multipart": multipart}


def call(d, method, path, fields=None, enc="urlencoded", query=None):
    """(status, parsed JSON) of one request."""
    if query:
        path += "?" + urllib.parse.urlencode(query)
    headers, body = {}, None
    if fields is not None:
        body, ctype = ENCODINGS[enc](fields)
        headers["Content-Type"] = ctype
    status, hdrs, raw = d.http(method, path, body=body, headers=headers)
    if method != "HEAD":
        assert hdrs.get("Content-Type") == "application/json", (status, hdrs, raw)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        raise AssertionError("not JSON: %r" % raw)


def route_fields(expression, actions, priority=None, description=None, action_name="action"):
    f = []
    if priority is not None:
        f.append(("priority", str(priority)))
    if description is not None:
        f.append(("description", description))
    if expression is not None:
        f.append(("expression", expression))
    for i, a in enumerate(actions):
        f.append((action_name.replace("N", str(i)), a))
    return f


class RoutesCase(InletTestCase):
    daemon_args = []

    def setUp(self):
        super().setUp()
        self.d = self.daemon(args=self.daemon_args)

    def create(self, expression, actions, priority=None, description=None, enc="urlencoded",
               action_name="action", want=200):
        st, body = call(self.d, "POST", "/v3/routes",
                        route_fields(expression, actions, priority, description, action_name), enc)
        self.assertEqual(st, want, body)
        if want == 200:
            self.assertEqual(body["message"], "Route has been created")
            self.assertRoute(body["route"])
            return body["route"]
        return body

    def list(self, **q):
        st, body = call(self.d, "GET", "/v3/routes", query=q or None)
        self.assertEqual(st, 200, body)
        self.assertEqual(set(body), {"total_count", "items"})
        return body

    def assertRoute(self, r, expression=None, actions=None, priority=None, description=None):
        self.assertEqual(set(r), ROUTE_KEYS, r)
        self.assertRegex(r["id"], ID_RE)
        self.assertIs(type(r["priority"]), int)
        self.assertRegex(r["created_at"], CREATED_AT_RE)
        if expression is not None:
            self.assertEqual(r["expression"], expression)
        if actions is not None:
            self.assertEqual(r["actions"], actions)
        if priority is not None:
            self.assertEqual(r["priority"], priority)
        if description is not None:
            self.assertEqual(r["description"], description)

    def assert400(self, st_body, message):
        st, body = st_body
        self.assertEqual(st, 400, body)
        self.assertEqual(body, {"message": message})


# ---------------------------------------------------------------------------------------------
class Create(RoutesCase):
    def test_create_and_get_both_encodings(self):
        for enc in ENCODINGS:
            with self.subTest(enc=enc):
                before = time.time()
                r = self.create(EXPR_TRICKY, ACTION_TRICKY, priority=-7, description="Søme route", enc=enc)
                self.assertRoute(r, EXPR_TRICKY, ACTION_TRICKY, -7, "Søme route")
                created = email.utils.parsedate_to_datetime(r["created_at"])
                self.assertIsNotNone(created.tzinfo, "created_at has a zone")
                self.assertEqual(created.utcoffset().total_seconds(), 0, "created_at is GMT")
                self.assertLessEqual(abs(created.timestamp() - before), 5)
                st, got = call(self.d, "GET", "/v3/routes/" + r["id"])
                self.assertEqual(st, 200, got)
                self.assertEqual(got, {"route": r})

    def test_action_forms(self):
        acts = ["forward('https://a.test/1')", "forward(\"b@c.test\")", "store()", "stop()"]
        for enc in ENCODINGS:
            for name in ("action", "action[]", "action[N]"):
                with self.subTest(enc=enc, name=name):
                    r = self.create("catch_all()", acts, enc=enc, action_name=name)
                    self.assertEqual(r["actions"], acts, "actions in the order sent")

    def test_defaults_and_ids(self):
        r1 = self.create("catch_all()", ["stop()"])
        self.assertEqual((r1["priority"], r1["description"]), (0, ""))
        r2 = self.create("catch_all()", ["stop()"], priority="+3")
        self.assertEqual(r2["priority"], 3)
        r3 = self.create("catch_all()", ["stop()"], priority=-2147483648)
        self.assertEqual(r3["priority"], -2147483648)
        self.assertEqual(len({r1["id"], r2["id"], r3["id"]}), 3)

    def test_400_messages(self):
        d = self.d
        post = lambda fields, enc="urlencoded": call(d, "POST", "/v3/routes", fields, enc)
        for enc in ENCODINGS:
            with self.subTest(enc=enc):
                self.assert400(post([("action", "stop()")], enc), "Expression is missing")
                self.assert400(post([("expression", ""), ("action", "stop()")], enc), "Expression is missing")
                self.assert400(post([("expression", "catch_all()")], enc), "'action' parameter is missing")
                self.assert400(post([("priority", "1")], enc), "Expression is missing")
        self.assert400(call(d, "POST", "/v3/routes"), "Expression is missing")
        for bad in ("abc", "1.5", "", " 1", "2147483648", "-2147483649", "0x10", "1e3"):
            with self.subTest(priority=bad):
                st, body = post([("priority", bad), ("expression", "catch_all()"), ("action", "stop()")])
                self.assertEqual(st, 400, body)
                self.assertIn("priority", body["message"])
        self.assertEqual(self.list()["total_count"], 0, "nothing was created")

    def test_compile_errors_name_the_position(self):
        cases = [
            ("match_recipient('a@b'", ["stop()"], "expression: position"),
            ("match_recipent('a@b')", ["stop()"], "expression: position 0"),
            ("match_recipient('(unclosed')", ["stop()"], "expression: position"),
            ("catch_all() or catch_all()", ["stop()"], "expression: position 12"),
            ("match_recipient('(.*)@x')", ["forward('https://h.test/\\g<nope>')"], "actions[0]: position"),
            ("catch_all()", ["stop()", "explode()"], "actions[1]: position 0"),
            ("x" * 4097, ["stop()"], "expression: position 4096"),
            ("catch_all()", ["forward('https://h.test/" + "a" * 4100 + "')"], "actions[0]: position 4096"),
        ]
        for expr, acts, want in cases:
            with self.subTest(expr=expr[:40], acts=[a[:40] for a in acts]):
                st, body = call(self.d, "POST", "/v3/routes", route_fields(expr, acts))
                self.assertEqual(st, 400, body)
                self.assertEqual(set(body), {"message"})
                self.assertTrue(body["message"].startswith(want), body["message"])
        self.assertEqual(self.list()["total_count"], 0)

    def test_text_checks(self):
        st, body = call(self.d, "POST", "/v3/routes",
                        [("expression", "catch_all()"), ("action", "stop()"), ("description", "d" * 4097)])
        self.assertEqual(st, 400, body)
        self.assertIn("description", body["message"])
        # Bytes that are not UTF-8 (multipart carries them as they are).
        raw, ctype = multipart([("expression", "catch_all()"), ("action", "stop()")])
        raw = raw.replace(b"catch_all()", b"catch_all(\xff)")
        st, _, out = self.d.http("POST", "/v3/routes", body=raw, headers={"Content-Type": ctype})
        self.assertEqual(st, 400, out)
        self.assertIn("UTF-8", json.loads(out)["message"])

    def test_unauthenticated(self):
        for method, path in (("GET", "/v3/routes"), ("POST", "/v3/routes"), ("GET", "/v3/routes/x"),
                             ("PUT", "/v3/routes/x"), ("DELETE", "/v3/routes/x"),
                             ("GET", "/v3/routes/match?address=a@example.com"), ("POST", "/v3/routes/test")):
            st, hdrs, body = self.d.http(method, path, auth=None)
            self.assertEqual(st, 401, (method, path))
            self.assertEqual(json.loads(body), {"message": "Invalid credentials"})
            st, hdrs, body = self.d.http(method, path, auth="wrong")
            self.assertEqual(st, 401, (method, path))


class ListOrder(RoutesCase):
    def test_order_and_paging(self):
        self.assertEqual(self.list(), {"total_count": 0, "items": []})
        prios = [5, -1, 5, 0, -1, 0, 5]
        made = [self.create("catch_all()", ["stop()"], priority=p, description="r%d" % i)
                for i, p in enumerate(prios)]
        # Evaluation order: priority, then creation (never the id).
        want = [r["id"] for r in sorted(made, key=lambda r: (r["priority"], int(r["description"][1:])))]
        full = self.list()
        self.assertEqual(full["total_count"], 7)
        self.assertEqual([r["id"] for r in full["items"]], want)
        self.assertEqual(self.list(limit=1000)["items"], full["items"])
        got = []
        skip = 0
        while True:  # as mailgun-go pages: skip += len(items) until an empty page
            page = self.list(skip=skip, limit=3)
            self.assertEqual(page["total_count"], 7)
            if not page["items"]:
                break
            self.assertLessEqual(len(page["items"]), 3)
            got += page["items"]
            skip += len(page["items"])
        self.assertEqual(got, full["items"])
        self.assertEqual(self.list(skip=7)["items"], [])
        self.assertEqual(self.list(skip=100000000000000000000)["items"], [])
        self.assertEqual(self.list(limit=0)["items"], [])
        self.assertEqual([r["id"] for r in self.list(skip=2, limit=2)["items"]], want[2:4])

    def test_limit_and_skip_errors(self):
        msg = "The 'limit' parameter can't be larger than 1000"
        self.assert400(call(self.d, "GET", "/v3/routes", query={"limit": "1001"}), msg)
        self.assert400(call(self.d, "GET", "/v3/routes", query={"limit": "99999999999999999999999"}), msg)
        for q in ({"limit": "abc"}, {"limit": "-1"}, {"limit": ""}, {"skip": "-1"}, {"skip": "x"},
                  {"skip": "1.0"}):
            with self.subTest(q=q):
                st, body = call(self.d, "GET", "/v3/routes", query=q)
                self.assertEqual(st, 400, body)
                self.assertIn(list(q)[0], body["message"])


class Update(RoutesCase):
    def test_put_shape_and_subsets(self):
        for enc in ENCODINGS:
            with self.subTest(enc=enc):
                r = self.create("match_recipient('a@example.com')", ["forward('https://h.test/a')", "stop()"],
                                priority=4, description="first", enc=enc)
                # Only the priority: everything else stays, the answer is flat AND nested.
                st, body = call(self.d, "PUT", "/v3/routes/" + r["id"], [("priority", "9")], enc)
                self.assertEqual(st, 200, body)
                want = dict(r, priority=9)
                self.assertEqual(body["message"], "Route has been updated")
                self.assertEqual(body["route"], want)
                self.assertEqual({k: body[k] for k in ROUTE_KEYS}, want)
                self.assertEqual(set(body), ROUTE_KEYS | {"message", "route"})
                # Given actions replace the whole list; priority absent is not reset to 0.
                acts = ["store(notify='https://h.test/n')"]
                st, body = call(self.d, "PUT", "/v3/routes/" + r["id"],
                                [("action[]", acts[0]), ("description", "")], enc)
                self.assertEqual(st, 200, body)
                want = dict(want, actions=acts, description="")
                self.assertEqual(body["route"], want)
                # Expression.
                st, body = call(self.d, "PUT", "/v3/routes/" + r["id"], [("expression", EXPR_TRICKY)], enc)
                self.assertEqual(st, 200, body)
                want = dict(want, expression=EXPR_TRICKY)
                self.assertEqual(body["route"], want)
                # Nothing given: unchanged.
                st, body = call(self.d, "PUT", "/v3/routes/" + r["id"], [], enc)
                self.assertEqual(st, 200, body)
                self.assertEqual(body["route"], want)
                self.assertEqual(call(self.d, "GET", "/v3/routes/" + r["id"])[1], {"route": want})
                # id and created_at never change.
                self.assertEqual((want["id"], want["created_at"]), (r["id"], r["created_at"]))

    def test_put_errors_leave_the_route(self):
        r = self.create("catch_all()", ["stop()"], priority=1)
        rid = r["id"]
        st, body = call(self.d, "PUT", "/v3/routes/" + rid, [("expression", "match_recipient(")])
        self.assertEqual(st, 400, body)
        self.assertTrue(body["message"].startswith("expression: position"), body)
        st, body = call(self.d, "PUT", "/v3/routes/" + rid, [("action", "nope()")])
        self.assertEqual(st, 400, body)
        self.assertTrue(body["message"].startswith("actions[0]: position 0"), body)
        st, body = call(self.d, "PUT", "/v3/routes/" + rid, [("priority", "high")])
        self.assertEqual(st, 400, body)
        self.assertIn("priority", body["message"])
        self.assert400(call(self.d, "PUT", "/v3/routes/" + rid, [("expression", "")]), "Expression is missing")
        self.assertEqual(call(self.d, "GET", "/v3/routes/" + rid)[1], {"route": r})
        self.assertEqual(call(self.d, "PUT", "/v3/routes/" + "0" * 24, [("priority", "1")]),
                         (404, {"message": "Route not found"}))

    def test_put_reorders(self):
        a = self.create("catch_all()", ["stop()"], priority=1)
        b = self.create("catch_all()", ["stop()"], priority=2)
        self.assertEqual([r["id"] for r in self.list()["items"]], [a["id"], b["id"]])
        call(self.d, "PUT", "/v3/routes/" + b["id"], [("priority", "0")])
        self.assertEqual([r["id"] for r in self.list()["items"]], [b["id"], a["id"]])
        call(self.d, "PUT", "/v3/routes/" + b["id"], [("priority", "1")])
        # Tie on priority: creation order decides, whatever was updated last.
        self.assertEqual([r["id"] for r in self.list()["items"]], [a["id"], b["id"]])


class Delete(RoutesCase):
    def test_delete_and_404s(self):
        r = self.create("catch_all()", ["stop()"])
        keep = self.create("catch_all()", ["stop()"])
        st, body = call(self.d, "DELETE", "/v3/routes/" + r["id"])
        self.assertEqual((st, body), (200, {"message": "Route has been deleted", "id": r["id"]}))
        nf = (404, {"message": "Route not found"})
        self.assertEqual(call(self.d, "GET", "/v3/routes/" + r["id"]), nf)
        self.assertEqual(call(self.d, "DELETE", "/v3/routes/" + r["id"]), nf)
        self.assertEqual(call(self.d, "GET", "/v3/routes/nonexistent"), nf)
        self.assertEqual(call(self.d, "GET", "/v3/routes/%2e%2e"), nf)
        self.assertEqual(self.list(), {"total_count": 1, "items": [keep]})
        st, hdrs, _ = self.d.http("POST", "/v3/routes/" + keep["id"])
        self.assertEqual(st, 405)
        self.assertEqual(hdrs.get("Allow"), "GET, PUT, DELETE")


class Match(RoutesCase):
    def test_match(self):
        hdr = self.create("match_header('Subject', 'x')", ["stop()"], priority=-10)
        ca = self.create("catch_all()", ["stop()"], priority=-9)
        sales = self.create(r"match_recipient('sales@example\.com') and match_header('X', 'y')", ["stop()"], priority=1)
        anyone = self.create(r"match_recipient('.*@example\.com')", ["stop()"], priority=2)
        m = lambda a: call(self.d, "GET", "/v3/routes/match", query={"address": a})
        self.assertEqual(m("sales@example.com"), (200, {"route": sales}))
        self.assertEqual(m("sales@EXAMPLE.COM"), (200, {"route": sales}), "domain compared lower-cased")
        self.assertEqual(m("bob@example.com"), (200, {"route": anyone}))
        self.assertEqual(m("bob@example.org"), (404, {"message": "Route not found"}))
        self.assertEqual(call(self.d, "GET", "/v3/routes/match"), (400, {"message": "'address' parameter is missing"}))
        self.assertEqual(m(""), (400, {"message": "'address' parameter is missing"}))
        self.assertNotIn(hdr["id"], (sales["id"], anyone["id"]))
        self.assertNotIn(ca["id"], (sales["id"], anyone["id"]))
        st, hdrs, _ = self.d.http("POST", "/v3/routes/match")
        self.assertEqual(st, 405)


class Quota(RoutesCase):
    daemon_args = ["--route-quota", "2"]

    def test_quota(self):
        a = self.create("catch_all()", ["stop()"])
        self.create("catch_all()", ["stop()"], enc="multipart")
        for enc in ENCODINGS:
            self.assert400(call(self.d, "POST", "/v3/routes", route_fields("catch_all()", ["stop()"]), enc),
                           "Routes quota (2) is exceeded")
        self.assertEqual(self.list()["total_count"], 2)
        # Updating is not creating.
        self.assertEqual(call(self.d, "PUT", "/v3/routes/" + a["id"], [("priority", "3")])[0], 200)
        call(self.d, "DELETE", "/v3/routes/" + a["id"])
        self.create("catch_all()", ["stop()"])
        self.assertEqual(self.list()["total_count"], 2)


class QuotaZero(RoutesCase):
    daemon_args = ["--route-quota", "0"]

    def test_quota_zero(self):
        self.assert400(call(self.d, "POST", "/v3/routes", route_fields("catch_all()", ["stop()"])),
                       "Routes quota (0) is exceeded")


class DryRun(RoutesCase):
    MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.com\r\n"
               b"Subject: =?utf-8?q?Invoice_4711_f=C3=BCr_you?=\r\nMessage-ID: <t1@sender.test>\r\n"
               b"\r\nhello\r\n")

    def test_captures_and_dedup(self):
        user = self.create(r"match_recipient('(?P<user>[^@]+)@(example\.com)')",
                           [r"forward('https://hook.test/u/\g<user>?d=\2, \1@archive.test')"], priority=1)
        inv = self.create(r"match_header('subject', '(?i)invoice (\d+) für') and match_recipient('bob@')",
                          [r"forward('https://hook.test/u/bob?d=example.com', format='mailgun')",
                           r"store(notify='https://hook.test/n/\1')"], priority=2)
        same = self.create(r"match_recipient('.*')", [r"forward('https://hook.test/u/bob?d=example.com')"],
                           priority=3)
        stopper = self.create("match_recipient('carol@')", ["store()", "stop()"], priority=0)
        never = self.create("catch_all()", ["forward('https://hook.test/catch')"], priority=4)
        before = harness.query(self.d, "SELECT count(*) AS n FROM messages")[0]["n"]
        routes_before = self.list()

        for enc in ("multipart",):
            fields = [("message", ("m.eml", self.MESSAGE, "message/rfc822")), ("sender", "alice@sender.test"),
                      ("recipient", "bob@example.com"), ("recipient", "carol@example.com, dave@other.test")]
            st, body = call(self.d, "POST", "/v3/routes/test", fields, enc)
            self.assertEqual(st, 200, body)
            rs = body["recipients"]
            self.assertEqual([r["recipient"] for r in rs], ["bob@example.com", "carol@example.com", "dave@other.test"])
            bob = rs[0]
            self.assertEqual([h["id"] for h in bob["routes"]], [user["id"], inv["id"], same["id"]])
            self.assertEqual(bob["routes"][0]["captures"], {"1": "bob", "2": "example.com", "user": "bob"})
            self.assertEqual(bob["routes"][0]["actions"],
                             ['forward("https://hook.test/u/bob?d=example.com, bob@archive.test")'])
            self.assertEqual(bob["routes"][1]["captures"], {"1": "4711"})
            self.assertEqual(bob["routes"][1]["actions"][1], 'store(notify="https://hook.test/n/4711")')
            deliveries = {(x["kind"], x["target"], x["format"]): x["route_ids"] for x in bob["deliveries"]}
            self.assertEqual(deliveries, {
                ("url", "https://hook.test/u/bob?d=example.com", ""): [user["id"], same["id"]],
                ("address", "bob@archive.test", ""): [user["id"]],
                ("url", "https://hook.test/u/bob?d=example.com", "mailgun"): [inv["id"]],
            })
            self.assertEqual(bob["stored"], 1)
            carol = rs[1]
            self.assertEqual([h["id"] for h in carol["routes"]], [stopper["id"]], "stop() ends evaluation")
            self.assertEqual((carol["deliveries"], carol["stored"]), ([], 1))
            dave = rs[2]
            self.assertEqual([h["id"] for h in dave["routes"]], [same["id"]])
            self.assertNotIn(never["id"], json.dumps(body), "catch_all only when nothing matched before")
            for r in rs:
                self.assertTrue({"recipient", "routes", "deliveries", "stored"} <= set(r), r)

        # catch_all when nothing else matched.
        call(self.d, "DELETE", "/v3/routes/" + same["id"])
        st, body = call(self.d, "POST", "/v3/routes/test",
                        [("message", ("m.eml", self.MESSAGE, "message/rfc822")), ("recipient", "zed@other.test")],
                        "multipart")
        self.assertEqual(st, 200, body)
        self.assertEqual([h["id"] for h in body["recipients"][0]["routes"]], [never["id"]])

        # No side effects.
        after = harness.query(self.d, "SELECT count(*) AS n FROM messages")[0]["n"]
        self.assertEqual(after, before)
        self.assertEqual(self.list()["total_count"], routes_before["total_count"] - 1)

    def test_errors(self):
        msg = ("message", ("m.eml", self.MESSAGE, "message/rfc822"))
        self.assert400(call(self.d, "POST", "/v3/routes/test", [("recipient", "a@example.com")], "multipart"),
                       "'message' parameter is missing")
        self.assert400(call(self.d, "POST", "/v3/routes/test", [msg], "multipart"),
                       "'recipient' parameter is missing")
        self.assert400(call(self.d, "POST", "/v3/routes/test", [msg, ("recipient", " , ")], "multipart"),
                       "'recipient' parameter is missing")
        self.assertEqual(call(self.d, "GET", "/v3/routes/test"), (404, {"message": "Route not found"}))


class Concurrent(RoutesCase):
    daemon_args = ["--route-quota", "30"]

    def test_concurrent_creates_respect_quota_and_order(self):
        import threading
        results, lock = [], threading.Lock()

        def worker(w):
            for i in range(5):
                st, body = call(self.d, "POST", "/v3/routes",
                                route_fields("catch_all()", ["stop()"], description="w%d-%d" % (w, i)),
                                "multipart" if w % 2 else "urlencoded")
                with lock:
                    results.append((st, body))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(harness.timeout(60))
        ok = [b["route"] for st, b in results if st == 200]
        refused = [b for st, b in results if st != 200]
        self.assertEqual(len(ok), 30, "exactly the quota was created")
        self.assertEqual(refused, [{"message": "Routes quota (30) is exceeded"}] * 10)
        listed = self.list(limit=100)
        self.assertEqual(listed["total_count"], 30)
        self.assertEqual(len({r["id"] for r in listed["items"]}), 30)
        # Per writer, creation order is kept (same priority: the hidden sequence decides).
        for w in range(8):
            mine = [r["description"] for r in listed["items"] if r["description"].startswith("w%d-" % w)]
            self.assertEqual(mine, sorted(mine), mine)


class Restart(RoutesCase):
    def test_routes_survive_a_restart(self):
        a = self.create("match_recipient('a@example.com')", ["forward('https://h.test/a')"], priority=3)
        b = self.create(EXPR_TRICKY, ACTION_TRICKY, priority=3, description="ü", enc="multipart")
        c = self.create("catch_all()", ["store()"], priority=-1)
        gone = self.create("catch_all()", ["stop()"], priority=0)
        call(self.d, "PUT", "/v3/routes/" + a["id"], [("action", "forward('https://h.test/a2')")])
        call(self.d, "DELETE", "/v3/routes/" + gone["id"])
        before = self.list()
        self.assertEqual([r["id"] for r in before["items"]], [c["id"], a["id"], b["id"]])
        self.d.restart()
        self.assertEqual(self.list(), before)
        self.assertEqual(call(self.d, "GET", "/v3/routes/match", query={"address": "a@example.com"})[1]["route"]["id"],
                         a["id"])
        # New routes keep coming after the loaded ones.
        d = self.create("catch_all()", ["stop()"], priority=3)
        self.assertEqual([r["id"] for r in self.list()["items"]], [c["id"], a["id"], b["id"], d["id"]])


if __name__ == "__main__":
    harness.main()
