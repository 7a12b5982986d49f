"""Statement formats: exact money, round trips, and every rejection with its
line number and reason (nothing of a bad file is imported)."""

import os

import pytest

from core.results import Channel
from core.settlement import queue
from core.settlement.model import RowKind, RowStatus, Statement, StatementRow, totals_of
from core.settlement.money import AmountError, format_yuan, local_text_to_ms, parse_fee_yuan, parse_yuan
from core.settlement.statements import StatementError, alipay, bank, parse_statement, wechat, write_statement
from core.store import open_store
from tests.support import REPO

DATA = os.path.join(REPO, "tests", "data", "settlement")
DAY = 19875  # 2024-06-01
T0 = local_text_to_ms("2024-06-01 10:00:00", 480)


def rows():
    row = lambda **fields: StatementRow(**{**dict(line=0, status=RowStatus.SUCCESS, refund_reference=0, device="101", fee_minor=0), **fields})  # noqa: E731
    return (
        row(kind=RowKind.PAYMENT, reference=11, channel_trade_no="4200000011", amount_minor=12345, fee_minor=74, time_ms=T0),
        row(kind=RowKind.PAYMENT, status=RowStatus.REVOKED, reference=12, channel_trade_no="4200000012", amount_minor=500, fee_minor=3, time_ms=T0 + 1000),
        row(kind=RowKind.REFUND, reference=9, refund_reference=13, channel_trade_no="5000000013", amount_minor=200, fee_minor=-1, time_ms=T0 + 2000),
        row(kind=RowKind.REFUND, reference=7, refund_reference=7, channel_trade_no="5000000007", amount_minor=1, fee_minor=0, time_ms=T0 + 3000),
    )


def statement(channel) -> Statement:
    return Statement(channel=channel, day=DAY, merchant_id="1900000001", rows=rows(), totals=totals_of(rows()))


# ------------------------------------------------------------------ money


@pytest.mark.parametrize("text, minor", [("0.00", 0), ("12.34", 1234), ("-0.60", -60), ("+5.00", 500), ("999999999999999.99", 99999999999999999)])
def test_yuan_strings_are_parsed_exactly(text, minor):
    assert parse_yuan(text) == minor
    assert format_yuan(minor) == text.lstrip("+")


@pytest.mark.parametrize("text", ["1.2", "1.234", "1,000.00", "1e3", " 1.00", "1.00 ", "", "NaN", ".50", "１.００", "0x1.00", "--1.00", "1.0e"])
def test_malformed_amounts_are_refused(text):
    with pytest.raises(AmountError):
        parse_yuan(text)


def test_fees_may_carry_five_decimals_but_only_whole_fen():
    assert parse_fee_yuan("0.60000") == 60
    assert parse_fee_yuan("-0.01000") == -1
    assert parse_fee_yuan("0.06") == 6
    with pytest.raises(AmountError, match="fraction of a minor unit"):
        parse_fee_yuan("0.00600")


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("channel", [Channel.WECHAT_PAY, Channel.BANK_CARD])
def test_a_statement_survives_its_format(channel):
    original = statement(channel)
    parsed = parse_statement(channel, write_statement(original))
    assert parsed.day == DAY and parsed.totals == original.totals
    strip = lambda row: (row.kind, row.status, row.reference, row.refund_reference, row.channel_trade_no, row.amount_minor, row.fee_minor, row.time_ms)  # noqa: E731
    assert [strip(row) for row in parsed.rows] == [strip(row) for row in original.rows]
    assert [row.line for row in parsed.rows] == [2, 3, 4, 5]


def test_alipay_lists_a_revoked_payment_as_a_trade_and_its_refund():
    data = write_statement(statement(Channel.ALIPAY))
    assert data.decode("gbk")  # Alipay writes GBK
    parsed = parse_statement(Channel.ALIPAY, data)
    kinds = [(row.kind, row.reference, row.refund_reference, row.amount_minor, row.fee_minor) for row in parsed.rows]
    assert kinds == [
        (RowKind.PAYMENT, 11, 0, 12345, 74),
        (RowKind.PAYMENT, 12, 0, 500, 3),
        (RowKind.REFUND, 12, 12, 500, -3),
        (RowKind.REFUND, 9, 13, 200, -1),
        (RowKind.REFUND, 7, 7, 1, 0),
    ]
    assert parsed.merchant_id == "1900000001"


def test_alipay_ids_keep_no_trailing_tab_and_ascii_parentheses_are_accepted():
    text = write_statement(statement(Channel.ALIPAY)).decode("gb18030")
    assert "\t," in text  # Alipay's trailing tabs are there...
    text = text.replace("（元）", "(元)")
    parsed = parse_statement(Channel.ALIPAY, text.encode("gbk"))
    assert parsed.rows[0].channel_trade_no == "4200000011"  # ...and gone once parsed
    assert parsed.rows[0].reference == 11


