"""The bank card acquirer's settlement file: Tally's own fixed-width format.

Acquirers each have their own layout; this is the one Tally asks of its
acquirer (or converts theirs to). ASCII, one record a line (LF or CRLF), every
line exactly 120 characters. Numbers are right-aligned and zero-padded,
texts left-aligned and space-padded. Amounts are minor units (fen), so no
decimal point ever appears. Positions are 1-based and inclusive.

  Header, first line:
    1       record type 'H'
    2-16    acquirer id
    17-31   merchant id
    32-39   settlement date, YYYYMMDD (local time)
    40-53   file created, YYYYMMDDHHMMSS
    54-55   format version '01'
    56-120  spaces

  Detail, one per payment or refund:
    1       record type 'D'
    2-3     transaction code: '00' purchase, '20' refund (also the undo of an
            earlier day's purchase: then the refund reference is the purchase's)
    4-5     status: '00' approved, '01' purchase revoked the same day,
            '05' failed, '09' in process
    6-25    merchant reference: Tally's transaction id of the sale
    26-45   refund reference: Tally's transaction id of the refund; zeros for
            a purchase
    46-57   retrieval reference number (the acquirer's id)
    58-65   terminal id
    66-79   transaction time, YYYYMMDDHHMMSS (local time)
    80-91   amount, minor units
    92      fee sign, '+' (charged) or '-' (given back on a refund)
    93-102  fee, minor units
    103-120 spaces

  Trailer, last line:
    1       record type 'T'
    2-10    number of detail records
    11-25   purchases, total minor units (approved and revoked)
    26-40   refunds, total minor units (approved)
    41      fee total sign
    42-55   fee total, minor units
    56-120  spaces
"""

from core.results import Channel
from core.settlement.model import RowKind, RowStatus, Statement, StatementRow, StatementTotals, totals_of
from core.settlement.money import date_of_day, local_day, local_text_to_ms, ms_to_local_text
from core.settlement.statements.common import StatementError, check_totals, decode_text

LINE_LENGTH = 120
VERSION = "01"
UTC_OFFSET_MINUTES = 480
ACQUIRER_ID = "TALLYACQ"
TRANSACTION_CODES = {"00": RowKind.PAYMENT, "20": RowKind.REFUND}
STATUS_CODES = {"00": RowStatus.SUCCESS, "01": RowStatus.REVOKED, "05": RowStatus.FAILED, "09": RowStatus.PROCESSING}
CODE_OF_KIND = {kind: code for code, kind in TRANSACTION_CODES.items()}
CODE_OF_STATUS = {status: code for code, status in STATUS_CODES.items()}


def _field(text: str, start: int, end: int) -> str:
    return text[start - 1 : end]


def _number(text: str, start: int, end: int, line: int, name: str) -> int:
    value = _field(text, start, end)
    if not value.isdigit() or not value.isascii():
        raise StatementError(line, f"positions {start}-{end} ({name}): {value!r} is not a zero-padded number")
    return int(value)


def _time(text: str, start: int, end: int, line: int, name: str, utc_offset_minutes: int) -> int:
    value = _field(text, start, end)
    layout = "%Y%m%d%H%M%S" if end - start == 13 else "%Y%m%d"
    try:
        if not value.isdigit():
            raise ValueError
        return local_text_to_ms(value, utc_offset_minutes, layout)
    except ValueError:
        raise StatementError(line, f"positions {start}-{end} ({name}): {value!r} is not a {layout.replace('%', '')} time") from None


def _signed(text: str, sign_at: int, start: int, end: int, line: int, name: str) -> int:
    sign = _field(text, sign_at, sign_at)
    if sign not in "+-" or not sign:
        raise StatementError(line, f"position {sign_at} ({name} sign): {sign!r} is not '+' or '-'")
    value = _number(text, start, end, line, name)
    return -value if sign == "-" else value


def _detail(text: str, line: int, utc_offset_minutes: int) -> StatementRow:
    kind = TRANSACTION_CODES.get(_field(text, 2, 3))
    if kind is None:
        raise StatementError(line, f"positions 2-3 (transaction code): {_field(text, 2, 3)!r} is not 00 or 20")
    status = STATUS_CODES.get(_field(text, 4, 5))
    if status is None or (kind == RowKind.REFUND and status == RowStatus.REVOKED):
        raise StatementError(line, f"positions 4-5 (status): {_field(text, 4, 5)!r} is not a status of this transaction code")
    reference = _number(text, 6, 25, line, "merchant reference")
    refund_reference = _number(text, 26, 45, line, "refund reference")
    if reference == 0 or reference >= 2**64 or refund_reference >= 2**64 or (kind == RowKind.REFUND) != (refund_reference != 0):
        raise StatementError(line, "positions 6-45: references must be Tally transaction ids, the refund's only on a refund")
    amount = _number(text, 80, 91, line, "amount")
    if amount == 0:
        raise StatementError(line, "positions 80-91 (amount): zero")
    if _field(text, 103, 120).strip():
        raise StatementError(line, "positions 103-120 must be spaces")
    return StatementRow(
        line=line,
        kind=kind,
        status=status,
        reference=reference,
        refund_reference=refund_reference,
        channel_trade_no=_field(text, 46, 57).strip(),
        amount_minor=amount,
        fee_minor=_signed(text, 92, 93, 102, line, "fee"),
        time_ms=_time(text, 66, 79, line, "transaction time", utc_offset_minutes),
        device=_field(text, 58, 65).strip(),
    )


