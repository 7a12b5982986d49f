"""Back-office operations that move money are done once and all or nothing,
even when the server is killed (SIGKILL) while they run: a red packet is
made, funded and opened in one transaction, or not at all, and a retry with
its request id after the restart answers the first packet instead of
funding a second."""

import asyncio
import subprocess
import sys

import grpc

from tally.v1 import common_pb2, promotion_pb2, promotion_pb2_grpc
from tests.support import DEMO_COMPANY_CARD, REPO, Terminal
from tests.test_promotion_service import running

P = promotion_pb2
PACKETS = 60
TOTAL_MINOR = 1_000
PERSONAL_ACCOUNT = 2


def create_requests(promotion_id: int) -> list:
    return [P.CreatePacketRequest(promotion_id=promotion_id, total_minor=TOTAL_MINOR, issuer_kind=PERSONAL_ACCOUNT,
                                  issuer_owner=DEMO_COMPANY_CARD, by="ops", request_id=f"crash-{index}")
            for index in range(PACKETS)]


def send_all(address: str, requests: list, kill=None) -> list:
    """Every request at once; the answers (None where the call failed)."""
    async def run():
        async with grpc.aio.insecure_channel(address) as channel:
            stub = promotion_pb2_grpc.PromotionServiceStub(channel)

            async def one(request):
                try:
                    return await stub.CreatePacket(request, timeout=20)
                except grpc.aio.AioRpcError:
                    return None

            calls = [asyncio.ensure_future(one(request)) for request in requests]
            if kill is not None:
                await asyncio.sleep(0.05)
                kill()
            return await asyncio.gather(*calls)

    return asyncio.run(run())


def test_a_red_packet_is_made_once_and_whole_across_a_kill(server_factory):
    process = server_factory()
    terminal = Terminal(process.channel(), terminal_id=620)
    assert terminal.topup(DEMO_COMPANY_CARD, PACKETS * TOTAL_MINOR, account=common_pb2.PERSONAL).result == common_pb2.APPROVED
    promotions = promotion_pb2_grpc.PromotionServiceStub(process.channel())
    promotion = running(promotions, kind=P.PROMOTION_KIND_RED_PACKET, name="crash",
                        packet=P.PacketTerms(share_count=4, min_share_minor=10))
    balance_before = terminal.card(DEMO_COMPANY_CARD).balances.personal_minor
    requests = create_requests(promotion.promotion_id)
    first = send_all(process.address, requests, kill=process.kill)

    restarted = server_factory(data_dir=process.data_dir)
    again = send_all(restarted.address, requests)
    assert all(answer is not None and answer.result == common_pb2.APPROVED for answer in again)
    packet_ids = [answer.packet.packet_id for answer in again]
    assert len(set(packet_ids)) == PACKETS, "one packet per request id, however often it was sent"
    for earlier, later in zip(first, again):
        if earlier is not None:
            assert later.replayed and later.packet.packet_id == earlier.packet.packet_id
    stub = promotion_pb2_grpc.PromotionServiceStub(restarted.channel())
    for packet_id in packet_ids:
        packet = stub.GetPacket(P.GetPacketRequest(packet_id=packet_id, with_shares=True))
        assert packet.packet.state == P.PACKET_STATE_OPEN and packet.balance_minor == TOTAL_MINOR
        assert sum(packet.shares) == TOTAL_MINOR and len(packet.shares) == 4
    balance_after = Terminal(restarted.channel()).card(DEMO_COMPANY_CARD).balances.personal_minor
    assert balance_before - balance_after == PACKETS * TOTAL_MINOR, "each packet funded exactly once"
    assert restarted.stop() == 0
    audit = subprocess.run([sys.executable, "-m", "core.audit", process.data_dir], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
