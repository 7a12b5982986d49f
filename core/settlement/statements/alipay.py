"""The Alipay trade bill (业务明细), as the merchant portal and the bill
download API give it.

Layout: CSV in GBK (UTF-8 is accepted too). '#' preface lines, of which
`#起始日期：[YYYY年MM月DD日 00:00:00]` gives the bill's day; a '#----...业务明细列表'
line; the detail header below; one line per trade (业务类型 交易) or refund
(业务类型 退款); a '#----...业务明细列表结束' line; '#' footer lines with the
totals: `#交易合计：N笔，商家实收共X元，...`, `#退款合计：N笔，商家实收共-X元，...` and,
in Tally's bills, `#服务费合计：X元`. IDs may carry a trailing tab (Alipay adds
it so that spreadsheets keep them as text). Amounts are yuan with two
decimals; refund amounts are negative. 服务费(元) is negative on a trade
(the fee taken) and positive on a refund (the fee given back). The column
names may use ASCII or full-width parentheses.

商户订单号 is Tally's transaction id of the sale; 退款批次号/请求号 that of the
refund (equal to the sale's for the undo of an earlier day's payment). Alipay
lists only what succeeded: a revoked payment shows as a trade and a refund.
"""

import datetime
import re

import msgspec

from core.results import Channel
from core.settlement.model import RowKind, RowStatus, Statement, StatementRow, StatementTotals, totals_of
from core.settlement.money import date_of_day, day_of_date, format_yuan, local_day, local_text_to_ms, ms_to_local_text
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
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号", "门店名称",
    "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）", "集分宝（元）",
    "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）", "券名称", "商家红包消费金额（元）",
    "卡消费金额（元）", "退款批次号/请求号", "服务费（元）", "分润（元）", "备注",
)
ASCII_ALIASES = {name.replace("（", "(").replace("）", ")"): name for name in DETAIL_COLUMNS if "（" in name}
UTC_OFFSET_MINUTES = 480
LIST_START = "#-----------------------------------------业务明细列表----------------------------------------"
LIST_END = "#-----------------------------------------业务明细列表结束------------------------------------"
_START_DATE = re.compile(r"#起始日期：\[(\d{4})年(\d{2})月(\d{2})日 00:00:00\]", re.ASCII)
_TRADE_TOTAL = re.compile(r"#交易合计：(\d+)笔，商家实收共([-+]?\d+\.\d{2})元(?:，.*)?", re.ASCII)
_REFUND_TOTAL = re.compile(r"#退款合计：(\d+)笔，商家实收共([-+]?\d+\.\d{2})元(?:，.*)?", re.ASCII)
_FEE_TOTAL = re.compile(r"#服务费合计：([-+]?\d+\.\d{2})元", re.ASCII)
_KINDS = {"交易": RowKind.PAYMENT, "退款": RowKind.REFUND}


def _time(text: str, line: int, column: str, utc_offset_minutes: int) -> int:
    try:
        return local_text_to_ms(text, utc_offset_minutes)
    except ValueError:
        raise StatementError(line, f"{column}: {text!r} is not YYYY-MM-DD HH:MM:SS") from None


def _row(fields: list[str], line: int, utc_offset_minutes: int) -> StatementRow:
    if len(fields) != len(DETAIL_COLUMNS):
        raise StatementError(line, f"{len(fields)} fields, the detail header has {len(DETAIL_COLUMNS)}")
    get = dict(zip(DETAIL_COLUMNS, (field.rstrip("\t") for field in fields))).__getitem__
    kind = _KINDS.get(get("业务类型"))
    if kind is None:
        raise StatementError(line, f"业务类型: {get('业务类型')!r} is not 交易 or 退款")
    order = amount(get("订单金额（元）"), line, "订单金额（元）")
    received = amount(get("商家实收（元）"), line, "商家实收（元）")
    if (kind == RowKind.PAYMENT and order <= 0) or (kind == RowKind.REFUND and order >= 0):
        raise StatementError(line, f"订单金额（元）: {format_yuan(order)} has the wrong sign for {get('业务类型')}")
    if received != order:
        raise StatementError(line, f"商家实收（元） {format_yuan(received)} differs from 订单金额（元） {format_yuan(order)} without a discount column to explain it")
    refund = kind == RowKind.REFUND
    return StatementRow(
        line=line,
        kind=kind,
        status=RowStatus.SUCCESS,
        reference=reference(get("商户订单号"), line, "商户订单号"),
        refund_reference=reference(get("退款批次号/请求号"), line, "退款批次号/请求号") if refund else 0,
        channel_trade_no=get("支付宝交易号"),
        amount_minor=abs(order),
        fee_minor=-fee(get("服务费（元）"), line, "服务费（元）"),
        time_ms=_time(get("完成时间"), line, "完成时间", utc_offset_minutes),
        device=get("终端号"),
    )


