"""The web console over plain HTTP against a real server: what a browser
does not show. Security headers and cookies, CSRF refused, a double submit
done once (also two at the same moment), bad input kept beside its field
with nothing saved, the API's lockout, sessions ending with their token,
zh-CN by default, TLS, and the formats of money and dates. The scenarios in
a real browser are tests/test_console_browser.py."""

import concurrent.futures
import pathlib
import re

import grpc
import pytest

from server.console import i18n
from server.console.messages import ZH_CN
from tally.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from tests.console_support import Client, seed_console_directory, start_console
from tests.support import ServerProcess
from tests.test_admin_service import PASSWORD, AdminClient

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    seed_console_directory(str(base / "data"), str(base / "master.key"))
    running = start_console(str(base / "data"), "--locale", "en", "--utc-offset-minutes", "480", "--master-key-file",
                            str(base / "master.key"))
    yield running
    running.process.stop()


def logged_in(console, username: str = "root") -> Client:
    client = Client(console)
    answer = client.login(username)
    assert answer.status == 303 and answer.header("location") == "/", answer.text
    return client


def card_record(console, card_id: int):
    try:
        return AdminClient(console.process.channel(), "root").GetCardRecord(card_id=card_id)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return None


def issue(client: Client, card_id, **fields):
    return client.submit("/cards", "issue", {"card_id": str(card_id), "org_id": "12", "card_type": "2", **fields})


# ---------------------------------------------------------------- headers and cookies


def test_every_answer_carries_the_security_headers(console):
    client = logged_in(console)
    for path in ("/login", "/", "/cards", "/cards/999", "/static/console.css", "/admin/audit"):
        answer = client.get(path)
        policy = answer.header("content-security-policy")
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy, path
        assert "script-src" not in policy and "unsafe-inline" not in policy, "no script at all, inline or not"
        assert answer.header("x-frame-options") == "DENY" and answer.header("x-content-type-options") == "nosniff"
        assert answer.header("referrer-policy") == "no-referrer"
        assert answer.header("server-timing").startswith("app;dur=")
        assert "strict-transport-security" not in answer.headers, "HSTS only over TLS"
        if not path.startswith("/static/"):
            assert answer.header("cache-control") == "no-store", path
    assert client.get("/cards/999").status == 404, "a card nobody has"


