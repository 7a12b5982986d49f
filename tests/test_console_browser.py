"""The web console in a real Chromium (headless, Selenium, the system
chromedriver) against a real server: issue 19's scenarios, each page's
screenshot saved into docs/console/ (the README shows them).

  - log in (a wrong password is refused in the API's words);
  - issue a card and top it up at the counter, pay with it over gRPC, and
    see the sale on the card's page;
  - one user drafts a promotion (a bad term refused beside its field),
    submits it and cannot approve it; another approves it; a basket tried;
  - upload a WeChat Pay bill with a difference (and a malformed one, refused
    with its line), reconcile, resolve the difference with who and why;
  - an operator of station 12 cannot see station 13's cards;
  - the audit log shows each action, and its chain checks intact;
  - every other page, and the dashboard in Chinese.
They skip with a printed reason only where chromium or chromedriver is
not installed (.ci/run installs both).
"""

import base64
import datetime
import itertools
import os
import time

import pytest

from core.results import Channel
from core.settlement.model import RowKind, RowStatus, Statement, StatementRow, totals_of
from core.settlement.statements import wechat
from tally.v1 import common_pb2, payment_pb2
from tests.console_support import SCREENSHOTS, chromium_or_skip, quit_browser, seed_console_directory, start_console
from tests.support import Terminal
from tests.test_admin_service import PASSWORD, AdminClient

UTC_OFFSET_MINUTES = 480
COUNTER_CARD = 8_600_000_000_000_012  # issued at station 12 through the console
OTHER_STATION_CARD = 8_600_000_000_000_013  # issued at station 13
SERIALS = itertools.count(1)
WAIT_S = 30
SCREENSHOT_HEIGHT_MAX = 4000


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    base = tmp_path_factory.mktemp("console-browser")
    seed_console_directory(str(base / "data"), str(base / "master.key"))
    running = start_console(str(base / "data"), "--master-key-file", str(base / "master.key"), "--locale", "en",
                            "--utc-offset-minutes", str(UTC_OFFSET_MINUTES))
    yield running
    running.process.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chromium_or_skip()
    # Elements of a page still loading are waited for, not missed.
    driver.implicitly_wait(10)
    os.makedirs(SCREENSHOTS, exist_ok=True)
    yield driver
    quit_browser(driver)


# ---------------------------------------------------------------- driving the page


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def text_of(driver, element_id: str) -> str:
    return by_id(driver, element_id).text


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def fill(driver, form_id: str, values: dict):
    """Type into the fields of one form, by their names (the API's fields)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    form = by_id(driver, form_id)
    for name, value in values.items():
        field = form.find_element(By.NAME, name)
        if field.tag_name == "select":
            Select(field).select_by_value(str(value))
        elif field.get_attribute("type") == "checkbox":
            if field.is_selected() != bool(value):
                field.click()
        elif field.get_attribute("type") in ("date", "datetime-local"):
            driver.execute_script("arguments[0].value = arguments[1]", field, value)
        else:
            field.clear()
            field.send_keys(str(value))


def press(driver, form_id: str):
    """Click the form's button and wait for the next page."""
    click(driver, f"{form_id}-submit")


def click(driver, element_id: str):
    """Click a button that leads to another page, and wait for that page."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    button = by_id(driver, element_id)
    button.click()

    def left(_):
        try:
            button.is_enabled()
            return False
        except WebDriverException:  # stale, or its node gone with the page
            return True

    WebDriverWait(driver, WAIT_S).until(left)
    WebDriverWait(driver, WAIT_S).until(lambda _: driver.execute_script("return document.readyState") == "complete")


def go(driver, console, path: str):
    driver.get(console.url + path)


def login(driver, console, username: str, password: str = PASSWORD):
    driver.delete_all_cookies()
    go(driver, console, "/login")
    fill(driver, "login", {"username": username, "password": password})
    press(driver, "login")


def shot(driver, name: str):
    """The whole page, beyond the window, as docs/console/NAME.png (Chrome's
    own full-page capture)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda _: driver.execute_script("return document.readyState") == "complete")
    size = WebDriverWait(driver, WAIT_S).until(
        lambda _: (metrics := driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"])["width"] and metrics)
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], SCREENSHOT_HEIGHT_MAX), "scale": 1}
    image = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    with open(os.path.join(SCREENSHOTS, f"{name}.png"), "wb") as file:
        file.write(base64.b64decode(image["data"]))