def _preface_day(lines: list[str], list_start: int) -> int:
    for number in range(list_start):
        match = _START_DATE.fullmatch(lines[number].split("   ")[0].strip())
        if match:
            try:
                return day_of_date(datetime.date(*(int(part) for part in match.groups())))
            except ValueError:
                raise StatementError(number + 1, f"起始日期 {match.group(0)!r} is not a date") from None
    raise StatementError(list_start + 1, "no '#起始日期：[YYYY年MM月DD日 00:00:00]' line before the detail list")


def _footer_totals(lines: list[str], first: int, rows: tuple) -> tuple[StatementTotals, int]:
    """The totals the footer states, shaped like totals_of(rows), and the line
    to blame if they disagree."""
    found = {}
    for number in range(first, len(lines)):
        text = lines[number].strip()
        if not text:
            continue
        if not text.startswith("#"):
            raise StatementError(number + 1, "only '#' lines may follow the detail list")
        for name, pattern in (("trades", _TRADE_TOTAL), ("refunds", _REFUND_TOTAL), ("fees", _FEE_TOTAL)):
            match = pattern.fullmatch(text)
            if match:
                found[name] = (number + 1, match.groups())
    for name, label in (("trades", "#交易合计"), ("refunds", "#退款合计")):
        if name not in found:
            raise StatementError(len(lines), f"no '{label}：N笔，商家实收共X元' footer line")
    trades_line, (trade_count, trade_sum) = found["trades"]
    refunds_line, (refund_count, refund_sum) = found["refunds"]
    computed = totals_of(rows)
    fees = computed.fees_minor
    if "fees" in found:
        fees = -amount(found["fees"][1][0], found["fees"][0], "服务费合计")
    stated = StatementTotals(
        rows=int(trade_count) + int(refund_count),
        payments_minor=amount(trade_sum, trades_line, "交易合计"),
        refunds_minor=-amount(refund_sum, refunds_line, "退款合计"),
        fees_minor=fees,
    )
    return stated, max(trades_line, refunds_line)


def parse(data: bytes, day: int | None = None, utc_offset_minutes: int = UTC_OFFSET_MINUTES) -> Statement:
    """An Alipay trade bill -> Statement; StatementError on the first bad line."""
    lines = decode_text(data, ("utf-8-sig", "gb18030")).splitlines()
    try:
        start = next(i for i, text in enumerate(lines) if text.strip() == LIST_START)
    except StopIteration:
        raise StatementError(len(lines), "no '#-----...业务明细列表-----' line: not an Alipay trade bill") from None
    for number in range(start):
        if lines[number].strip() and not lines[number].startswith("#"):
            raise StatementError(number + 1, "only '#' lines may come before the detail list")
    bill_day = _preface_day(lines, start)
    if day is not None and day != bill_day:
        raise StatementError(0, f"the bill is for {date_of_day(bill_day)}, not {date_of_day(day)}")
    try:
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == LIST_END)
    except StopIteration:
        raise StatementError(len(lines), "no '#-----...业务明细列表结束-----' line after the detail rows") from None
    if end == start + 1:
        raise StatementError(start + 2, "no detail header after the list start")
    parsed = list(csv_rows(lines[start + 1 : end], start + 2))
    check_header([field.strip() for field in parsed[0][1]], DETAIL_COLUMNS, start + 2, "Alipay trade bill detail", ASCII_ALIASES)
    rows = tuple(_row(fields, line, utc_offset_minutes) for line, fields in parsed[1:])
    for row in rows:
        if local_day(row.time_ms, utc_offset_minutes) != bill_day:
            raise StatementError(row.line, "完成时间 is not on the bill's day")
    stated, totals_line = _footer_totals(lines, end + 1, rows)
    check_totals(stated, totals_of(rows), totals_line)
    return Statement(channel=Channel.ALIPAY, day=bill_day, merchant_id=_account(lines, start), rows=rows, totals=totals_of(rows))


