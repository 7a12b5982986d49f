"""What every statement parser shares: the error, text decoding, fields.

A parser reads the whole file before it returns: it either gives a complete
Statement or raises StatementError naming the first bad line, so that nothing
of a bad file is ever imported.
"""

import csv

from core.settlement.money import AmountError, parse_fee_yuan, parse_yuan

# A day's statement of a busy network is a few hundred MB at most.
STATEMENT_BYTES_MAX = 512 * 2**20
REFERENCE_MAX = 2**64 - 1


class StatementError(ValueError):
    """A malformed statement: the line (1-based, 0 for the whole file) and why."""

    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.line = line
        self.reason = reason


def decode_text(data: bytes, encodings=("utf-8-sig", "gb18030")) -> str:
    """The file's text in the first encoding that decodes it whole. Alipay
    writes GBK (gb18030 is its superset); WeChat writes UTF-8."""
    if len(data) > STATEMENT_BYTES_MAX:
        raise StatementError(0, f"file is {len(data)} bytes, more than the {STATEMENT_BYTES_MAX} a statement may have")
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as error:
            failure = error
    line = data[: failure.start].count(b"\n") + 1
    raise StatementError(line, f"not text in {' or '.join(encodings)}: {failure.reason} at byte {failure.start}")


def csv_rows(lines: list[str], first_line: int):
    """(line number, fields) of CSV lines; a quoted field never spans lines
    in these formats, so each physical line is one record."""
    for offset, line in enumerate(lines):
        yield first_line + offset, next(csv.reader((line,)), [])


def amount(text: str, line: int, column: str) -> int:
    try:
        return parse_yuan(text)
    except AmountError as error:
        raise StatementError(line, f"{column}: {error}") from None


def fee(text: str, line: int, column: str) -> int:
    try:
        return parse_fee_yuan(text)
    except AmountError as error:
        raise StatementError(line, f"{column}: {error}") from None


def reference(text: str, line: int, column: str, allow_empty: bool = False) -> int:
    """A Tally transaction id given to the channel as its order number."""
    if text == "" and allow_empty:
        return 0
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= REFERENCE_MAX:
        raise StatementError(line, f"{column}: {text!r} is not a Tally transaction id (1 .. 2^64-1)")
    return int(text)


def check_header(fields: list[str], expected: tuple[str, ...], line: int, what: str, aliases=None):
    aliases = aliases or {}
    normalised = [aliases.get(field, field) for field in fields]
    if normalised != list(expected):
        missing = [name for name in expected if name not in normalised]
        reason = f"missing columns {', '.join(missing)}" if missing else f"columns out of order or extra: {', '.join(fields)}"
        raise StatementError(line, f"not a {what} header: {reason}")


def check_totals(stated, computed, line: int):
    """The file's own totals must agree with its rows."""
    for name in ("rows", "payments_minor", "refunds_minor", "fees_minor"):
        if getattr(stated, name) != getattr(computed, name):
            raise StatementError(
                line, f"stated total {name} is {getattr(stated, name)} but the rows add up to {getattr(computed, name)}"
            )
