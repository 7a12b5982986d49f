"""Days and times as people read them: calendar dates and local times in the
network's time zone.

Owns: business day numbers <-> calendar dates (a business day is already a
day of the network's local calendar: days since 1970-01-01 there), epoch
milliseconds -> local time text with the zone named, and where the command
line tools find the network's time zone.
Used by: receipts (server/answers.py), statements and the queue log
(core.loyalty, core.settlement), exports (core/settlement/export.py).
"""

import datetime
import os

EPOCH = datetime.date(1970, 1, 1)
MS_PER_MINUTE = 60_000
# The network's time zone for the tools, as the server's --utc-offset-minutes
# (a TALLY_ variable of the server's configuration too).
UTC_OFFSET_VARIABLE = "TALLY_UTC_OFFSET_MINUTES"


def day_of(date: datetime.date) -> int:
    return (date - EPOCH).days


def date_of(day: int) -> datetime.date:
    return EPOCH + datetime.timedelta(days=day)


def zone_name(utc_offset_minutes: int) -> str:
    """"UTC", "UTC+8", "UTC+5:30", "UTC-3"."""
    if utc_offset_minutes == 0:
        return "UTC"
    sign = "+" if utc_offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(utc_offset_minutes), 60)
    return f"UTC{sign}{hours}" + (f":{minutes:02d}" if minutes else "")


def zone(utc_offset_minutes: int) -> datetime.timezone:
    return datetime.timezone(datetime.timedelta(minutes=utc_offset_minutes))


def local_time(epoch_ms: int, utc_offset_minutes: int) -> str:
    """"2026-12-04 10:41:07" in the network's time zone (no floats: the
    milliseconds are dropped, not rounded)."""
    moment = datetime.datetime.fromtimestamp(epoch_ms // 1000, zone(utc_offset_minutes))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def network_offset(given: int | None) -> int:
    """The tools' --utc-offset-minutes if given, else the server's setting
    from the environment, else UTC."""
    if given is not None:
        return given
    return int(os.environ.get(UTC_OFFSET_VARIABLE, "0") or 0)
