"""SettlementService over gRPC against a real server: statements streamed in,
reconciliation status, the queue listed and resolved (ADJUST posts through
the server's group commit), clearing."""

import os

import grpc
import pytest

from core.results import Channel
from tally.v1 import common_pb2, settlement_pb2, settlement_pb2_grpc
from tests.conftest import open_ledger
from tests.settlement_samples import DAY, STATEMENT_FILES, build_sample_day
from tests.support import REPO, ServerProcess

DATA = os.path.join(REPO, "tests", "data", "settlement")
CHUNK_BYTES = 32 * 1024


@pytest.fixture(scope="module")
def settlement(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("settlement") / "data")
    ledger = open_ledger(data_dir, "cython")
    network = build_sample_day(ledger)
    network.close()
    ledger.store.close()
    process = ServerProcess(data_dir, demo=False).start()
    channel = process.channel()
    yield settlement_pb2_grpc.SettlementServiceStub(channel)
    channel.close()
    process.stop()


def chunks(channel, data: bytes, name: str, by: str = "ops", **header):
    yield settlement_pb2.ImportStatementChunk(header=settlement_pb2.StatementHeader(channel=channel, file_name=name, by=by, **header))
    for offset in range(0, len(data), CHUNK_BYTES):
        yield settlement_pb2.ImportStatementChunk(data=data[offset : offset + CHUNK_BYTES])


def read(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as file:
        return file.read()


def test_statements_stream_in_whole_or_not_at_all(settlement):
    bad = settlement.ImportStatement(chunks(common_pb2.WECHAT_PAY, read("bad/wechat_pay-amount.csv"), "bad.csv"))
    assert bad.result == settlement_pb2.REJECTED and bad.error_line == 3 and "应结订单金额" in bad.error_reason
    for channel, name in STATEMENT_FILES.items():
        answer = settlement.ImportStatement(chunks(int(channel), read(name), name))
        assert answer.result == settlement_pb2.IMPORTED and answer.day == DAY and answer.rows > 10, answer
    again = settlement.ImportStatement(chunks(common_pb2.ALIPAY, read(STATEMENT_FILES[Channel.ALIPAY]), "again.csv"))
    assert again.result == settlement_pb2.ALREADY_IMPORTED
    with pytest.raises(grpc.RpcError) as caught:
        settlement.ImportStatement(chunks(common_pb2.ALIPAY, b"", "x.csv", by=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header.by" in caught.value.details()


def test_reconcile_and_its_status(settlement):
    statuses = {}
    for channel in (common_pb2.BANK_CARD, common_pb2.WECHAT_PAY, common_pb2.ALIPAY):
        status = settlement.Reconcile(settlement_pb2.ReconcileRequest(channel=channel, day=DAY))
        statuses[channel] = status
        assert status.items_matched > 5 and status.window_s == 600
    assert statuses[common_pb2.WECHAT_PAY].differences == 2
    counts = {count.kind: count.count for count in statuses[common_pb2.WECHAT_PAY].differences_by_kind}
    assert counts[settlement_pb2.ONLY_OURS] == 1 and counts[settlement_pb2.ONLY_CHANNEL] == 1
    listed = settlement.GetReconcileStatus(settlement_pb2.ReconcileStatusRequest(day=DAY))
    assert len(listed.statuses) == 3
    with pytest.raises(grpc.RpcError) as caught:
        settlement.Reconcile(settlement_pb2.ReconcileRequest(channel=common_pb2.WECHAT_PAY, day=DAY + 5))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        settlement.Reconcile(settlement_pb2.ReconcileRequest(channel=common_pb2.CHANNEL_NONE, day=DAY))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_queue_is_listed_and_resolved_with_who_and_why(settlement):
    listed = settlement.ListDifferences(settlement_pb2.ListDifferencesRequest(day=DAY))
    assert listed.open == len(listed.differences) == 5
    only_channel = next(d for d in listed.differences if d.kind == settlement_pb2.ONLY_CHANNEL and d.item == settlement_pb2.ITEM_PAYMENT)
    before = settlement.GetClearing(settlement_pb2.ClearingRequest(day=DAY))
    answer = settlement.ResolveDifference(settlement_pb2.ResolveDifferenceRequest(
        id=only_channel.id, action=settlement_pb2.ADJUST, by="bo", why="charged on WeChat, no sale: credit the station"))
    assert answer.resolved and answer.difference.state == settlement_pb2.RESOLVED
    assert answer.difference.resolution.adjustment_txn_id > 0
    assert answer.difference.resolution.adjustment_minor == only_channel.delta_minor
    # The adjustment is posted today (the server's business day), not on the day reconciled.
    assert settlement.GetClearing(settlement_pb2.ClearingRequest(day=DAY)) == before
    today = answer.difference.resolution.at_ms // 86_400_000
    adjustments = [line for line in settlement.GetClearing(settlement_pb2.ClearingRequest(day=today)).lines
                   if line.method == "adjustment/wechat_pay"]
    assert [line.net_minor for line in adjustments] == [only_channel.delta_minor]
    again = settlement.ResolveDifference(settlement_pb2.ResolveDifferenceRequest(
        id=only_channel.id, action=settlement_pb2.ACCEPT, by="cy", why="again"))
    assert not again.resolved and "resolved by bo" in again.reason
    with pytest.raises(grpc.RpcError) as caught:
        settlement.ResolveDifference(settlement_pb2.ResolveDifferenceRequest(id=only_channel.id, action=settlement_pb2.ACCEPT, by="cy"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "why" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        settlement.ResolveDifference(settlement_pb2.ResolveDifferenceRequest(id="2-1-1-1", action=settlement_pb2.ACCEPT, by="cy", why="x"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    still = settlement.ListDifferences(settlement_pb2.ListDifferencesRequest(day=DAY))
    assert still.open == 4
    every = settlement.ListDifferences(settlement_pb2.ListDifferencesRequest(day=DAY, all_states=True))
    assert len(every.differences) == 5


def test_clearing_lines_add_up(settlement):
    clearing = settlement.GetClearing(settlement_pb2.ClearingRequest(day=DAY))
    assert clearing.lines and sum(line.net_minor for line in clearing.lines) == clearing.net_minor
    assert {"fleet", "bank_card", "wechat_pay", "alipay"} <= {line.method for line in clearing.lines}