def test_the_cookie_is_an_opaque_strict_httponly_id_that_changes_at_login(console):
    client = Client(console)
    client.get("/login")
    before = client.cookies["tally_console"]
    cookie = client.set_cookie_headers[-1].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie and "secure" not in cookie
    assert client.login("root").status == 303
    after = client.cookies["tally_console"]
    assert after != before and re.fullmatch(r"[A-Za-z0-9_\-]{43}", after)
    # The id is not a token the API takes: the token stays on the server.
    stub = admin_pb2_grpc.AdminServiceStub(console.process.channel())
    with pytest.raises(grpc.RpcError) as refused:
        stub.WhoAmI(admin_pb2.WhoAmIRequest(), metadata=(("authorization", f"Bearer {after}"),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The id the login form had is worth nothing after the login.
    planted = Client(console)
    planted.cookies["tally_console"] = before
    assert planted.get("/").status == 303


# ---------------------------------------------------------------- CSRF, once only, bad input


def test_a_form_without_its_csrf_token_is_refused_and_does_nothing(console):
    client = logged_in(console)
    shown = client.get("/cards")
    fields = {"nonce": shown.hidden("nonce", "issue"), "card_id": "8800000000000101", "org_id": "12", "card_type": "2"}
    for csrf in (None, "forged-" + "x" * 40):
        sent = dict(fields) if csrf is None else {**fields, "csrf": csrf}
        answer = client.post("/cards/issue", sent)
        assert answer.status == 403 and "security token" in answer.text
    assert card_record(console, 8_800_000_000_000_101) is None, "nothing was issued"
    # Another session's token does not do either.
    other = logged_in(console, "north")
    assert client.post("/cards/issue", {**fields, "csrf": other.get("/cards").hidden("csrf")}).status == 403
    # Nor a login posted from elsewhere (no form token).
    assert Client(console).post("/login", {"username": "root", "password": PASSWORD}).status == 403


def test_a_body_too_large_is_refused_before_it_is_read(console):
    client = logged_in(console)
    answer = client.request("POST", "/settlement/import", {}, headers={"content-length": str(200 * 2**20)})
    assert answer.status == 413 and answer.header("x-frame-options") == "DENY"


def test_a_double_submit_tops_up_once(console):
    client = logged_in(console)
    card_id = 8_800_000_000_000_201
    assert issue(client, card_id).status == 303
    assert client.submit(f"/cards/{card_id}", "activate", {}).status == 303
    page = client.get(f"/cards/{card_id}")
    form = {"csrf": page.hidden("csrf", "topup"), "nonce": page.hidden("nonce", "topup"),
            "account": str(common_pb2.PERSONAL), "amount_minor": "123.45"}
    first = client.post(f"/cards/{card_id}/topup", form)
    second = client.post(f"/cards/{card_id}/topup", form)
    assert first.status == second.status == 303 and first.header("location") == second.header("location")
    assert card_record(console, card_id).balances.personal_minor == 12_345
    # Two submissions at the same moment: one top-up, the same answer.
    page = client.get(f"/cards/{card_id}")
    form = {**form, "csrf": page.hidden("csrf", "topup"), "nonce": page.hidden("nonce", "topup"), "amount_minor": "1"}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.post(f"/cards/{card_id}/topup", form), range(4)))
    assert {answer.status for answer in answers} == {303}
    assert card_record(console, card_id).balances.personal_minor == 12_445
    # A new form (a new nonce) tops up again.
    assert client.submit(f"/cards/{card_id}", "topup", {"account": str(common_pb2.PERSONAL), "amount_minor": "1"}).status == 303
    assert card_record(console, card_id).balances.personal_minor == 12_545


def test_bad_input_is_shown_beside_its_field_and_nothing_is_saved(console):
    client = logged_in(console)
    # The console's own check: the shape of the input.
    answer = issue(client, "twelve", limit_per_day_minor="1.234")
    assert answer.status == 400
    assert re.search(r'id="issue-card_id-error">a whole number such as 42<', answer.text)
    assert re.search(r'id="issue-limit_per_day_minor-error">at most 2 digits after the point<', answer.text)
    assert 'value="twelve"' in answer.text, "what was typed is shown again"
    # The API's check, named by the API's field: beside that field.
    answer = issue(client, 8_800_000_000_000_301, limit_per_transaction_minor="10000000001")
    assert answer.status == 400
    assert re.search(r'id="issue-limit_per_transaction_minor-error">[^<]*must be within 0 \.\. 1000000000000', answer.text)
    assert card_record(console, 8_800_000_000_000_301) is None
    # A promotion's term, deep in the message.
    draft = client.submit("/promotions/new/discount", "draft", {
        "promotion.name": "too much", "promotion.valid_from_ms": "2030-01-01T00:00", "promotion.valid_to_ms": "2030-02-01T00:00",
        "promotion.funder": "1", "promotion.discount.off_permille": "1200", "promotion.stackable": "on"})
    assert draft.status == 400
    assert re.search(r'id="draft-promotion-discount-off_permille-error">[^<]*within 0 \.\. 1000, got 1200', draft.text)
    assert "too much" not in client.get("/promotions").text, "the draft was not saved"


