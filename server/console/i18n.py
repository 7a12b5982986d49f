"""The console's two languages and the network's formats.

Owns: the locales (English, Simplified Chinese), the catalogue of texts
(server/console/messages.py: English text -> Chinese), and the formats of
money (integer minor units, never a float), times and business days in the
network's time zone (--utc-offset-minutes).
Used by: every page (templates get `t`, `money`, `when`, `day` from
server/console/web.py).

The English text is the key: a page says t("Top up") and reads "充值" in
zh-CN. A key missing from the catalogue shows in English (and
tests/test_console.py fails, naming it).
"""

import datetime
import re

from server.console.messages import EN, ZH_CN

LOCALES = ("zh-CN", "en")
LOCALE_NAMES = {"zh-CN": "中文", "en": "English"}
# Digits after the point of each currency's minor unit (ISO 4217); 2 otherwise.
MINOR_DIGITS = {"JPY": 0, "KRW": 0, "VND": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}
SYMBOLS = {"CNY": "¥", "JPY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "HKD": "HK$"}
EPOCH = datetime.datetime(1970, 1, 1)
EPOCH_DAY = datetime.date(1970, 1, 1)
AMOUNT_TEXT_LENGTH_MAX = 24


ENUM_PREFIXES = ("PROMOTION_KIND_", "PROMOTION_STAGE_", "FUNDER_", "PACKET_STATE_", "FLAG_KIND_", "TERMINAL_STATUS_",
                 "REPLICA_ROLE_")
_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]+\Z")


def translate(locale: str, text: str) -> str:
    if locale == "zh-CN":
        return ZH_CN.get(text, text)
    return EN.get(text) or (english_name(text) if _ENUM_NAME.match(text) else text)


def english_name(name: str) -> str:
    """An API enum value's name for people: PROMOTION_STAGE_DRAFT -> "Draft"."""
    for prefix in ENUM_PREFIXES:
        name = name.removeprefix(prefix)
    return name.replace("_", " ").capitalize()


def minor_digits(currency: str) -> int:
    return MINOR_DIGITS.get(currency, 2)


def money(minor: int, currency: str, locale: str) -> str:
    """1234567 CNY -> "¥12,345.67" (zh-CN) or "CNY 12,345.67" (en)."""
    digits = minor_digits(currency)
    whole, fraction = divmod(abs(int(minor)), 10**digits)
    number = f"{whole:,}" + (f".{fraction:0{digits}d}" if digits else "")
    sign = "-" if minor < 0 else ""
    if locale == "zh-CN":
        return f"{sign}{SYMBOLS.get(currency, currency + ' ')}{number}"
    return f"{sign}{currency} {number}"


def plain_amount(minor: int, currency: str) -> str:
    """1234567 -> "12345.67": what a form field shows for editing."""
    digits = minor_digits(currency)
    whole, fraction = divmod(abs(int(minor)), 10**digits)
    return ("-" if minor < 0 else "") + str(whole) + (f".{fraction:0{digits}d}" if digits else "")


_AMOUNT = re.compile(r"(-?)(\d+)(?:\.(\d+))?\Z")


def parse_amount(text: str, currency: str) -> int:
    """"12,345.6" -> 1234560 minor units, by integer arithmetic only; raises
    ValueError saying what is wrong."""
    cleaned = text.strip().replace(",", "").replace(" ", "").removeprefix(SYMBOLS.get(currency, "\0"))
    if len(cleaned) > AMOUNT_TEXT_LENGTH_MAX:
        raise ValueError("too long for an amount")
    match = _AMOUNT.match(cleaned)
    digits = minor_digits(currency)
    if match is None:
        raise ValueError(f"an amount such as 12.50 ({digits} digits at most after the point)")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if len(fraction) > digits:
        raise ValueError(f"at most {digits} digits after the point")
    minor = int(whole) * 10**digits + int(fraction.ljust(digits, "0") or "0")
    return -minor if sign else minor


def local_datetime(ms: int, utc_offset_minutes: int) -> datetime.datetime:
    return EPOCH + datetime.timedelta(milliseconds=int(ms) + utc_offset_minutes * 60_000)


def when(ms: int, utc_offset_minutes: int, locale: str) -> str:
    """A moment (ms since the epoch) in the network's time zone; "" for 0."""
    if not ms:
        return ""
    moment = local_datetime(ms, utc_offset_minutes)
    if locale == "zh-CN":
        return f"{moment.year}年{moment.month}月{moment.day}日 {moment:%H:%M:%S}"
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def day(number: int, locale: str) -> str:
    """A business day (days since 1970-01-01) as a date; "" for 0."""
    if not number:
        return ""
    date = EPOCH_DAY + datetime.timedelta(days=int(number))
    if locale == "zh-CN":
        return f"{date.year}年{date.month}月{date.day}日"
    return date.isoformat()


def iso_day(number: int) -> str:
    """A business day as YYYY-MM-DD (the value of a date field)."""
    return (EPOCH_DAY + datetime.timedelta(days=int(number))).isoformat() if number else ""


def parse_day(text: str) -> int:
    """YYYY-MM-DD -> days since 1970-01-01; ValueError otherwise."""
    try:
        return (datetime.date.fromisoformat(text.strip()) - EPOCH_DAY).days
    except ValueError:
        raise ValueError("a date such as 2026-05-03") from None


def parse_local_moment(text: str, utc_offset_minutes: int) -> int:
    """YYYY-MM-DDTHH:MM (a datetime-local field, the network's time) -> ms
    since the epoch, UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError("a date and time such as 2026-05-03T08:00") from None
    if moment.tzinfo is not None:
        raise ValueError("a local date and time, without a zone")
    delta = moment - EPOCH - datetime.timedelta(minutes=utc_offset_minutes)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def local_moment_text(ms: int, utc_offset_minutes: int) -> str:
    """ms since the epoch -> the value of a datetime-local field."""
    return f"{local_datetime(ms, utc_offset_minutes):%Y-%m-%dT%H:%M}" if ms else ""