def terminal_at(console, station_id: int, terminal_id: int) -> Terminal:
    return Terminal(console.process.channel(), station_id=station_id, terminal_id=terminal_id)


# ---------------------------------------------------------------- the scenarios


def test_log_in_in_the_apis_words(console, browser):
    go(browser, console, "/login")
    shot(browser, "login")
    login(browser, console, "root", "not the right password")
    assert "wrong username or password" in text_of(browser, "login-error").lower() or "password" in text_of(browser, "login-error")
    login(browser, console, "root")
    assert browser.current_url == console.url + "/" and "root" in text_of(browser, "who")


def test_issue_a_card_top_it_up_pay_over_grpc_and_see_the_sale(console, browser):
    login(browser, console, "root")
    go(browser, console, "/cards")
    fill(browser, "issue", {"card_id": COUNTER_CARD, "org_id": 12, "card_type": 2, "limit_per_day_minor": "2000"})
    press(browser, "issue")
    assert browser.current_url.endswith(f"/cards/{COUNTER_CARD}") and "not activated" in text_of(browser, "card-status")
    press(browser, "activate")
    fill(browser, "topup", {"account": common_pb2.PERSONAL, "amount_minor": "500.00"})
    press(browser, "topup")
    assert "Topped up CNY 500.00" in page_text(browser)
    assert text_of(browser, "balance-personal") == "CNY 500.00"
    # The sale, over gRPC at a terminal of station 12.
    terminal = terminal_at(console, 12, 1201)
    answer, _ = terminal.pay(12_345, card_id=COUNTER_CARD, serial=next(SERIALS), use_fleet=False, use_personal=True)
    assert answer.result == common_pb2.APPROVED
    go(browser, console, f"/cards/{COUNTER_CARD}")
    assert text_of(browser, "balance-personal") == "CNY 376.55"
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#transactions tr.txn")
    assert rows[0].get_attribute("data-kind") == "PAY" and str(answer.txn_id) in rows[0].text and "123.45" in rows[0].text
    assert rows[1].get_attribute("data-kind") == "TOPUP" and "500.00" in rows[1].text
    shot(browser, "card")
    go(browser, console, "/cards")
    shot(browser, "cards")


def test_a_promotion_approved_by_someone_else_only(console, browser):
    login(browser, console, "north-ops")
    go(browser, console, "/promotions/new/discount")
    draft = {"promotion.name": "Fuel 10% off", "promotion.valid_from_ms": "2020-01-01T00:00",
             "promotion.valid_to_ms": "2029-12-31T00:00", "promotion.discount.off_permille": "1200",
             "promotion.discount.categories": "fuel"}
    fill(browser, "draft", draft)
    press(browser, "draft")
    error = text_of(browser, "draft-promotion-discount-off_permille-error")
    assert "must be within 0 .. 1000, got 1200" in error
    shot(browser, "promotion-draft-refused")
    fill(browser, "draft", {"promotion.discount.off_permille": "100"})
    press(browser, "draft")
    assert "Draft saved." in page_text(browser)
    promotion_url = browser.current_url
    press(browser, "step-submit")
    assert text_of(browser, "stage") == "Submitted"
    press(browser, "step-approve")
    assert "someone else must approve it" in text_of(browser, "step-approve-error")
    assert text_of(browser, "stage") == "Submitted"
    login(browser, console, "root")
    browser.get(promotion_url)
    press(browser, "step-approve")
    assert text_of(browser, "stage") == "Approved"
    press(browser, "step-activate")
    assert text_of(browser, "stage") == "Active"
    shot(browser, "promotion")
    go(browser, console, "/promotions/basket")
    fill(browser, "basket", {"station_id": 12, "amount_minor": "300", "basket[0].goods_code": "92", "basket[0].category": "fuel",
                             "basket[0].quantity_milli": "40000", "basket[0].amount_minor": "300"})
    press(browser, "basket")
    assert text_of(browser, "priced-discount") == "CNY 30.00"
    shot(browser, "basket")
    go(browser, console, "/promotions")
    shot(browser, "promotions")