def parse(data: bytes, day: int | None = None, utc_offset_minutes: int = UTC_OFFSET_MINUTES) -> Statement:
    """An acquirer settlement file -> Statement; StatementError on the first bad line."""
    lines = decode_text(data, ("ascii",)).splitlines()
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        raise StatementError(len(lines), "a settlement file has at least a header and a trailer line")
    for number, text in enumerate(lines, 1):
        if len(text) != LINE_LENGTH:
            raise StatementError(number, f"{len(text)} characters, every line has {LINE_LENGTH}")
        if text[0] != ("H" if number == 1 else "T" if number == len(lines) else "D"):
            expected = "H (header)" if number == 1 else "T (trailer)" if number == len(lines) else "D (detail)"
            raise StatementError(number, f"record type {text[0]!r}, expected {expected}")
    header = lines[0]
    if _field(header, 54, 55) != VERSION:
        raise StatementError(1, f"positions 54-55 (version): {_field(header, 54, 55)!r}, this parser reads {VERSION}")
    file_day = local_day(_time(header, 32, 39, 1, "settlement date", 0), 0)
    if day is not None and day != file_day:
        raise StatementError(1, f"the file settles {date_of_day(file_day)}, not {date_of_day(day)}")
    rows = tuple(_detail(text, number, utc_offset_minutes) for number, text in enumerate(lines[1:-1], 2))
    for row in rows:
        if local_day(row.time_ms, utc_offset_minutes) != file_day:
            raise StatementError(row.line, "positions 66-79 (transaction time): not on the settlement date")
    trailer, trailer_line = lines[-1], len(lines)
    if _field(trailer, 56, 120).strip():
        raise StatementError(trailer_line, "positions 56-120 must be spaces")
    stated = StatementTotals(
        rows=_number(trailer, 2, 10, trailer_line, "record count"),
        payments_minor=_number(trailer, 11, 25, trailer_line, "purchases total"),
        refunds_minor=_number(trailer, 26, 40, trailer_line, "refunds total"),
        fees_minor=_signed(trailer, 41, 42, 55, trailer_line, "fee total"),
    )
    check_totals(stated, totals_of(rows), trailer_line)
    merchant = _field(header, 17, 31).strip()
    return Statement(channel=Channel.BANK_CARD, day=file_day, merchant_id=merchant, rows=rows, totals=totals_of(rows))


# ---------------------------------------------------------------- writing


def _detail_line(row: StatementRow, utc_offset_minutes: int) -> str:
    line = (
        "D"
        + CODE_OF_KIND[row.kind]
        + CODE_OF_STATUS[row.status]
        + f"{row.reference:020d}"
        + f"{row.refund_reference:020d}"
        + f"{row.channel_trade_no[:12]:<12}"
        + f"{row.device[:8]:<8}"
        + ms_to_local_text(row.time_ms, utc_offset_minutes, "%Y%m%d%H%M%S")
        + f"{row.amount_minor:012d}"
        + ("-" if row.fee_minor < 0 else "+")
        + f"{abs(row.fee_minor):010d}"
    )
    return f"{line:<{LINE_LENGTH}}"


def write(statement: Statement, utc_offset_minutes: int = UTC_OFFSET_MINUTES, created_ms: int | None = None) -> bytes:
    """Statement -> the settlement file's bytes (ASCII)."""
    date = date_of_day(statement.day)
    created = created_ms if created_ms is not None else local_text_to_ms(f"{date_of_day(statement.day + 1)} 06:00:00", utc_offset_minutes)
    header = f"H{ACQUIRER_ID:<15}{statement.merchant_id[:15]:<15}{date:%Y%m%d}" + ms_to_local_text(created, utc_offset_minutes, "%Y%m%d%H%M%S") + VERSION
    totals = statement.totals
    trailer = (
        f"T{totals.rows:09d}{totals.payments_minor:015d}{totals.refunds_minor:015d}"
        + ("-" if totals.fees_minor < 0 else "+")
        + f"{abs(totals.fees_minor):014d}"
    )
    lines = [f"{header:<{LINE_LENGTH}}", *(_detail_line(row, utc_offset_minutes) for row in statement.rows), f"{trailer:<{LINE_LENGTH}}"]
    return ("\n".join(lines) + "\n").encode("ascii")