def _account(lines: list[str], list_start: int) -> str:
    for text in lines[:list_start]:
        match = re.fullmatch(r"#账号：\[(\w*)\]", text.strip())
        if match:
            return match.group(1)
    return ""


# ---------------------------------------------------------------- writing


def _detail_fields(row: StatementRow, utc_offset_minutes: int) -> list[str]:
    refund = row.kind == RowKind.REFUND
    signed = -row.amount_minor if refund else row.amount_minor
    time_text = ms_to_local_text(row.time_ms, utc_offset_minutes)
    values = {
        "支付宝交易号": row.channel_trade_no + "\t",
        "商户订单号": f"{row.reference}\t",
        "业务类型": "退款" if refund else "交易",
        "商品名称": "Tally sale",
        "创建时间": time_text,
        "完成时间": time_text,
        "门店编号": "",
        "门店名称": "",
        "操作员": "",
        "终端号": row.device,
        "对方账户": "tally***@example.com",
        "订单金额（元）": format_yuan(signed),
        "商家实收（元）": format_yuan(signed),
        "支付宝红包（元）": "0.00",
        "集分宝（元）": "0.00",
        "支付宝优惠（元）": "0.00",
        "商家优惠（元）": "0.00",
        "券核销金额（元）": "0.00",
        "券名称": "",
        "商家红包消费金额（元）": "0.00",
        "卡消费金额（元）": "0.00",
        "退款批次号/请求号": f"{row.refund_reference}\t" if refund else "",
        "服务费（元）": format_yuan(-row.fee_minor),
        "分润（元）": "0.00",
        "备注": "",
    }
    return [values[name] for name in DETAIL_COLUMNS]


def listed_rows(rows) -> list[StatementRow]:
    """What Alipay lists: only what succeeded; a payment revoked the same day
    is a trade and a refund of it (whose request number is the order's)."""
    listed = []
    for row in rows:
        if row.kind == RowKind.PAYMENT and row.status == RowStatus.REVOKED:
            listed.append(msgspec.structs.replace(row, status=RowStatus.SUCCESS))
            listed.append(msgspec.structs.replace(row, kind=RowKind.REFUND, status=RowStatus.SUCCESS, refund_reference=row.reference, fee_minor=-row.fee_minor))
        elif row.status == RowStatus.SUCCESS:
            listed.append(row)
    return listed


def write(statement: Statement, utc_offset_minutes: int = UTC_OFFSET_MINUTES, exported_ms: int | None = None) -> bytes:
    """Statement -> the bill's bytes (GBK), as Alipay writes it."""
    date = date_of_day(statement.day)
    next_date = date_of_day(statement.day + 1)
    rows = listed_rows(statement.rows)
    trades = [row for row in rows if row.kind == RowKind.PAYMENT]
    refunds = [row for row in rows if row.kind == RowKind.REFUND]
    exported = ms_to_local_text(exported_ms, utc_offset_minutes) if exported_ms else f"{next_date} 09:00:00"
    lines = [
        "#支付宝业务明细查询",
        f"#账号：[{statement.merchant_id}]",
        f"#起始日期：[{date:%Y年%m月%d日} 00:00:00]   终止日期：[{next_date:%Y年%m月%d日} 00:00:00]",
        LIST_START,
        ",".join(DETAIL_COLUMNS),
        *(",".join(_detail_fields(row, utc_offset_minutes)) for row in rows),
        LIST_END,
        f"#交易合计：{len(trades)}笔，商家实收共{format_yuan(sum(r.amount_minor for r in trades))}元，商家优惠共0.00元",
        f"#退款合计：{len(refunds)}笔，商家实收共{format_yuan(-sum(r.amount_minor for r in refunds))}元，商家优惠共0.00元",
        f"#服务费合计：{format_yuan(-sum(row.fee_minor for row in rows))}元",
        f"#导出时间：[{exported.replace('-', '年', 1).replace('-', '月', 1).replace(' ', '日 ', 1)}]",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("gb18030")
