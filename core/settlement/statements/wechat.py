"""The WeChat Pay trade bill (交易账单, bill type ALL), as the merchant platform
and the downloadbill API give it.

Layout: UTF-8 CSV (GBK is accepted too). Line 1 is the detail header below;
then one line per payment or refund, every field prefixed with a backtick (`)
so that spreadsheets keep long numbers as text; then the summary header and
one summary line, also backticked. Amounts are yuan with two decimals; the fee
(手续费) may carry five ("0.60000"), but must be whole fen.

Rows Tally reads: 交易状态 SUCCESS (a payment), REVOKED (a payment revoked the
same day), REFUND (a refund: 退款状态 SUCCESS, PROCESSING, FAIL or CHANGE).
商户订单号 is Tally's transaction id of the sale; 商户退款单号 that of the
refund (equal to the sale's for the undo of an earlier day's payment).
The amount of a payment is 应结订单金额, of a refund 退款金额. A refund's fee
is negative: the share of the fee WeChat gives back.
"""

from core.results import Channel
from core.settlement.model import RowKind, RowStatus, Statement, StatementRow, StatementTotals, totals_of
from core.settlement.money import format_yuan, local_day, local_text_to_ms, ms_to_local_text
from core.settlement.statements.common import (
    StatementError,
    amount,
    check_header,
    check_totals,
    csv_rows,
    decode_text,
    fee,
    reference,
)

DETAIL_COLUMNS = (
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
    "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号",
    "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
    "手续费", "费率", "订单金额", "申请退款金额", "费率备注",
)
SUMMARY_COLUMNS = ("总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额", "申请退款总金额")
UTC_OFFSET_MINUTES = 480  # China Standard Time: WeChat writes local times
APP_ID = "wx0000000000000000"
REFUND_STATUS = {"SUCCESS": RowStatus.SUCCESS, "PROCESSING": RowStatus.PROCESSING, "FAIL": RowStatus.FAILED, "CHANGE": RowStatus.FAILED}
_COLUMN = {name: index for index, name in enumerate(DETAIL_COLUMNS)}


def _unbacktick(fields: list[str], line: int) -> list[str]:
    for number, field in enumerate(fields, 1):
        if not field.startswith("`"):
            raise StatementError(line, f"field {number} ({field!r}) does not start with a backtick")
    return [field[1:] for field in fields]


def _time(text: str, line: int, utc_offset_minutes: int) -> int:
    try:
        return local_text_to_ms(text, utc_offset_minutes)
    except ValueError:
        raise StatementError(line, f"交易时间: {text!r} is not YYYY-MM-DD HH:MM:SS") from None


def _row(fields: list[str], line: int, utc_offset_minutes: int) -> StatementRow:
    if len(fields) != len(DETAIL_COLUMNS):
        raise StatementError(line, f"{len(fields)} fields, the detail header has {len(DETAIL_COLUMNS)}")
    get = dict(zip(DETAIL_COLUMNS, _unbacktick(fields, line))).__getitem__
    if get("货币种类") != "CNY":
        raise StatementError(line, f"货币种类: {get('货币种类')!r}, only CNY is settled")
    status_text = get("交易状态")
    common = dict(
        line=line,
        reference=reference(get("商户订单号"), line, "商户订单号"),
        time_ms=_time(get("交易时间"), line, utc_offset_minutes),
        fee_minor=fee(get("手续费"), line, "手续费"),
        device=get("设备号"),
    )
    if status_text in ("SUCCESS", "REVOKED"):
        return StatementRow(
            kind=RowKind.PAYMENT,
            status=RowStatus.SUCCESS if status_text == "SUCCESS" else RowStatus.REVOKED,
            refund_reference=0,
            channel_trade_no=get("微信订单号"),
            amount_minor=_positive(amount(get("应结订单金额"), line, "应结订单金额"), line, "应结订单金额"),
            **common,
        )
    if status_text == "REFUND":
        status = REFUND_STATUS.get(get("退款状态"))
        if status is None:
            raise StatementError(line, f"退款状态: {get('退款状态')!r} is not one of {', '.join(REFUND_STATUS)}")
        return StatementRow(
            kind=RowKind.REFUND,
            status=status,
            refund_reference=reference(get("商户退款单号"), line, "商户退款单号"),
            channel_trade_no=get("微信退款单号"),
            amount_minor=_positive(amount(get("退款金额"), line, "退款金额"), line, "退款金额"),
            **common,
        )
    raise StatementError(line, f"交易状态: {status_text!r} is not SUCCESS, REVOKED or REFUND")


def _positive(value: int, line: int, column: str) -> int:
    if value <= 0:
        raise StatementError(line, f"{column}: {format_yuan(value)} is not a positive amount")
    return value


def _summary(fields: list[str], line: int) -> StatementTotals:
    if len(fields) != len(SUMMARY_COLUMNS):
        raise StatementError(line, f"{len(fields)} summary fields, the summary header has {len(SUMMARY_COLUMNS)}")
    get = dict(zip(SUMMARY_COLUMNS, _unbacktick(fields, line))).__getitem__
    if not (get("总交易单数").isascii() and get("总交易单数").isdigit()):
        raise StatementError(line, f"总交易单数: {get('总交易单数')!r} is not a count")
    return StatementTotals(
        rows=int(get("总交易单数")),
        payments_minor=amount(get("应结订单总金额"), line, "应结订单总金额"),
        refunds_minor=amount(get("退款总金额"), line, "退款总金额"),
        fees_minor=fee(get("手续费总金额"), line, "手续费总金额"),
    )