def test_wechat_bills_in_gbk_and_with_a_bom_are_read():
    text = write_statement(statement(Channel.WECHAT_PAY)).decode("utf-8")
    assert parse_statement(Channel.WECHAT_PAY, text.encode("gbk")).totals == totals_of(rows())
    assert parse_statement(Channel.WECHAT_PAY, b"\xef\xbb\xbf" + text.encode("utf-8")).totals == totals_of(rows())


# ------------------------------------------------------------------ rejections


def _lines(channel) -> list[str]:
    encoding = "gb18030" if channel == Channel.ALIPAY else "utf-8"
    return write_statement(statement(channel)).decode(encoding).split("\r\n" if channel != Channel.BANK_CARD else "\n")


def _rejected(channel, lines) -> StatementError:
    encoding = "gb18030" if channel == Channel.ALIPAY else "utf-8"
    with pytest.raises(StatementError) as caught:
        parse_statement(channel, "\n".join(lines).encode(encoding))
    return caught.value


def _edit(lines, number, old, new):
    lines = list(lines)
    assert old in lines[number - 1], (old, lines[number - 1])
    lines[number - 1] = lines[number - 1].replace(old, new, 1)
    return lines


WECHAT_CASES = [
    ("amount without two decimals", lambda l: _edit(l, 3, "`5.00,", "`5.0,"), 3, "应结订单金额: '5.0' is not an amount"),
    ("amount with a thousands separator", lambda l: _edit(l, 2, "`123.45,", '`"1,23.45",'), 2, "28 fields"),
    ("field without its backtick", lambda l: _edit(l, 2, ",`CNY,", ",CNY,"), 2, "field 12 ('CNY') does not start with a backtick"),
    ("unknown trade status", lambda l: _edit(l, 3, "`REVOKED", "`NOTPAY"), 3, "交易状态: 'NOTPAY'"),
    ("order number not a Tally id", lambda l: _edit(l, 2, ",`11,", ",`A11,"), 2, "商户订单号: 'A11' is not a Tally transaction id"),
    ("foreign currency", lambda l: _edit(l, 4, "`CNY", "`USD"), 4, "only CNY"),
    ("bad time", lambda l: _edit(l, 2, "`2024-06-01 10:00:00", "`2024-06-31 10:00:00"), 2, "交易时间"),
    ("row on another day", lambda l: _edit(l, 5, "`2024-06-01", "`2024-06-02"), 5, "not on the bill's day"),
    ("refund status unknown", lambda l: _edit(l, 4, "`ORIGINAL,`SUCCESS", "`ORIGINAL,`DONE"), 4, "退款状态"),
    ("summary count wrong", lambda l: _edit(l, 7, "`4,", "`5,"), 7, "stated total rows is 5 but the rows add up to 4"),
    ("summary payments wrong", lambda l: _edit(l, 7, "`128.45", "`128.46"), 7, "payments_minor is 12846"),
    ("no summary", lambda l: l[:5], 5, "no summary header"),
    ("summary line missing", lambda l: l[:6], 7, "exactly one summary line"),
    ("text after the summary", lambda l: l[:7] + ["`junk"], 8, "exactly one summary line"),
    ("header renamed", lambda l: _edit(l, 1, "商户订单号", "订单号"), 1, "missing columns 商户订单号"),
]


@pytest.mark.parametrize("name, mutate, line, reason", WECHAT_CASES, ids=[case[0] for case in WECHAT_CASES])
def test_wechat_rejections_name_the_line(name, mutate, line, reason):
    error = _rejected(Channel.WECHAT_PAY, mutate(_lines(Channel.WECHAT_PAY)))
    assert error.line == line, str(error)
    assert reason in str(error)


ALIPAY_CASES = [
    ("negative trade", lambda l: _edit(l, 6, ",123.45,123.45,", ",-123.45,-123.45,"), 6, "wrong sign for 交易"),
    ("received differs from order", lambda l: _edit(l, 6, ",123.45,123.45,", ",123.45,120.00,"), 6, "商家实收"),
    ("business type unknown", lambda l: _edit(l, 7, ",交易,", ",转账,"), 7, "业务类型"),
    ("fee not whole fen", lambda l: _edit(l, 6, ",-0.74,", ",-0.745,"), 6, "服务费"),
    ("footer total wrong", lambda l: _edit(l, 12, "共128.45元", "共128.44元"), 13, "payments_minor is 12844"),
    ("no end of list", lambda l: [x for x in l if "列表结束" not in x], 14, "业务明细列表结束"),
    ("no start date", lambda l: [x for x in l if "起始日期" not in x], 3, "起始日期"),
    ("detail row outside the list", lambda l: l[:3] + ["123,456"] + l[3:], 4, "only '#' lines"),
    ("refund request number missing", lambda l: _edit(l, 9, ",13\t,", ",,"), 9, "退款批次号/请求号"),
]