def test_what_must_not_be_shown_twice_is_not_kept_for_a_repeat(console):
    client = logged_in(console)
    # A terminal's secret key: in the first answer only.
    page = client.get("/admin/terminals")
    form = {"csrf": page.hidden("csrf", "terminal"), "nonce": page.hidden("nonce", "terminal"), "terminal_id": "1299",
            "station_id": "12", "name": "Pump 9", "key_algorithm": "1"}
    first = client.post("/admin/terminal", form)
    secret = re.search(r'id="secret-key">([0-9a-f]{64})<', first.text).group(1)
    again = client.post("/admin/terminal", form)
    assert again.status == 303 and again.header("location") == "/admin/terminals?registered=1299"
    assert secret not in client.get(again.header("location")).text
    # A customer's export: the file once, then a new export is needed.
    created = client.submit("/customers", "create", {"org_id": "12", "profile.name": "Zhang San"})
    customer = created.header("location")
    page = client.get(customer)
    form = {"csrf": page.hidden("csrf", "export"), "nonce": page.hidden("nonce", "export")}
    exported = client.post(customer + "/export", form)
    assert exported.status == 200 and exported.header("content-type") == "application/json"
    assert "attachment" in exported.header("content-disposition") and "Zhang San" in exported.text
    repeated = client.post(customer + "/export", form)
    assert repeated.status == 303 and repeated.header("location").endswith("?exported=again")


def test_a_days_files_download_with_their_names(console):
    client = logged_in(console)
    today = i18n.iso_day(client_today())
    for kind, media_type in (("journal.csv", "text/csv"), ("takings.png", "image/png"),
                             ("journal.parquet", "application/vnd.apache.parquet")):
        answer = client.get(f"/settlement/download?day={today}&kind={kind}")
        assert answer.status == 200 and answer.header("content-type").startswith(media_type), kind
        assert f'filename="{kind.split(".")[0]}-{today}.{kind.split(".")[1]}"' in answer.header("content-disposition")
    assert client.get(f"/settlement/download?day={today}&kind=secrets.txt").status == 400


