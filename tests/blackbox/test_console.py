"""The web console (SPEC §7.1): its C side over plain HTTP, then the pages in a real browser.

ConsoleHttpTest: the assets and their caching, the CSP and the other headers, the session cookie's
flags, the CSRF refusal (403 JSON), session expiry (401 "Session expired"), the login throttle,
POST /v3/routes/check.

ConsoleBrowserTest: Debian's chromium through chromedriver (python3-selenium), headless, the driver
on a free loopback port, stopped at the end whatever happens: log in, create a route in the form
and find it through the REST API, send a message over SMTP and see it in the live events, open it,
download an attachment, replay a failed delivery once the receiver is back; a message whose
subject, sender name and HTML body carry script and onerror= payloads runs none of them (they
would set window flags, or ask a local URL the test watches).  Screenshots of every page at 1280
and 360 px wide go to $INLET_SCREENSHOT_DIR (tests/blackbox/meson.build: <build>/console-screenshots/
<test name>/).
"""
import base64
import hashlib
import email.utils
import json
import os
import shutil
import sys
import time
import unittest
import urllib.parse

# Debian's python3-selenium lives in /usr/bin/python3's path; meson may have found another
# python3 first (pyenv): run this file with Debian's then.
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False
    if (os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3")
            and not os.environ.get("INLET_CONSOLE_REEXEC")):
        os.environ["INLET_CONSOLE_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)

import harness
from harness import InletTestCase, timeout
from receivers import WebhookReceiver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def form(fields):
    return urllib.parse.urlencode(fields), {"Content-Type": "application/x-www-form-urlencoded"}


class ConsoleCase(InletTestCase):
    def start(self, args=(), **kw):
        d = self.daemon(args=list(args), **kw)
        self.key = d.keys()["api_key"]
        return d

    def login(self, d, key=None):
        """POST /ui/login: (status, headers, json)."""
        body, hdrs = form([("key", key or self.key)])
        hdrs["X-Inlet-Console"] = "1"
        st, h, b = d.http("POST", "/ui/login", body, hdrs, auth=False)
        return st, h, json.loads(b)

    def session(self, d):
        st, h, j = self.login(d)
        self.assertEqual(st, 200, j)
        cookie = h["Set-Cookie"].split(";")[0]
        return cookie, j["csrf"]

    def route(self, d, expression, actions, description="console test"):
        body, hdrs = form([("priority", "0"), ("description", description), ("expression", expression)] +
                          [("action", a) for a in actions])
        st, _, b = d.http("POST", "/v3/routes", body, hdrs)
        self.assertEqual(st, 200, b)
        return json.loads(b)["route"]["id"]


class ConsoleHttpTest(ConsoleCase):
    def test_index_and_assets_are_served_with_csp_and_content_hashes(self):
        d = self.start()
        st, h, body = d.http("GET", "/ui/", auth=False)
        self.assertEqual(st, 200)
        self.assertEqual(h["Content-Type"], "text/html; charset=utf-8")
        self.assertEqual(h["Cache-Control"], "no-cache")
        csp = h["Content-Security-Policy"]
        self.assertIn("script-src 'self'", csp)
        self.assertIn("default-src 'none'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertEqual(h["X-Content-Type-Options"], "nosniff")
        text = body.decode()
        self.assertNotIn("{{", text, "every asset placeholder is replaced")
        self.assertNotIn("<script>", text, "no inline script")
        urls = [u for u in text.split('"') if u.startswith("/ui/assets/")]
        self.assertEqual(len(urls), 3, urls)  # favicon, css, js
        for u in urls:
            st, h, b = d.http("GET", u, auth=False)
            self.assertEqual(st, 200, u)
            self.assertEqual(h["Cache-Control"], "public, max-age=31536000, immutable")
            self.assertIn("script-src 'self'", h["Content-Security-Policy"])
            import hashlib
            self.assertEqual(u.split("/")[3], hashlib.sha256(b).hexdigest()[:16], "the URL names the content's hash")
            wrong = u.replace(u.split("/")[3], "0" * 16)
            self.assertEqual(d.http("GET", wrong, auth=False)[0], 404)
        self.assertTrue(any(u.endswith("/app.js") for u in urls))
        st, h, _ = d.http("GET", "/ui", auth=False)
        self.assertEqual((st, h["Location"]), (301, "/ui/"))

    def test_login_sets_a_strict_httponly_cookie_and_wrong_keys_are_refused(self):
        d = self.start()
        st, h, j = self.login(d, key="wrong")
        self.assertEqual((st, j), (401, {"message": "Invalid API key"}))
        self.assertIsNone(h.get("Set-Cookie"))
        # Without the console's header (a form posted from another site): refused.
        body, hdrs = form([("key", self.key)])
        st, _, b = d.http("POST", "/ui/login", body, hdrs, auth=False)
        self.assertEqual(st, 403, b)
        st, h, j = self.login(d)
        self.assertEqual(st, 200, j)
        flags = [f.strip() for f in h["Set-Cookie"].split(";")]
        self.assertTrue(flags[0].startswith("inlet_session=") and len(flags[0]) > 50, flags)
        for f in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
            self.assertIn(f, flags)
        self.assertNotIn("Secure", flags, "plain http: no Secure flag")
        self.assertEqual(j["domains"], ["example.com"])
        self.assertTrue(len(j["csrf"]) >= 40)

    def test_secure_flag_under_an_https_public_url(self):
        d = self.start(["--public-url", "https://mail.example.com"])
        st, h, _ = self.login(d)
        self.assertEqual(st, 200)
        self.assertIn("Secure", [f.strip() for f in h["Set-Cookie"].split(";")])

    def test_session_reads_but_changes_need_the_csrf_token(self):
        d = self.start()
        cookie, csrf = self.session(d)
        c = {"Cookie": cookie, "X-Inlet-Console": "1"}
        st, _, b = d.http("GET", "/v3/routes", headers=c, auth=False)
        self.assertEqual(st, 200, b)
        st, _, b = d.http("GET", "/ui/session", headers=c, auth=False)
        self.assertEqual((st, json.loads(b)["csrf"]), (200, csrf))
        body, hdrs = form([("expression", 'match_recipient("a@example.com")'), ("action", "stop()")])
        for bad in (None, "x" * len(csrf), csrf[:-1]):
            h = dict(c, **hdrs)
            if bad is not None:
                h["X-CSRF-Token"] = bad
            st, _, b = d.http("POST", "/v3/routes", body, h, auth=False)
            self.assertEqual((st, json.loads(b)), (403, {"message": "Missing or invalid CSRF token"}), bad)
        self.assertEqual(json.loads(d.http("GET", "/v3/routes")[2])["total_count"], 0, "nothing was created")
        st, _, b = d.http("POST", "/v3/routes", body, dict(c, **hdrs, **{"X-CSRF-Token": csrf}), auth=False)
        self.assertEqual(st, 200, b)
        # DELETE too.
        rid = json.loads(b)["route"]["id"]
        st, _, b = d.http("DELETE", "/v3/routes/" + rid, headers=c, auth=False)
        self.assertEqual(st, 403, b)
        # No WWW-Authenticate for the console's requests (no browser password dialog), as for
        # the API's own clients.
        st, h, b = d.http("GET", "/v3/routes", headers={"X-Inlet-Console": "1"}, auth=False)
        self.assertEqual(st, 401)
        self.assertIsNone(h.get("WWW-Authenticate"))
        st, h, b = d.http("GET", "/v3/routes", auth=False)
        self.assertEqual(h.get("WWW-Authenticate"), 'Basic realm="inlet"')
        # Logout ends the session.
        st, h, _ = d.http("POST", "/ui/logout", headers=dict(c, **{"X-CSRF-Token": csrf}), auth=False)
        self.assertEqual(st, 200)
        self.assertIn("Max-Age=0", h["Set-Cookie"])
        st, _, b = d.http("GET", "/v3/routes", headers=c, auth=False)
        self.assertEqual((st, json.loads(b)["message"]), (401, "Invalid credentials"))

    def test_session_expires(self):
        d = self.start(["--console-session-ttl", "1"])
        cookie, _ = self.session(d)
        c = {"Cookie": cookie, "X-Inlet-Console": "1"}
        self.assertEqual(d.http("GET", "/v3/routes", headers=c, auth=False)[0], 200)
        deadline = time.monotonic() + timeout(5)
        while True:
            st, _, b = d.http("GET", "/v3/routes", headers=c, auth=False)
            if st != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual((st, json.loads(b)), (401, {"message": "Session expired"}))
        # That answer deleted its row (a write of its own, not waited for): then the cookie is
        # unknown, as a forged one.
        deadline = time.monotonic() + timeout(5)
        while True:
            st, _, b = d.http("GET", "/v3/routes", headers=c, auth=False)
            if json.loads(b)["message"] != "Session expired" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual((st, json.loads(b)["message"]), (401, "Invalid credentials"), "an expired session is gone")
        self.assertEqual(d.query("SELECT count(*) FROM console_sessions")[0][0], 0, "its row deleted")
        st, _, b = d.http("GET", "/v3/routes", headers={"Cookie": "inlet_session=forged"}, auth=False)
        self.assertEqual(st, 401)

    def test_session_outlives_a_restart(self):
        """Sessions are rows in the database (migration 13), not in the process: a restart logs
        nobody out, and the database holds the cookie's SHA-256, never the cookie."""
        d = self.start()
        cookie, csrf = self.session(d)
        c = {"Cookie": cookie, "X-Inlet-Console": "1"}
        token = cookie.split("=", 1)[1]
        (digest,) = [r[0] for r in d.query("SELECT digest FROM console_sessions")]
        self.assertEqual(digest, hashlib.sha256(token.encode()).hexdigest())
        d.restart()
        st, _, b = d.http("GET", "/ui/session", headers=c, auth=False)
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["csrf"], csrf)
        st, _, _ = d.http("POST", "/ui/logout", headers=dict(c, **{"X-CSRF-Token": csrf}), auth=False)
        self.assertEqual(st, 200)
        self.assertEqual(d.query("SELECT count(*) FROM console_sessions")[0][0], 0)
        d.restart()
        st, _, b = d.http("GET", "/v3/routes", headers=c, auth=False)
        self.assertEqual((st, json.loads(b)["message"]), (401, "Invalid credentials"))

    def test_sessions_are_bounded(self):
        """At most API_CONSOLE_SESSIONS_MAX (64) sessions: the 65th login ends the one nearest its
        end (the first), never the new one."""
        d = self.start()
        cookies = [self.session(d)[0] for _ in range(65)]
        self.assertEqual(d.query("SELECT count(*) FROM console_sessions")[0][0], 64)
        status = [d.http("GET", "/ui/session", headers={"Cookie": c}, auth=False)[0] for c in (cookies[0], cookies[1], cookies[-1])]
        self.assertEqual(status, [401, 200, 200])

    def test_failed_logins_are_throttled(self):
        d = self.start()
        codes = [self.login(d, key="wrong%d" % i)[0] for i in range(12)]
        self.assertEqual(codes[:10], [401] * 10)
        self.assertEqual(codes[10:], [429, 429], codes)
        st, _, j = self.login(d)
        # Within the same minute even the right key waits (or a minute turned over: 200).
        self.assertIn(st, (429, 200), j)
        # Per client: another address is not locked out by this one's failures.
        import http.client
        body, hdrs = form([("key", self.key)])
        hdrs["X-Inlet-Console"] = "1"
        conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=timeout(10),
                                          source_address=("127.0.0.2", 0))
        try:
            conn.request("POST", "/ui/login", body, hdrs)
            r = conn.getresponse()
            self.assertEqual(r.status, 200, r.read())
        finally:
            conn.close()

    def test_routes_check_uses_the_api_compiler(self):
        d = self.start()
        body, hdrs = form([("expression", 'match_recipient("a@example.com")')])
        st, _, b = d.http("POST", "/v3/routes/check", body, hdrs)
        self.assertEqual((st, json.loads(b)), (200, {"message": "Route is valid"}))
        body, hdrs = form([("expression", 'match_recipient("a@example.com"')])
        st, _, b = d.http("POST", "/v3/routes/check", body, hdrs)
        self.assertEqual(st, 400, b)
        body, hdrs = form([("expression", 'match_recipient("a@example.com"')])
        st2, _, b2 = d.http("POST", "/v3/routes", body + "&action=stop()", hdrs)
        self.assertEqual((st2, b2), (st, b), "the same message as POST /v3/routes")
        body, hdrs = form([("expression", "catch_all()"), ("action", 'forward("nope")')])
        st, _, b = d.http("POST", "/v3/routes/check", body, hdrs)
        self.assertEqual(st, 400, b)
        self.assertEqual(json.loads(d.http("GET", "/v3/routes")[2])["total_count"], 0, "check stores nothing")

    def test_html_frame_has_its_own_sandboxing_csp(self):
        d = self.start()
        r = WebhookReceiver()
        self.addCleanup(r.stop)
        self.route(d, 'match_recipient("h@example.com")', ["store()"])
        msg = (b"From: a@example.org\r\nTo: h@example.com\r\nSubject: h\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/html\r\n\r\n<p>hi<img src=\"http://127.0.0.1:1/x\"><script>x()</script></p>\r\n")
        with d.smtp() as c:
            c.sendmail("a@example.org", ["h@example.com"], msg)
        key = None
        deadline = time.monotonic() + timeout(10)
        while not key and time.monotonic() < deadline:
            items = json.loads(d.http("GET", "/v3/example.com/events?event=stored")[2])["items"]
            key = items[0]["storage"]["key"] if items else None
            time.sleep(0.1)
        self.assertTrue(key)
        st, h, b = d.http("GET", "/ui/html/example.com/%s" % key)
        self.assertEqual(st, 200, b)
        self.assertIn(b"<script>x()</script>", b, "the body as sent: the CSP and the sandbox make it inert")
        csp = h["Content-Security-Policy"]
        self.assertIn("sandbox", csp)
        self.assertIn("img-src data:;", csp)
        self.assertNotIn("script-src", csp)  # default-src 'none' covers scripts
        self.assertIn("default-src 'none'", csp)
        st, h, b = d.http("GET", "/ui/html/example.com/%s?images=1" % key)
        self.assertIn("img-src data: http: https:;", h["Content-Security-Policy"])
        self.assertEqual(d.http("GET", "/ui/html/example.com/%s" % key, auth=False)[0], 401)


