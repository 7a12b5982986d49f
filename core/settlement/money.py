"""Money as text and business days as dates, exactly.

Owns: turning the decimal strings statements carry ("12.34", "-0.60",
"0.60000") into integer minor units and back, without ever going through a
float, and turning a business day number into a calendar date and back.
Used by: the statement parsers and writers, reports, the command line.
"""

import datetime
import re

from core import dates

MINOR_PER_UNIT = 100
# Amounts with exactly two decimals: "12.34", "-0.60", "+5.00". No exponent,
# no thousands separator, no spaces: a statement that has them is malformed.
_AMOUNT = re.compile(r"([+-]?)([0-9]{1,15})\.([0-9]{2})")
# Fees may carry up to five decimals (WeChat writes "0.60000"); the digits
# past the fen must be zero, since money is whole minor units.
_FEE = re.compile(r"([+-]?)([0-9]{1,15})\.([0-9]{2})([0-9]{0,3})")
EPOCH = dates.EPOCH
MS_PER_DAY = 86_400_000


class AmountError(ValueError):
    """A money string that is not an amount with two decimals."""


def parse_yuan(text: str) -> int:
    """'12.34' -> 1234, '-0.60' -> -60. Exact; raises AmountError otherwise."""
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise AmountError(f"{text!r} is not an amount with two decimals")
    sign, units, cents = match.groups()
    minor = int(units) * MINOR_PER_UNIT + int(cents)
    return -minor if sign == "-" else minor


def parse_fee_yuan(text: str) -> int:
    """A fee with two to five decimals, a whole number of minor units."""
    match = _FEE.fullmatch(text)
    if match is None:
        raise AmountError(f"{text!r} is not a fee with two to five decimals")
    sign, units, cents, rest = match.groups()
    if rest.strip("0"):
        raise AmountError(f"fee {text!r} has a fraction of a minor unit")
    minor = int(units) * MINOR_PER_UNIT + int(cents)
    return -minor if sign == "-" else minor


def format_yuan(minor: int) -> str:
    """1234 -> '12.34', -60 -> '-0.60'."""
    sign = "-" if minor < 0 else ""
    units, cents = divmod(abs(minor), MINOR_PER_UNIT)
    return f"{sign}{units}.{cents:02d}"


# Calendar dates of business days: core/dates.py's, under settlement's names.
day_of_date, date_of_day = dates.day_of, dates.date_of


def parse_day(text: str) -> int:
    """'2024-06-01' or a business day number ('19875') -> the day number."""
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return day_of_date(datetime.date.fromisoformat(text))
    except ValueError:
        raise ValueError(f"{text!r} is neither a date (YYYY-MM-DD) nor a business day number") from None


def local_text_to_ms(text: str, utc_offset_minutes: int, layout: str = "%Y-%m-%d %H:%M:%S") -> int:
    """A local wall-clock time -> ms since the epoch (UTC)."""
    if not text.isascii():
        raise ValueError(f"{text!r} is not a time")
    moment = datetime.datetime.strptime(text, layout).replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * 1000 - utc_offset_minutes * 60_000


def ms_to_local_text(ms: int, utc_offset_minutes: int, layout: str = "%Y-%m-%d %H:%M:%S") -> str:
    moment = datetime.datetime.fromtimestamp((ms + utc_offset_minutes * 60_000) // 1000, datetime.timezone.utc)
    return moment.strftime(layout)


def local_day(ms: int, utc_offset_minutes: int) -> int:
    """The calendar day (days since 1970-01-01) of an instant in local time."""
    return (ms + utc_offset_minutes * 60_000) // MS_PER_DAY
