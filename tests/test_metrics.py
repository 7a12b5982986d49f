"""The Prometheus endpoint and the request log of a real server move with real requests."""

import asyncio
import json
import re
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from tally.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, payment_pb2
from tests.support import DEMO_PERSONAL_CARD, Terminal

METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")


def metrics_url(process) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = METRICS_LINE.search(process.log)
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError("no metrics line in the log:\n" + process.log)


def scrape(url: str) -> dict:
    """{(name, sorted label items): value} of every sample."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_histograms_and_gauges_move_with_real_requests(server_factory):
    process = server_factory("--metrics-port", "0")
    url = metrics_url(process)
    before = scrape(url)
    terminal = Terminal(process.channel(), terminal_id=501)
    for _ in range(7):
        assert terminal.pay(100)[0].result == common_pb2.APPROVED
    declined, _ = terminal.pay(60_000, card_id=DEMO_PERSONAL_CARD, use_fleet=False, use_personal=True)
    assert declined.result == common_pb2.LIMIT_PER_TRANSACTION_EXCEEDED
    try:
        terminal.pay(0)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def stream_three():
        async with grpc.aio.insecure_channel(process.address) as channel:
            call = gateway_pb2_grpc.GatewayServiceStub(channel).Exchange()
            operations = [
                gateway_pb2.GatewayOperation(pay=payment_pb2.PayRequest(
                    terminal=terminal.context(), amount_minor=100,
                    plan=payment_pb2.PaymentPlan(card_id=6200000000000001, use_fleet=True)))
                for _ in range(3)
            ]
            await call.write(gateway_pb2.GatewayMessage(correlation_id=1, operations=operations))
            await call.done_writing()
            return [reply async for reply in call]

    assert len(asyncio.run(stream_three())) == 1
    time.sleep(1.2)  # the gauges are sampled once a second
    after = scrape(url)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tally_requests_total", rpc="Pay", transport="unary", outcome="APPROVED") == 7
    assert moved("tally_requests_total", rpc="Pay", transport="unary", outcome="LIMIT_PER_TRANSACTION_EXCEEDED") == 1
    assert moved("tally_requests_total", rpc="Pay", transport="unary", outcome="INVALID_ARGUMENT") == 1
    assert moved("tally_requests_total", rpc="Pay", transport="stream", outcome="APPROVED") == 3
    assert moved("tally_request_seconds_count", rpc="Pay", transport="unary") == 9
    assert moved("tally_request_seconds_bucket", rpc="Pay", transport="unary", le="+Inf") == 9
    assert moved("tally_request_seconds_count", rpc="Pay", transport="stream") == 3
    # 7 + 1 + 3 operations reached the ledger (the malformed one did not), in
    # at most that many commits; the hold sweep (every 5 s) may add one.
    assert moved("tally_commit_batch_operations_sum") in (11, 12)
    assert 1 <= moved("tally_commit_batch_operations_count") <= 12
    assert moved("tally_commit_seconds_count") == moved("tally_commit_batch_operations_count")
    assert value(after, "tally_lmdb_map_used_bytes") > 0
    assert value(after, "tally_lmdb_map_size_bytes") == 64 * 2**30
    assert value(after, "tally_commit_queue_length") == 0
    assert value(after, "tally_gateway_streams_open") == 0


def test_json_lines_log_one_line_per_request_with_the_clients_request_id(server_factory):
    process = server_factory("--log-format", "json", "--log-requests")
    terminal = Terminal(process.channel(), terminal_id=502)
    request = payment_pb2.PayRequest(
        terminal=terminal.context(), amount_minor=250, plan=payment_pb2.PaymentPlan(card_id=6200000000000001, use_fleet=True)
    )
    terminal.payments.Pay(request, metadata=(("x-request-id", "till-7-0001"),))
    terminal.pay(100)
    deadline = time.monotonic() + 10
    while process.log.count('"rpc":"Pay"') < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    entries = [json.loads(line) for line in process.log_lines]  # every line is one JSON object
    requests = [entry for entry in entries if entry["logger"] == "tally.requests"]
    assert len(requests) == 2
    first, second = requests
    assert first["request_id"] == "till-7-0001"
    assert (first["rpc"], first["transport"], first["outcome"], first["terminal_id"], first["serial"]) == ("Pay", "unary", "APPROVED", 502, 1)
    assert first["latency_ms"] > 0
    assert second["request_id"] and second["request_id"] != first["request_id"] and second["serial"] == 2
