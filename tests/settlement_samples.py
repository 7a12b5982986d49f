"""The sample day behind tests/data/settlement: built the same way by the
tests and by `python -m tests.settlement_samples` (which rewrites the files).

Day 2024-06-01 (business day 19875, UTC+8), with 2024-05-31 before it, three
stations, sales through every channel and internal source, voids, refunds of
the day before, time-outs the channels recovered from, and one of each
statement fault on 2024-06-01. Rewrite the files only on purpose (the
simulator's or the kernel's behaviour changed): they are what the parsers and
the expected reports are checked against.
"""

import os
import sys

from core.results import Channel
from core.settlement.simulate import Network

DAY = 19875
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "settlement")
STATEMENT_FILES = {
    Channel.WECHAT_PAY: "wechat_pay-2024-06-01.csv",
    Channel.ALIPAY: "alipay-2024-06-01.csv",
    Channel.BANK_CARD: "bank_card-2024-06-01.txt",
}
EXPECTED = os.path.join(DATA, "expected")


def build_sample_day(ledger) -> Network:
    network = Network(ledger, stations=3, seed=5)
    network.run_day(DAY - 1, sales=30)
    network.run_day(DAY, sales=45)
    network.fault_paid_after_timeout(2, Channel.WECHAT_PAY)
    network.fault_void_lost(1, Channel.ALIPAY)
    network.fault_net_of_fee(3, Channel.BANK_CARD)
    network.fault_missing_on_statement(1, Channel.WECHAT_PAY)
    earlier = next(sale for sale in network.sales if sale.day == DAY - 1 and sale.channel == Channel.BANK_CARD and sale.channel_only)
    network.fault_refund_after_timeout(earlier, 100)
    return network


def _bad_samples():
    """Broken copies of the samples, each with one fault a parser must name."""
    read = lambda channel: open(os.path.join(DATA, STATEMENT_FILES[channel]), "rb").read()  # noqa: E731
    wechat_lines = read(Channel.WECHAT_PAY).decode().split("\r\n")
    amount_line = wechat_lines[2].split(",")
    amount_line[12] = "`12.3"
    bad_amount = wechat_lines[:2] + [",".join(amount_line)] + wechat_lines[3:]
    short = wechat_lines[:3] + wechat_lines[-3:]
    alipay_lines = read(Channel.ALIPAY).decode("gb18030").split("\r\n")
    end = next(i for i, line in enumerate(alipay_lines) if "列表结束" in line)
    bank_lines = read(Channel.BANK_CARD).decode("ascii").split("\n")
    bank_lines[2] += " "
    return {
        "bad/wechat_pay-amount.csv": "\r\n".join(bad_amount).encode(),
        "bad/wechat_pay-totals.csv": "\r\n".join(short).encode(),
        "bad/alipay-footer.csv": "\r\n".join(alipay_lines[: end + 1] + [line for line in alipay_lines[end + 1 :] if "交易合计" not in line]).encode("gb18030"),
        "bad/bank_card-length.txt": "\n".join(bank_lines).encode("ascii"),
    }


def write_samples(directory: str):
    import tempfile

    from core.ledger import Ledger, load_kernel
    from core.settlement import queue
    from core.settlement.clearing import clear_day
    from core.settlement.report import write_day_report
    from core.store import open_store

    store = open_store(tempfile.mkdtemp(), 2**30)
    ledger = Ledger(store, load_kernel("reference"))
    network = build_sample_day(ledger)
    os.makedirs(os.path.join(directory, "bad"), exist_ok=True)
    for channel, name in STATEMENT_FILES.items():
        data = network.statement_file(channel, DAY)
        with open(os.path.join(directory, name), "wb") as file:
            file.write(data)
        queue.import_statement(store, channel, data, name, "samples")
        queue.reconcile_day(store, channel, DAY, txn_lookup=ledger.txn)
    for name, data in _bad_samples().items():
        with open(os.path.join(directory, name), "wb") as file:
            file.write(data)
    for path in write_day_report(store, clear_day(store, DAY), os.path.join(directory, "expected")):
        if path.endswith(".png"):
            os.remove(path)
    network.close()
    store.close()


if __name__ == "__main__":
    write_samples(sys.argv[1] if len(sys.argv) > 1 else DATA)
    print(f"wrote the sample statements and expected reports under {DATA}")