@pytest.mark.parametrize("name, mutate, line, reason", ALIPAY_CASES, ids=[case[0] for case in ALIPAY_CASES])
def test_alipay_rejections_name_the_line(name, mutate, line, reason):
    error = _rejected(Channel.ALIPAY, mutate(_lines(Channel.ALIPAY)))
    assert error.line == line, str(error)
    assert reason in str(error)


def _at(line: str, start: int, value: str) -> str:
    return line[: start - 1] + value + line[start - 1 + len(value) :]


BANK_CASES = [
    ("short line", lambda l: _edit(l, 2, " " * 18, " " * 17), 2, "119 characters"),
    ("unknown record type", lambda l: ["X" + l[0][1:]] + l[1:], 1, "expected H (header)"),
    ("amount not a number", lambda l: [l[0], _at(l[1], 80, "00000001234X")] + l[2:], 2, "positions 80-91 (amount)"),
    ("fee sign", lambda l: [l[0], _at(l[1], 92, "*")] + l[2:], 2, "position 92 (fee sign)"),
    ("refund reference on a purchase", lambda l: [l[0], _at(l[1], 26, "1".zfill(20))] + l[2:], 2, "positions 6-45"),
    ("transaction code", lambda l: [l[0], _at(l[1], 2, "99")] + l[2:], 2, "transaction code"),
    ("trailer count", lambda l: l[:-2] + [_at(l[-2], 2, "000000009")], 6, "stated total rows is 9"),
    ("version", lambda l: [_at(l[0], 54, "02")] + l[1:], 1, "version"),
    ("non-ASCII byte", lambda l: [l[0], _at(l[1], 110, "é")] + l[2:], 2, "not text in ascii"),
]


@pytest.mark.parametrize("name, mutate, line, reason", BANK_CASES, ids=[case[0] for case in BANK_CASES])
def test_bank_file_rejections_name_the_line(name, mutate, line, reason):
    error = _rejected(Channel.BANK_CARD, mutate(_lines(Channel.BANK_CARD)))
    assert error.line == line, str(error)
    assert reason in str(error)


def test_a_rejected_file_imports_nothing(tmp_path):
    store = open_store(str(tmp_path / "data"), 2**28)
    good = write_statement(statement(Channel.WECHAT_PAY))
    bad = good.replace(b"`123.45,", b"`123.4,", 1)
    with pytest.raises(StatementError, match="line 2"):
        queue.import_statement(store, Channel.WECHAT_PAY, bad, "bad.csv", "tester")
    assert queue.imports(store) == [] and queue.load_statement(store, Channel.WECHAT_PAY, DAY) is None
    assert queue.actions(store) == []
    result, record = queue.import_statement(store, Channel.WECHAT_PAY, good, "good.csv", "tester")
    assert result == queue.ImportResult.IMPORTED and record.rows == 4
    store.close()


# ------------------------------------------------------------------ samples


SAMPLES = {
    "wechat_pay-2024-06-01.csv": Channel.WECHAT_PAY,
    "alipay-2024-06-01.csv": Channel.ALIPAY,
    "bank_card-2024-06-01.txt": Channel.BANK_CARD,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_sample_statements_parse(name):
    with open(os.path.join(DATA, name), "rb") as file:
        parsed = parse_statement(SAMPLES[name], file.read())
    assert parsed.day == DAY and parsed.rows and parsed.totals == totals_of(parsed.rows)


BAD_SAMPLES = {
    "bad/wechat_pay-amount.csv": (Channel.WECHAT_PAY, 3, "应结订单金额: '12.3' is not an amount with two decimals"),
    "bad/wechat_pay-totals.csv": (Channel.WECHAT_PAY, 5, "stated total rows is 13 but the rows add up to 2"),
    "bad/alipay-footer.csv": (Channel.ALIPAY, 27, "no '#交易合计：N笔，商家实收共X元' footer line"),
    "bad/bank_card-length.txt": (Channel.BANK_CARD, 3, "121 characters, every line has 120"),
}


@pytest.mark.parametrize("name", sorted(BAD_SAMPLES))
def test_the_bad_sample_statements_are_rejected_with_their_line(name):
    channel, line, reason = BAD_SAMPLES[name]
    with open(os.path.join(DATA, name), "rb") as file:
        with pytest.raises(StatementError) as caught:
            parse_statement(channel, file.read())
    assert caught.value.line == line and reason in str(caught.value), str(caught.value)


def test_formats_write_what_they_document():
    bank_lines = write_statement(statement(Channel.BANK_CARD)).decode("ascii").splitlines()
    assert {len(line) for line in bank_lines} == {bank.LINE_LENGTH}
    assert bank_lines[1][5:25] == "11".zfill(20)
    wechat_lines = write_statement(statement(Channel.WECHAT_PAY)).decode().splitlines()
    assert wechat_lines[0].split(",") == list(wechat.DETAIL_COLUMNS)
    assert all(field.startswith("`") for field in wechat_lines[1].split(","))
    assert alipay.LIST_START in write_statement(statement(Channel.ALIPAY)).decode("gb18030")