def client_today() -> int:
    import time

    return (time.time_ns() // 1_000_000 + 480 * 60_000) // 86_400_000


def test_the_apis_lockout_holds_for_the_console(console):
    client = Client(console)
    for _ in range(10):
        assert client.login("desk-13", "not the password at all").status == 401
    answer = client.login("desk-13")
    assert answer.status == 401 and "locked" in answer.text.lower()
    assert "tally_console" not in client.cookies or client.get("/").status == 303


def test_a_session_ends_at_logout_and_with_its_user(console):
    client = logged_in(console, "ops-12")
    assert client.get("/").status == 200
    cookie = client.cookies["tally_console"]
    logged_out = client.post("/logout", {"csrf": client.get("/").hidden("csrf")})
    assert logged_out.status == 303 and logged_out.header("location") == "/login"
    stale = Client(console)
    stale.cookies["tally_console"] = cookie
    assert stale.get("/").status == 303
    # A user disabled by an administrator: the next page asks for a login.
    client = logged_in(console, "ops-12")
    AdminClient(console.process.channel(), "root").UpdateUser(username="ops-12", enabled=False)
    try:
        answer = client.get("/cards")
        assert answer.status == 303 and answer.header("location") == "/login?ended=1"
    finally:
        AdminClient(console.process.channel(), "root").UpdateUser(username="ops-12", enabled=True)


PAGES = ("/", "/cards", "/customers", "/promotions", "/promotions/basket", "/loyalty", "/settlement",
         "/settlement/queue", "/settlement/station", "/risk", "/admin", "/admin/terminals", "/admin/operators", "/admin/users",
         "/admin/parameters", "/admin/audit", *(f"/promotions/new/{kind}" for kind in ("discount", "goods", "coupon",
                                                                                        "packet", "lottery")))


def test_every_page_answers_every_role_in_both_languages_without_a_server_error(console):
    for username in ("root", "auditor", "desk", "north-ops", "desk-12", "other"):
        client = logged_in(console, username)
        for locale in ("en", "zh-CN"):
            client.post("/locale", {"csrf": client.get("/").hidden("csrf"), "locale": locale, "next": "/"})
            for path in PAGES:
                answer = client.get(path)
                assert answer.status in (200, 403), (username, locale, path, answer.status, answer.text[-500:])
                assert f'<html lang="{locale}">' in answer.text


def test_a_role_without_the_right_sees_the_apis_refusal(console):
    client = logged_in(console, "desk")  # customer service: no settlement, no takings
    dashboard = client.get("/")
    assert dashboard.status == 200 and "Not shown" in dashboard.text and "needs the role" in dashboard.text
    refused = client.get("/settlement/queue")
    assert refused.status == 403 and "needs the role" in refused.text


# ---------------------------------------------------------------- languages and formats


def test_zh_cn_is_the_default_where_the_network_says_so_and_each_user_may_switch(tmp_path):
    data_dir = str(tmp_path / "data")
    seed_console_directory(data_dir)
    running = start_console(data_dir)  # --locale zh-CN by default
    try:
        client = Client(running)
        assert "用户名" in client.get("/login").text
        client.login("root")
        page = client.get("/")
        assert "今日营收" in page.text and '<html lang="zh-CN">' in page.text
        switched = client.post("/locale", {"csrf": page.hidden("csrf"), "locale": "en", "next": "/cards"})
        assert switched.status == 303 and switched.header("location") == "/cards"
        assert "Find a card" in client.get("/cards").text
        assert client.post("/locale", {"csrf": page.hidden("csrf"), "locale": "en", "next": "https://elsewhere"}).header(
            "location") == "/", "only this console's own paths"
    finally:
        running.process.stop()


def test_money_is_formatted_and_read_without_floats():
    assert i18n.money(123_456_789, "CNY", "zh-CN") == "¥1,234,567.89"
    assert i18n.money(-5, "CNY", "en") == "-CNY 0.05"
    assert i18n.money(1_500, "JPY", "en") == "JPY 1,500"
    assert i18n.parse_amount("1,234,567.89", "CNY") == 123_456_789
    # 0.1 + 0.2 style inputs stay exact: 10**15 minor units and one fen.
    assert i18n.parse_amount("10000000000000.01", "CNY") == 1_000_000_000_000_001
    assert i18n.parse_amount("¥12.5", "CNY") == 1_250
    for bad in ("12.345", "1e3", "12,34.5.6", "abc", "--1"):
        with pytest.raises(ValueError):
            i18n.parse_amount(bad, "CNY")
    assert i18n.plain_amount(1_250, "CNY") == "12.50"


def test_times_and_days_are_the_networks():
    moment_ms = 1_780_000_000_000  # 2026-05-28 20:26:40 UTC
    assert i18n.when(moment_ms, 480, "en") == "2026-05-29 04:26:40"
    assert i18n.when(moment_ms, 480, "zh-CN") == "2026年5月29日 04:26:40"
    assert i18n.parse_local_moment("2026-05-29T04:26", 480) == moment_ms - 40_000
    assert i18n.day(20_602, "zh-CN") == "2026年5月29日" and i18n.iso_day(20_602) == "2026-05-29"
    assert i18n.parse_day("2026-05-29") == 20_602


def test_every_text_a_page_may_show_has_its_chinese():
    import importlib

    texts = set()
    patterns = (r'\bt\(\s*"((?:[^"\\]|\\.)+)"\s*\)', r"\bt\(\s*'((?:[^'\\]|\\.)+)'\s*\)",
                r'Field\(\s*f?"[^"]*",\s*"([^"]+)"', r'help="([^"]+)"', r'FormSpec\(\s*f?"[^"]*",\s*[^,]+,\s*"([^"]+)"')
    console = REPO / "server" / "console"
    for path in [*(console / "pages").glob("*.py"), *(console / "templates").glob("*.html"), console / "web.py",
                 console / "forms.py", console / "i18n.py"]:
        for pattern in patterns:
            texts.update(re.findall(pattern, path.read_text()))
    for name in ("common", "cards", "customers", "promotions", "loyalty", "settlement", "risk", "admin", "dashboard"):
        for value in vars(importlib.import_module(f"server.console.pages.{name}")).values():
            pairs = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else ()
            pairs = list(pairs)
            if pairs and all(isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], str) for pair in pairs):
                texts.update(label for _, label in pairs)
    missing = sorted(text for text in texts if text not in ZH_CN and not text.startswith("{"))
    assert not missing, f"texts without their Chinese in server/console/messages.py: {missing}"
    assert all(i18n.translate("zh-CN", text) != text or text in ("AES / HMAC-SHA256", "SM4 / CMAC-SM4") for text in texts)


# ---------------------------------------------------------------- start-up and TLS


