"""Channel statements in their real formats: one module per format.

  wechat.py   WeChat Pay trade bill (backticked CSV, summary at the end)
  alipay.py   Alipay trade bill (GBK CSV between '#' preface and footer)
  bank.py     the bank card acquirer's settlement file (Tally's fixed width)

Each has `parse(data, day=None, utc_offset_minutes=...) -> Statement` and
`write(statement, ...) -> bytes`. A parser reads the whole file first and
raises StatementError (line number and reason) on the first bad line: a file
is imported whole or not at all.
"""

from core.results import Channel
from core.settlement.statements import alipay, bank, wechat
from core.settlement.statements.common import StatementError

__all__ = ["FORMATS", "StatementError", "parse_statement", "write_statement"]

# The format each channel's statement comes in.
FORMATS = {Channel.BANK_CARD: bank, Channel.WECHAT_PAY: wechat, Channel.ALIPAY: alipay}


def parse_statement(channel: int, data: bytes, day: int | None = None, utc_offset_minutes: int | None = None):
    module = FORMATS[Channel(channel)]
    offset = module.UTC_OFFSET_MINUTES if utc_offset_minutes is None else utc_offset_minutes
    return module.parse(data, day=day, utc_offset_minutes=offset)


def write_statement(statement, utc_offset_minutes: int | None = None) -> bytes:
    module = FORMATS[Channel(statement.channel)]
    offset = module.UTC_OFFSET_MINUTES if utc_offset_minutes is None else utc_offset_minutes
    return module.write(statement, utc_offset_minutes=offset)
