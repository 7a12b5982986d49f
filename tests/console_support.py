"""Real parts for the console's tests: a server with its console, a plain
HTTP client with a cookie jar (for what a browser does not show: headers,
refusals, a double submit), and a headless Chromium through Selenium.

The server is `python -m server --back-office-auth --console-listen
127.0.0.1:0` on a directory seeded as tests/test_admin_service.py does
(Acme: HQ 1 > region 2 > station 12; HQ 1 > station 13. Other: HQ 50 >
station 51), plus station operators for the station-scoping tests.
"""

import html
import http.client
import http.cookies
import os
import re
import shutil
import tempfile
import urllib.parse

import pytest

from core.admin.access import cli_actor
from core.admin.model import Role
from tests.support import ServerProcess
from tests.test_admin_service import PASSWORD, seed_directory

CONSOLE_LINE = re.compile(r"console on (https?)://([^:\s]+):(\d+)")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000", "--lang=en-US")
SCREENSHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "console")
# Station users: an operator of station 12 and one of station 13 (issue 19's
# "an operator of station A cannot see station B's cards").
STATION_USERS = {"desk-12": (12, Role.CUSTOMER_SERVICE), "desk-13": (13, Role.CUSTOMER_SERVICE),
                 "ops-12": (12, Role.OPERATIONS)}


def seed_console_directory(data_dir: str, master_key_file: str | None = None):
    admin = seed_directory(data_dir, master_key_file)
    for username, (org_id, role) in STATION_USERS.items():
        admin.create_user(cli_actor(), username, PASSWORD, org_id, role)
    admin.store.close()


class ConsoleServer:
    def __init__(self, process: ServerProcess):
        self.process = process
        match = None
        for line in process.log_lines:
            match = CONSOLE_LINE.search(line) or match
        assert match is not None, "no console line in the log:\n" + process.log
        self.scheme, self.host, self.port = match.group(1), match.group(2), int(match.group(3))

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def start_console(data_dir: str, *extra: str) -> ConsoleServer:
    process = ServerProcess(data_dir, "--back-office-auth", "--console-listen", "127.0.0.1:0", *extra, demo=False).start()
    return ConsoleServer(process)


class Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def hidden(self, name: str, form_id: str | None = None) -> str:
        """A hidden input's value (of the form with that id, if given)."""
        text = self.text
        if form_id is not None:
            start = text.index(f'id="{form_id}"')
            text = text[text.rindex("<form", 0, start):text.index("</form>", start)]
        match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', text)
        assert match is not None, f"no {name} in the page"
        return html.unescape(match.group(1))


class Client:
    """HTTP with a cookie jar, no redirects followed (tests look at them)."""

    def __init__(self, console: ConsoleServer):
        self.console = console
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def request(self, method: str, path: str, fields: dict | None = None, headers: dict | None = None) -> Answer:
        connection = http.client.HTTPConnection(self.console.host, self.console.port, timeout=30)
        body = urllib.parse.urlencode(fields or {}, doseq=True) if fields is not None else None
        sent = {"cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())} if self.cookies else {}
        if body is not None:
            sent["content-type"] = "application/x-www-form-urlencoded"
        sent.update(headers or {})
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        answer = Answer(response.status, response.headers, response.read())
        connection.close()
        for value in response.headers.get_all("set-cookie") or ():
            self.set_cookie_headers.append(value)
            cookie = http.cookies.SimpleCookie(value)
            for name, morsel in cookie.items():
                if morsel.value and not (morsel["max-age"] == "0" or morsel["expires"]):
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, fields: dict) -> Answer:
        return self.request("POST", path, fields)

    def login(self, username: str, password: str = PASSWORD) -> Answer:
        form = self.get("/login")
        return self.post("/login", {"csrf": form.hidden("csrf"), "username": username, "password": password, "next": "/"})

    def submit(self, page: str, form_id: str, fields: dict) -> Answer:
        """Fill the form `form_id` of `page` as a browser would (its csrf and
        nonce) and post it to its action."""
        shown = self.get(page)
        assert shown.status == 200, shown.text
        text = shown.text
        start = text.index(f'id="{form_id}"')
        opening = text[text.rindex("<form", 0, start):start]
        action = html.unescape(re.search(r'action="([^"]+)"', opening).group(1))
        return self.post(action, {"csrf": shown.hidden("csrf", form_id), "nonce": shown.hidden("nonce", form_id), **fields})


# ---------------------------------------------------------------- the browser


def chromium_or_skip():
    """A headless Chromium driven by the system chromedriver, or a skip
    saying why (the browser tests need Debian's chromium and chromium-driver,
    which .ci/run installs)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None and not os.path.exists(path):
            print(f"console browser tests skipped: {path} is not installed (apt-get install chromium chromium-driver)")
            pytest.skip(f"{path} not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="tally-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.profile_dir = profile
    return driver


def quit_browser(driver):
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)