def test_the_console_needs_back_office_auth_and_one_process(tmp_path):
    for args, says in ((("--console-listen", "127.0.0.1:0"), "needs --back-office-auth"),
                       (("--console-listen", "127.0.0.1:0", "--back-office-auth", "--workers", "2"), "with --workers, run `python -m server.console"),
                       (("--console-listen", "0.0.0.0:0", "--back-office-auth", "--insecure"), None)):
        process = ServerProcess(str(tmp_path / "data"), *args, demo=False)
        if says is None:
            process.start()  # beyond the loopback only with --insecure (or TLS)
            process.stop()
            continue
        with pytest.raises(RuntimeError, match=says):
            process.start()
    process = ServerProcess(str(tmp_path / "data"), "--console-listen", "0.0.0.0:0", "--back-office-auth",
                            "--listen", "127.0.0.1:0", demo=False)
    with pytest.raises(RuntimeError, match="refusing to serve the console on 0.0.0.0:0 without TLS"):
        process.start()


def test_with_a_certificate_the_console_speaks_https_with_secure_cookies(tmp_path):
    import http.client
    import ssl

    from tests.test_admin_tls import self_signed_certificate

    cert_path, key_path, _ = self_signed_certificate(tmp_path)
    data_dir = str(tmp_path / "data")
    seed_console_directory(data_dir)
    running = start_console(data_dir, "--tls-cert", cert_path, "--tls-key", key_path, "--locale", "en")
    try:
        assert running.scheme == "https"
        context = ssl.create_default_context(cafile=cert_path)
        connection = http.client.HTTPSConnection(running.host, running.port, context=context, timeout=30)
        connection.request("GET", "/login")
        answer = connection.getresponse()
        page = answer.read().decode()
        cookie = answer.headers["set-cookie"].lower()
        assert answer.status == 200 and "secure" in cookie and "httponly" in cookie
        assert cookie.startswith("__host-tally_console=")
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        session = answer.headers["set-cookie"].split(";", 1)[0]
        connection.request("POST", "/login", body=f"csrf={csrf}&username=root&password={PASSWORD.replace(' ', '+')}&next=/",
                           headers={"content-type": "application/x-www-form-urlencoded", "cookie": session})
        logged = connection.getresponse()
        logged.read()
        # The login went through the API over TLS, to the dashboard.
        assert logged.status == 303 and logged.headers["location"] == "/"
        with pytest.raises((OSError, http.client.HTTPException)):
            plain = http.client.HTTPConnection(running.host, running.port, timeout=5)
            plain.request("GET", "/login")
            plain.getresponse().read()
    finally:
        running.process.stop()


def test_the_console_is_a_process_of_its_own_that_dies_with_the_server(tmp_path):
    import os
    import signal
    import time

    data_dir = str(tmp_path / "data")
    seed_console_directory(data_dir)
    running = start_console(data_dir, "--locale", "en")
    pid = int(re.search(r"console on \S+ \(en; process (\d+)\)", running.process.log).group(1))
    assert pid != running.process.process.pid and Client(running).get("/login").status == 200
    running.process.kill()  # SIGKILL: the server cannot stop it itself
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the console outlived its server")


def test_a_console_on_its_own_refuses_a_server_that_does_not_check_tokens(tmp_path):
    import subprocess
    import sys

    process = ServerProcess(str(tmp_path / "data"), demo=False).start()
    try:
        refused = subprocess.run([sys.executable, "-m", "server.console", "--server", process.address, "--listen",
                                  "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    finally:
        process.stop()
    assert refused.returncode != 0 and "does not check back-office tokens" in refused.stderr


def test_a_standalone_servers_dashboard_shows_its_replication_the_same_when_not_asking_again(console):
    """The dashboard asks a server whose store status said "standalone" for
    no replication status for a minute; the page shows the same."""
    client = logged_in(console)
    cells = []
    for _ in range(2):
        page = client.get("/")
        assert page.status == 200
        cells.append(re.search(r'<td id="replication">([^<]*)</td>', page.text).group(1))
    assert cells == ["Standalone (no replication)"] * 2
