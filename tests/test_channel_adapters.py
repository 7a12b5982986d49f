"""Channels are pluggable: an adapter registered by another distribution
under the "tally.channels" entry points is found and used by the server,
without any edit of Tally.

The tiny adapter below is a real distribution on disk (a module and its
.dist-info with entry_points.txt, as pip would leave it), put on the server
process's path; it approves every payment and writes each call to a file, so
the test sees which adapter the server called."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from core.channels import ENTRY_POINT_GROUP, adapter_names, build_channels
from tests.support import REPO, ServerProcess, Terminal
from tally.v1 import common_pb2, payment_pb2

ADAPTER = textwrap.dedent('''
    """A tiny wallet adapter: approves everything, logs every call."""
    import json
    import os

    from core.channels import ChannelAnswer, ChannelOutcome


    class TinyWallet:
        def __init__(self, context):
            self.name = "tiny-" + context.channel
            self.log = os.environ["TINY_WALLET_LOG"]
            self.channel = context.channel

        def _record(self, call, *values):
            with open(self.log, "a") as file:
                file.write(json.dumps([self.channel, call, *values]) + "\\n")

        async def pay(self, reference, amount_minor):
            self._record("pay", reference, amount_minor)
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"tiny-{reference}")

        async def query(self, reference):
            self._record("query", reference)
            return ChannelAnswer(ChannelOutcome.NOT_FOUND)

        async def reverse(self, reference):
            self._record("reverse", reference)
            return ChannelAnswer(ChannelOutcome.APPROVED)

        async def void(self, reference):
            self._record("void", reference)
            return ChannelAnswer(ChannelOutcome.APPROVED)

        async def refund(self, reference, refund_reference, amount_minor):
            self._record("refund", reference, refund_reference, amount_minor)
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"tiny-refund-{refund_reference}")


    def tiny_wallet(context):
        return TinyWallet(context)
''')


def install_tiny_adapter(site) -> str:
    """A distribution "tiny-wallet" registering the adapter "tiny"."""
    os.makedirs(site / "tiny_wallet-1.0.dist-info")
    (site / "tiny_wallet.py").write_text(ADAPTER)
    (site / "tiny_wallet-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-wallet\nVersion: 1.0\n")
    (site / "tiny_wallet-1.0.dist-info" / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntiny = tiny_wallet:tiny_wallet\n")
    return str(site)


@pytest.fixture
def tiny_site(tmp_path, monkeypatch):
    site = install_tiny_adapter(tmp_path / "site")
    log = tmp_path / "calls.jsonl"
    # The server subprocess inherits both; this process too, for build_channels.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TINY_WALLET_LOG", str(log))
    monkeypatch.syspath_prepend(site)
    return log


def calls(log) -> list:
    return [json.loads(line) for line in open(log)] if os.path.exists(log) else []


def test_the_built_in_simulator_is_an_adapter_like_any_other():
    assert "simulator" in adapter_names()
    assert {number: channel.name for number, channel in build_channels().items()} == \
        {1: "bank_card", 2: "wechat_pay", 3: "alipay"}


def test_an_installed_adapter_is_found_and_used_for_its_channel(tiny_site, tmp_path):
    assert "tiny" in adapter_names()
    assert build_channels(adapters={"wechat_pay": "tiny"})[2].name == "tiny-wechat_pay"
    server = ServerProcess(str(tmp_path / "data"), "--channel-adapter", "wechat_pay=tiny").start()
    try:
        terminal = Terminal(server.channel())
        paid, _ = terminal.pay(12_345, card_id=0, use_fleet=False, channel=common_pb2.WECHAT_PAY)
        assert common_pb2.ResultCode.Name(paid.result) == "APPROVED", paid.result_text
        assert paid.sources.channel_minor == 12_345
        by_alipay, _ = terminal.pay(500, card_id=0, use_fleet=False, channel=common_pb2.ALIPAY)
        assert common_pb2.ResultCode.Name(by_alipay.result) == "APPROVED"
    finally:
        server.stop()
    # The WeChat Pay sale went through the tiny adapter, with Tally's
    # transaction id as its reference; Alipay's stayed with the simulator.
    assert ["wechat_pay", "pay", paid.txn_id, 12_345] in calls(tiny_site)
    assert not any(call[2] == by_alipay.txn_id for call in calls(tiny_site))


def test_an_adapter_that_is_not_installed_is_refused_at_start(tmp_path):
    result = subprocess.run([sys.executable, "-m", "server", "--data", str(tmp_path), "--channel-adapter", "alipay=acme"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "alipay=acme: no adapter 'acme' is installed (installed: simulator" in result.stderr
    bad = subprocess.run([sys.executable, "-m", "server", "--data", str(tmp_path), "--channel-adapter", "paypal=simulator"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "CHANNEL=NAME with CHANNEL one of bank_card, wechat_pay, alipay" in bad.stderr


def test_a_refund_of_a_sale_the_adapter_took_goes_back_through_it(tiny_site, tmp_path):
    server = ServerProcess(str(tmp_path / "data"), "--channel-adapter", "wechat_pay=tiny").start()
    try:
        terminal = Terminal(server.channel())
        paid, _ = terminal.pay(2_000, card_id=0, use_fleet=False, channel=common_pb2.WECHAT_PAY)
        refund = terminal.payments.Refund(payment_pb2.RefundRequest(terminal=terminal.context(), txn_id=paid.txn_id,
                                                                   amount_minor=700))
        assert common_pb2.ResultCode.Name(refund.result) == "APPROVED", refund.result_text
    finally:
        server.stop()
    assert ["wechat_pay", "refund", paid.txn_id, refund.txn_id, 700] in calls(tiny_site)