def wechat_bill(day: int, txn_id: int, amount_minor: int, time_ms: int) -> bytes:
    row = StatementRow(line=2, kind=RowKind.PAYMENT, status=RowStatus.SUCCESS, reference=txn_id, refund_reference=0,
                       channel_trade_no=f"4200{txn_id:020d}", amount_minor=amount_minor, fee_minor=amount_minor * 6 // 1000,
                       time_ms=time_ms, device="1201")
    return wechat.write(Statement(channel=Channel.WECHAT_PAY, day=day, merchant_id="1900000001", rows=(row,),
                                  totals=totals_of((row,))), UTC_OFFSET_MINUTES)


def test_upload_a_bill_with_a_difference_and_resolve_it(console, browser, tmp_path):
    terminal = terminal_at(console, 12, 1203)
    paid = terminal.payments.Pay(payment_pb2.PayRequest(
        terminal=terminal.context(next(SERIALS)), amount_minor=8_800, plan=payment_pb2.PaymentPlan(channel=common_pb2.WECHAT_PAY)))
    assert paid.result == common_pb2.APPROVED
    day = paid.business_day
    bill = tmp_path / "wechat-bill.csv"
    bill.write_bytes(wechat_bill(day, paid.txn_id, 8_850, time.time_ns() // 1_000_000))
    broken = tmp_path / "broken-bill.csv"
    broken.write_bytes(bill.read_bytes().replace(b"`0.53000", b"`0.5x000"))
    login(browser, console, "root")
    date = (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()
    go(browser, console, f"/settlement?day={date}")
    fill(browser, "import", {"header.channel": common_pb2.WECHAT_PAY})
    by_id(browser, "import-file").send_keys(str(broken))
    press(browser, "import")
    assert "Rejected: line 2" in text_of(browser, "import-file-error")
    shot(browser, "settlement-refused-bill")
    fill(browser, "import", {"header.channel": common_pb2.WECHAT_PAY})
    by_id(browser, "import-file").send_keys(str(bill))
    press(browser, "import")
    assert "Imported: 1 rows" in page_text(browser)
    fill(browser, "reconcile", {"channel": common_pb2.WECHAT_PAY, "day": date})
    press(browser, "reconcile")
    assert "Reconciled: 0 matched · 1 differences" in page_text(browser)
    shot(browser, "settlement")
    go(browser, console, "/settlement/queue")
    # Acme's statement (root's headquarters, domain 1): its differences are Acme's.
    difference = f"1-{common_pb2.WECHAT_PAY}-{day}-1-{paid.txn_id}"
    assert "Amount differs" in text_of(browser, f"difference-{difference}")
    shot(browser, "queue")
    fill(browser, f"difference-{difference}", {"action": 1, "why": "WeChat charged 0.50 more; confirmed with the merchant desk"})
    press(browser, f"resolve-{difference}")
    assert f"Resolved: {difference}" in page_text(browser)
    go(browser, console, "/settlement/queue?state=all")
    resolved = text_of(browser, f"difference-{difference}")
    assert "Resolved" in resolved and "by root" in resolved and "confirmed with the merchant desk" in resolved
    shot(browser, "queue-resolved")
    go(browser, console, f"/settlement/station?station=12&day={date}")
    assert "The whole station" in page_text(browser)
    shot(browser, "station-day")


def test_an_operator_of_station_12_cannot_see_station_13s_cards(console, browser):
    AdminClient(console.process.channel(), "root").IssueCard(card_id=OTHER_STATION_CARD, org_id=13, card_type=2)
    login(browser, console, "desk-12")
    go(browser, console, f"/cards/{OTHER_STATION_CARD}")
    assert text_of(browser, "error-text") == f"card {OTHER_STATION_CARD} not found"
    shot(browser, "card-of-another-station")
    go(browser, console, "/cards")
    listed = text_of(browser, "card-list")
    assert str(COUNTER_CARD) in listed and str(OTHER_STATION_CARD) not in listed
    go(browser, console, f"/cards?card={COUNTER_CARD}")
    assert text_of(browser, "card-id") == str(COUNTER_CARD)


def test_every_other_page(console, browser):
    login(browser, console, "root")
    # Customers: one created, its page with the export and erasure forms.
    go(browser, console, "/customers")
    fill(browser, "create", {"org_id": 12, "profile.name": "Li Wei", "profile.phone": "+86 138 0000 0000"})
    press(browser, "create")
    assert text_of(browser, "profile-name") == "Li Wei"
    shot(browser, "customer")
    go(browser, console, "/customers?q=li")
    shot(browser, "customers")
    # Loyalty: a contradiction in the rules is refused beside them.
    go(browser, console, "/loyalty")
    fill(browser, "gift", {"terms.gift_id": 7, "terms.points_price": 500})
    press(browser, "gift")
    fill(browser, "stock", {"gift_id": 7, "delta": 20})
    press(browser, "stock")
    assert text_of(browser, "gift-7-stock") == "20"
    rules = by_id(browser, "rules-rules_json").get_attribute("value").replace('"base_points_per_unit": 1', '"base_points_per_unit": -3')
    browser.execute_script("arguments[0].value = arguments[1]", by_id(browser, "rules-rules_json"), rules)
    press(browser, "rules")
    assert "base_points_per_unit" in text_of(browser, "rules-rules_json-error")
    shot(browser, "loyalty")
    # Risk: a card blacklisted.
    go(browser, console, "/risk")
    fill(browser, "blacklist", {"card_id": OTHER_STATION_CARD, "reason": "card reported skimmed"})
    press(browser, "blacklist")
    assert "card reported skimmed" in text_of(browser, "blacklist-panel")
    shot(browser, "risk")
    # Administration: a station, a terminal whose secret shows once, the rest.
    go(browser, console, "/admin")
    fill(browser, "organisation", {"parent_id": 2, "kind": 3, "name": "Station 14", "org_id": 14})
    press(browser, "organisation")
    assert "14 · Station 14" in text_of(browser, "tree")
    shot(browser, "admin-organisations")
    go(browser, console, "/admin/terminals")
    fill(browser, "terminal", {"terminal_id": 1401, "station_id": 14, "name": "Pump 1"})
    press(browser, "terminal")
    secret = text_of(browser, "secret-key")
    assert len(secret) == 64 and int(secret, 16) >= 0
    shot(browser, "admin-terminals")
    go(browser, console, "/admin/terminals")
    assert secret not in page_text(browser), "the secret is shown once"
    for name in ("operators", "users", "parameters"):
        go(browser, console, f"/admin/{name}")
        shot(browser, f"admin-{name}")
    go(browser, console, "/")
    assert text_of(browser, "takings-total") != "CNY 0.00"
    shot(browser, "dashboard")
    click(browser, "locale-zh-CN")
    assert "今日营收" in page_text(browser)
    shot(browser, "dashboard-zh-CN")
    go(browser, console, "/cards/" + str(COUNTER_CARD))
    shot(browser, "card-zh-CN")
    click(browser, "locale-en")


def test_the_audit_log_shows_each_action(console, browser):
    login(browser, console, "auditor")
    go(browser, console, "/admin/audit")
    log = text_of(browser, "audit")
    for action, object_name in (("IssueCard", f"card:{COUNTER_CARD}"), ("ActivateCard", f"card:{COUNTER_CARD}"),
                                ("TopUpCard", f"card:{COUNTER_CARD}"), ("CreateCustomer", "customer:"),
                                ("CreateOrganisation", "organisation:14"), ("RegisterTerminal", "terminal:1401")):
        assert any(action in line and object_name in line and "user:root" in line for line in log.splitlines()), action
    press(browser, "verify")
    assert "intact" in text_of(browser, "verified")
    shot(browser, "audit")
