"""One server process: open the store, recover, serve gRPC until told to stop.

Owns: wiring (store, ledger, group commit, channels, services), gRPC health
checking and reflection, the expiry sweep of pre-authorizations, graceful
shutdown on SIGINT/SIGTERM (stop taking calls, finish those in flight,
commit, exit).
Used by: server/__main__.py (`python -m server`), tests (in a subprocess).
"""

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core import limits
from core.channels import build_channels
from core.commit import GroupCommitter, QueueFull
from core.ledger import Ledger, load_kernel
from core.records import Op
from core.results import OpKind
from core.store import open_store
from server.cards import CardService
from server.channel_flow import ChannelFlow
from server.demo import seed_demo_data
from server.payments import PaymentService
from server.settings import ServerSettings
from server.settlement_service import SettlementService
from tally.v1 import card_pb2, card_pb2_grpc, payment_pb2, payment_pb2_grpc, settlement_pb2, settlement_pb2_grpc

log = logging.getLogger("tally.server")

SERVICE_NAMES = (
    payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,
    card_pb2.DESCRIPTOR.services_by_name["CardService"].full_name,
    settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name,
)

# gRPC core refuses calls beyond max_pending_requests (1,000 by default) when
# the application has not yet picked them up; 1,500 terminals in flight need
# more. The queue of the group commit is the real bound (QUEUE_LENGTH_MAX).
GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", limits.MESSAGE_BYTES_MAX),
    ("grpc.server.max_pending_requests", limits.QUEUE_LENGTH_MAX),
    ("grpc.server.max_pending_requests_hard_limit", limits.QUEUE_LENGTH_MAX),
    ("grpc.so_reuseport", 0),
)


async def sweep_expired_holds(committer: GroupCommitter, interval_s: float):
    """Release pre-authorizations whose time is up, so their funds free up
    even if no terminal ever touches them again."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            while (await committer.submit(Op(kind=OpKind.EXPIRE_HOLDS))).amount == limits.EXPIRE_SWEEP_HOLDS_MAX:
                pass
        except QueueFull:
            continue


async def serve(settings: ServerSettings, demo: bool = False, ready=None):
    store = open_store(settings.data_dir, settings.map_size_bytes)
    kernel = load_kernel(settings.kernel)
    ledger = Ledger(store, kernel)
    if kernel.name == "reference":
        log.warning("running the plain-Python reference kernel: correct, but far slower than the Cython kernel")
    committer = GroupCommitter(ledger, settings.utc_offset_minutes, queue_length_max=settings.queue_length_max)
    committer.start()
    channels = build_channels(settings.simulator)
    flow = ChannelFlow(ledger, committer, channels, settings.channel_timeout_ms)
    await flow.recover()
    if demo:
        await seed_demo_data(committer, ledger)

    server = grpc.aio.server(options=GRPC_OPTIONS)
    payment_pb2_grpc.add_PaymentServiceServicer_to_server(PaymentService(ledger, committer, flow, settings), server)
    card_pb2_grpc.add_CardServiceServicer_to_server(CardService(ledger, committer), server)
    settlement_pb2_grpc.add_SettlementServiceServicer_to_server(SettlementService(ledger, committer), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise SystemExit(f"cannot listen on {settings.listen}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    sweeper = asyncio.create_task(sweep_expired_holds(committer, settings.hold_sweep_interval_s))
    host = settings.listen.rsplit(":", 1)[0]
    # Tests and benchmarks read the bound port from this line (--listen HOST:0).
    log.info("serving on %s:%d (kernel: %s, data: %s)", host, port, kernel.name, settings.data_dir)
    if ready is not None:
        ready(port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("stopping: finishing calls in flight")
    await health_servicer.enter_graceful_shutdown()
    sweeper.cancel()
    await server.stop(settings.shutdown_grace_s)
    committer.stop()
    store.close()
    log.info("stopped")
