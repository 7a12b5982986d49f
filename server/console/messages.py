"""Simplified Chinese texts of the console: English text -> zh-CN.

Used by: server/console/i18n.py. tests/test_console.py fails on a text a
page uses that is missing here.
"""

ZH_CN = {
}