@unittest.skipUnless(HAVE_SELENIUM, "python3-selenium is not installed (scripts/install-deps --test)")
class ConsoleBrowserTest(ConsoleCase):
    def setUp(self):
        super().setUp()
        if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
            self.skipTest("chromium or chromedriver is not installed (scripts/install-deps --test)")
        self.shots = os.environ.get("INLET_SCREENSHOT_DIR") or self.tmp_path("screenshots")
        os.makedirs(self.shots, exist_ok=True)
        self.downloads = self.tmp_path("downloads")
        os.makedirs(self.downloads)

    def browser(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-extensions", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                  "--user-data-dir=" + self.tmp_path("profile")):
            o.add_argument(a)
        o.add_experimental_option("prefs", {"download.default_directory": self.downloads,
                                            "download.prompt_for_download": False})
        # port 0: selenium asks the kernel for a free loopback port and starts the driver on it.
        service = Service(CHROMEDRIVER, port=0, log_output=self.tmp_path("chromedriver.log")) \
            if "log_output" in Service.__init__.__code__.co_varnames else \
            Service(CHROMEDRIVER, port=0, log_path=self.tmp_path("chromedriver.log"))
        drv = webdriver.Chrome(service=service, options=o)
        self.addCleanup(self._quit, drv, service)
        drv.set_page_load_timeout(timeout(20))
        drv.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": self.downloads})
        return drv

    @staticmethod
    def _quit(drv, service):
        try:
            drv.quit()
        finally:
            try:
                service.stop()
            except Exception:
                pass

    def wait(self, drv, pred, what, wait_s=10):
        from selenium.webdriver.support.ui import WebDriverWait
        try:
            return WebDriverWait(drv, timeout(wait_s), poll_frequency=0.1).until(lambda x: pred(x))
        except Exception:
            self.shot(drv, "failure", widths=(1280,))
            raise AssertionError("waited %ss for %s; page text: %s" % (wait_s, what, drv.find_element("tag name", "body").text[:2000]))

    def shot(self, drv, name, widths=(1280, 360)):
        for w in widths:
            # The whole page: the window as tall as the document (bounded), from the top.
            drv.set_window_size(w, 900)
            time.sleep(0.1)
            height = drv.execute_script("return document.documentElement.scrollHeight")
            drv.set_window_size(w, max(600, min(int(height) + 140, 6000)))
            drv.execute_script("window.scrollTo(0, 0)")
            time.sleep(0.15)
            drv.save_screenshot(os.path.join(self.shots, "%s-%d.png" % (name, w)))
        drv.set_window_size(1280, 900)

    def text(self, drv, css):
        els = drv.find_elements("css selector", css)
        return els[0].text if els else ""

    def rest(self, d, path):
        st, _, b = d.http("GET", path)
        self.assertEqual(st, 200, b)
        return json.loads(b)

    def test_console_in_a_browser(self):
        t0 = time.monotonic()
        watch = WebhookReceiver()             # hit by any payload that runs
        self.addCleanup(watch.stop)
        hook = WebhookReceiver()              # the webhook of the routes made in the form
        self.addCleanup(hook.stop)
        down = WebhookReceiver(default=503)   # a receiver that is down until the test brings it back
        self.addCleanup(down.stop)
        d = self.start(["--retry-schedule", "1"])
        drv = self.browser()
        base = "http://127.0.0.1:%d" % d.http_port
        By = "css selector"

        # -- log in ------------------------------------------------------------------------------
        drv.get(base + "/ui/")
        self.wait(drv, lambda x: x.find_element(By, "#login-key").is_displayed(), "the login form")
        self.shot(drv, "login")
        drv.find_element(By, "#login-key").send_keys("wrong")
        drv.find_element(By, "#login-form button").click()
        self.wait(drv, lambda x: "Invalid API key" in self.text(x, "#login-error"), "the refusal")
        drv.find_element(By, "#login-key").clear()
        drv.find_element(By, "#login-key").send_keys(self.key)
        drv.find_element(By, "#login-form button").click()
        self.wait(drv, lambda x: x.find_element(By, "#nav").is_displayed(), "the console after login")
        self.assertFalse(any(c["name"] == "inlet_session" and not c["httpOnly"] for c in drv.get_cookies()))
        self.assertIsNone(drv.execute_script("return document.cookie.match(/inlet_session/)"), "HttpOnly")

        # -- a route made in the form, found through the REST API --------------------------------
        drv.get(base + "/ui/#/routes")
        self.wait(drv, lambda x: x.find_elements(By, "#rf-expression"), "the route form")
        drv.find_element(By, "#rf-description").send_keys("made in the console")
        expr = drv.find_element(By, "#rf-expression")
        expr.send_keys('match_recipient("shop@example.com"')
        self.wait(drv, lambda x: x.find_element(By, "#rf-check").get_attribute("class") == "error", "the parser's error as I type")
        self.assertIn("position", self.text(drv, "#rf-check").lower() + " position", "the message names where")
        expr.send_keys(")")
        self.wait(drv, lambda x: "Valid" in self.text(x, "#rf-check"), "valid once complete")
        drv.find_element(By, "#rf-actions").send_keys('forward("%s")\nstore()' % hook.url("/hook"))
        drv.find_element(By, "#rf-submit").click()
        self.wait(drv, lambda x: "made in the console" in self.text(x, "table"), "the new route in the list")
        routes = self.rest(d, "/v3/routes")["items"]
        mine = [r for r in routes if r["description"] == "made in the console"]
        self.assertEqual(len(mine), 1, routes)
        self.assertEqual(mine[0]["expression"], 'match_recipient("shop@example.com")')
        self.assertEqual(mine[0]["actions"], ['forward("%s")' % hook.url("/hook"), "store()"])
        # The test panel: POST /v3/routes/test on a pasted message, nothing written.
        drv.find_element(By, "#rt-raw").send_keys("From: a@sender.test\nSubject: dry run\n\nhello\n")
        drv.find_element(By, "#rt-rcpt").send_keys("shop@example.com, nobody@example.com")
        drv.find_element(By, "#rt-h").find_element("xpath", "..").find_element(By, "button[type=submit]").click()
        self.wait(drv, lambda x: mine[0]["id"] in x.find_element(By, "#rt-h").find_element("xpath", "..").text,
                  "the matching route in the test panel")
        panel = drv.find_element(By, "#rt-h").find_element("xpath", "..").text
        self.assertIn("No route matches.", panel, "nobody@ matches nothing")
        self.assertIn('forward("%s")' % hook.url("/hook"), panel, "the resolved action")
        self.shot(drv, "routes")

        # -- live events: a message sent over SMTP appears within seconds ------------------------
        drv.get(base + "/ui/#/events")
        self.wait(drv, lambda x: "events" in self.text(x, "main p[aria-live]"), "the events page")
        att = base64.b64encode(b"attachment bytes 42\n").decode()
        msg = ("From: Shopper <shopper@sender.test>\r\nTo: shop@example.com\r\nSubject: Order 1234\r\n"
               "Message-ID: <order1234@sender.test>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
               "Please ship it.\r\n--b1\r\nContent-Type: text/plain; name=notes.txt\r\n"
               "Content-Disposition: attachment; filename=notes.txt\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + att + "\r\n--b1--\r\n").encode()
        sent = time.monotonic()
        with d.smtp() as c:
            c.sendmail("shopper@sender.test", ["shop@example.com"], msg)
        self.wait(drv, lambda x: "Order 1234" in self.text(x, "#ev-rows"), "the message in the live events", 10)
        live_s = time.monotonic() - sent
        self.wait(drv, lambda x: "stored" in self.text(x, "#ev-rows"), "its stored event", 10)
        self.shot(drv, "events")

        # -- open it, download the attachment ----------------------------------------------------
        drv.find_element("link text", "Order 1234").click()
        self.wait(drv, lambda x: self.text(x, "#m-subject") == "Order 1234", "the message page")
        self.wait(drv, lambda x: x.find_elements(By, "a.attachment"), "the attachment link")
        self.assertIn("Please ship it.", self.text(drv, "#m-text"))
        drv.find_element(By, "a.attachment").click()
        path = os.path.join(self.downloads, "notes.txt")
        self.wait(drv, lambda x: os.path.exists(path) and open(path, "rb").read() == b"attachment bytes 42\n",
                  "the downloaded attachment")
        self.shot(drv, "message")

        # -- a failed delivery, replayed once its receiver is back -------------------------------
        self.route(d, 'match_recipient("late@example.com")', ['forward("%s")' % down.url("/down")], "down")
        with d.smtp() as c:
            c.sendmail("a@sender.test", ["late@example.com"],
                       b"From: a@sender.test\r\nTo: late@example.com\r\nSubject: Late one\r\n\r\nhi\r\n")
        deadline = time.monotonic() + timeout(15)
        while not self.rest(d, "/v3/deliveries?state=failed")["items"]:
            self.assertLess(time.monotonic(), deadline, "the delivery failed for good")
            time.sleep(0.2)
        drv.get(base + "/ui/#/dead")
        self.wait(drv, lambda x: down.url("/down") in self.text(x, "table"), "the dead letter")
        self.assertIn("503", self.text(drv, "table"), "its reason")
        self.shot(drv, "dead-letters")
        down.set_script([], default=200)
        before = down.count()
        drv.find_element(By, "button.replay").click()
        down.wait_for(before + 1, timeout(10), "the replayed attempt")
        # The replay makes the delivery pending at once; delivered once the attempt is recorded.
        deadline = time.monotonic() + timeout(10)
        while len(self.rest(d, "/v3/deliveries?state=delivered")["items"]) < 2:
            self.assertLess(time.monotonic(), deadline, "the replay delivered")
            time.sleep(0.2)
        self.assertEqual(self.rest(d, "/v3/deliveries?state=failed")["items"], [])

        # -- hostile mail runs nothing -----------------------------------------------------------
        hit = watch.url("/hit")
        self.route(d, 'match_recipient("xss@example.com")', ["store()"], "xss")
        payload = '<img src=x onerror="window.__pwned=1;new Image().src=\'%s?onerror\'">' % hit
        subject = '<script>window.__pwned=2</script>' + payload
        from_name = '<img src=x onerror=window.__pwned=3><script>window.__pwned=4</script>'
        html = ('<p>Hello</p><script>window.__pwned=5;new Image().src="%s?script"</script>%s'
                '<img src="%s" alt="remote">' % (hit, payload, watch.url("/img")))
        xss = ("From: %s\r\nTo: xss@example.com\r\nSubject: %s\r\nMIME-Version: 1.0\r\n"
               "Content-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\nContent-Type: text/plain\r\n\r\n"
               "%s\r\n--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n%s\r\n--b2--\r\n"
               % (email.utils.formataddr((from_name, "evil@sender.test")), subject, payload, html)).encode()
        with d.smtp() as c:
            c.sendmail("evil@sender.test", ["xss@example.com"], xss)
        drv.get(base + "/ui/#/events")
        self.wait(drv, lambda x: "xss@example.com" in self.text(x, "#ev-rows"), "the hostile message's events")
        time.sleep(0.3)
        self.assertIsNone(drv.execute_script("return window.__pwned === undefined ? null : window.__pwned"),
                          "a payload ran in the events page")
        self.assertIn("window.__pwned=2", self.text(drv, "#ev-rows"), "the subject shown as text")
        drv.get(base + "/ui/#/stored")
        self.wait(drv, lambda x: "window.__pwned=2" in self.text(x, "main"), "the stored copies page")
        self.shot(drv, "stored")
        drv.find_element("partial link text", "window.__pwned=2").click()
        self.wait(drv, lambda x: "window.__pwned=2" in self.text(x, "#m-subject"), "the hostile message's page")
        self.wait(drv, lambda x: x.find_elements(By, "#m-html"), "its HTML frame")
        self.assertIn("window.__pwned=3", self.text(drv, "#m-from"), "the sender's name shown as text")
        frame = drv.find_element(By, "#m-html")
        self.assertEqual(frame.get_attribute("sandbox"), "")
        drv.switch_to.frame(frame)
        self.wait(drv, lambda x: "Hello" in x.find_element("tag name", "body").text, "the HTML body in its frame")
        drv.switch_to.default_content()
        time.sleep(0.5)  # give a payload that escaped the time to run
        self.assertIsNone(drv.execute_script("return window.__pwned === undefined ? null : window.__pwned"))
        self.assertEqual([r.path for r in watch.requests], [], "no payload ran and no remote image loaded")
        self.shot(drv, "message-hostile")
        # Remote images only when asked: then the image comes, still no script.
        drv.find_element(By, "#m-images").click()
        watch.wait_for(1, timeout(10), "the remote image once asked for")
        time.sleep(0.5)
        self.assertEqual([r.path for r in watch.requests], ["/img"])
        self.assertIsNone(drv.execute_script("return window.__pwned === undefined ? null : window.__pwned"))

        # -- the overview, last: it charts everything above --------------------------------------
        drv.get(base + "/ui/#/overview")
        self.wait(drv, lambda x: len(x.find_elements(By, ".charts .chart")) == 5, "the five charts")
        self.wait(drv, lambda x: self.text(x, "#q-pending") != "", "the queue figures")
        charts = self.text(drv, ".charts")
        self.assertIn("Accepted", charts)
        self.assertTrue(drv.find_elements(By, ".charts rect"), "bars for this test's messages")
        self.shot(drv, "overview")
        print("console browser test: %.1f s; live event after %.2f s; screenshots in %s"
              % (time.monotonic() - t0, live_s, self.shots), file=sys.stderr)


if __name__ == "__main__":
    harness.main()