def parse(data: bytes, day: int | None = None, utc_offset_minutes: int = UTC_OFFSET_MINUTES) -> Statement:
    """A WeChat Pay trade bill -> Statement; StatementError on the first bad line.

    `day` is the bill's date (days since 1970-01-01); without it, the day of
    the rows. Every row must lie on that day in local time."""
    lines = decode_text(data).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise StatementError(0, "empty file")
    rows_by_line = list(csv_rows(lines, 1))
    check_header(rows_by_line[0][1], DETAIL_COLUMNS, 1, "WeChat Pay trade bill detail")
    summary_at = next((i for i, (_, fields) in enumerate(rows_by_line) if fields[:1] == [SUMMARY_COLUMNS[0]]), None)
    if summary_at is None:
        raise StatementError(len(lines), f"no summary header ({','.join(SUMMARY_COLUMNS)}) after the detail rows")
    check_header(rows_by_line[summary_at][1], SUMMARY_COLUMNS, summary_at + 1, "WeChat Pay trade bill summary")
    if len(rows_by_line) != summary_at + 2:
        line = summary_at + 2 if len(rows_by_line) == summary_at + 1 else summary_at + 3
        raise StatementError(line, "the summary header must be followed by exactly one summary line, and nothing after it")
    rows = tuple(_row(fields, line, utc_offset_minutes) for line, fields in rows_by_line[1:summary_at])
    totals_line, totals_fields = rows_by_line[summary_at + 1]
    check_totals(_summary(totals_fields, totals_line), totals_of(rows), totals_line)
    day = _statement_day(rows, day, utc_offset_minutes)
    merchant = _unbacktick(rows_by_line[1][1], 2)[_COLUMN["商户号"]] if rows else ""
    return Statement(channel=Channel.WECHAT_PAY, day=day, merchant_id=merchant, rows=rows, totals=totals_of(rows))


def _statement_day(rows, day: int | None, utc_offset_minutes: int) -> int:
    if day is None:
        if not rows:
            raise StatementError(0, "a bill without rows does not say its day: give it")
        day = local_day(rows[0].time_ms, utc_offset_minutes)
    for row in rows:
        if local_day(row.time_ms, utc_offset_minutes) != day:
            raise StatementError(row.line, "交易时间 is not on the bill's day")
    return day


# ---------------------------------------------------------------- writing


def _detail_fields(row: StatementRow, merchant_id: str, utc_offset_minutes: int) -> list[str]:
    refund = row.kind == RowKind.REFUND
    status = {RowStatus.SUCCESS: "SUCCESS", RowStatus.REVOKED: "REVOKED"}.get(row.status, "")
    refund_status = {RowStatus.SUCCESS: "SUCCESS", RowStatus.PROCESSING: "PROCESSING", RowStatus.FAILED: "FAIL"}[row.status] if refund else ""
    values = {
        "交易时间": ms_to_local_text(row.time_ms, utc_offset_minutes),
        "公众账号ID": APP_ID,
        "商户号": merchant_id,
        "特约商户号": "0",
        "设备号": row.device,
        "微信订单号": "" if refund else row.channel_trade_no,
        "商户订单号": str(row.reference),
        "用户标识": f"oTally{row.reference % 1_000_000:06d}",
        "交易类型": "MICROPAY",
        "交易状态": "REFUND" if refund else status,
        "付款银行": "OTHERS",
        "货币种类": "CNY",
        "应结订单金额": "0.00" if refund else format_yuan(row.amount_minor),
        "代金券金额": "0.00",
        "微信退款单号": row.channel_trade_no if refund else "0",
        "商户退款单号": str(row.refund_reference) if refund else "0",
        "退款金额": format_yuan(row.amount_minor) if refund else "0.00",
        "充值券退款金额": "0.00",
        "退款类型": "ORIGINAL" if refund else "",
        "退款状态": refund_status,
        "商品名称": "Tally sale",
        "商户数据包": "",
        "手续费": format_yuan(row.fee_minor) + "000",
        "费率": "0.60%",
        "订单金额": "0.00" if refund else format_yuan(row.amount_minor),
        "申请退款金额": format_yuan(row.amount_minor) if refund else "0.00",
        "费率备注": "",
    }
    return [values[name] for name in DETAIL_COLUMNS]


def write(statement: Statement, utc_offset_minutes: int = UTC_OFFSET_MINUTES) -> bytes:
    """Statement -> the bill's bytes (UTF-8), as WeChat Pay writes it."""
    totals = statement.totals
    lines = [",".join(DETAIL_COLUMNS)]
    for row in statement.rows:
        lines.append(",".join("`" + field for field in _detail_fields(row, statement.merchant_id, utc_offset_minutes)))
    lines.append(",".join(SUMMARY_COLUMNS))
    summary = (
        str(totals.rows),
        format_yuan(totals.payments_minor),
        format_yuan(totals.refunds_minor),
        "0.00",
        format_yuan(totals.fees_minor) + "000",
        format_yuan(totals.payments_minor),
        format_yuan(totals.refunds_minor),
    )
    lines.append(",".join("`" + field for field in summary))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
