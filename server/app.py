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
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from core import limits
from core.admin import Admin
from core.channels import build_channels
from core.commit import GroupCommitter, QueueFull
from core.replication.errors import ReplicationError
from core.ledger import Ledger, load_kernel
from core.records import Op, parse_hold_expiry_key
from core.results import OpKind
from core.store import open_store
from server import metrics as observability
from server import admin_service, answers, heap, replication_service, report_service, tls
from server.cards import CardService
from server.channel_flow import ChannelFlow
from server.demo import seed_demo_data
from server.loyalty_service import LoyaltyService, RulesHolder
from server.payments import PaymentService
from server import promotion_service
from server.promotion_flow import PromotionFlow
from server.readers import Readers
from server.rpc import Guards, Registrar
from server.partner_auth import PartnerGuard
from server.terminal_auth import TerminalGuard
from server.settings import ServerSettings
from server.settlement_service import SettlementService
from server.stream import GatewayService
from tally.v1 import card_pb2, card_pb2_grpc, gateway_pb2, gateway_pb2_grpc, payment_pb2, payment_pb2_grpc
from tally.v1 import loyalty_pb2, loyalty_pb2_grpc, replication_pb2_grpc, settlement_pb2, settlement_pb2_grpc

log = logging.getLogger("tally.server")

SERVICE_NAMES = (
    payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,
    card_pb2.DESCRIPTOR.services_by_name["CardService"].full_name,
    gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
    settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name,
    loyalty_pb2.DESCRIPTOR.services_by_name["LoyaltyService"].full_name,
    *admin_service.SERVICE_NAMES,
    *promotion_service.SERVICE_NAMES,
    replication_service.SERVICE_NAME,
    *report_service.SERVICE_NAMES,
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


def grpc_options(reuse_port: bool) -> tuple:
    """GRPC_OPTIONS, with SO_REUSEPORT on only for --workers > 1: a single
    server must fail to start on a port already taken, not share it."""
    return tuple(("grpc.so_reuseport", int(reuse_port)) if name == "grpc.so_reuseport" else (name, value)
                 for name, value in GRPC_OPTIONS)


def guards_for(settings: ServerSettings, store, master_key, admin: Admin) -> Guards:
    """The credentials the server checks (server/rpc.py): terminal MACs with
    --terminal-auth, staff tokens (always for AdminService; for the other
    back-office RPCs with --back-office-auth)."""
    terminal = partner = None
    if settings.terminal_auth:
        log.info("terminal and partner authentication on: every terminal and partner request needs its MAC")
        terminal = TerminalGuard(store, master_key, admin=admin)
        partner = PartnerGuard(store, master_key)
    if settings.back_office_auth:
        log.info("back-office authentication on: back-office RPCs need an AdminService token")
    return Guards(admin, terminal=terminal, partner=partner, back_office=settings.back_office_auth)


WRITES_HEALTH_NAME = "tally.v1.Writes"
STORE_WATCH_INTERVAL_S = 1.0


async def watch_store(committer: GroupCommitter, health_servicer):
    """Health of "tally.v1.Writes": NOT_SERVING while the store is full (the
    whole server, "", stays SERVING: reads go on), SERVING again once a
    write commits."""
    serving = True
    while True:
        await asyncio.sleep(STORE_WATCH_INTERVAL_S)
        if serving == (committer.store_full is None):
            continue
        serving = committer.store_full is None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await health_servicer.set(WRITES_HEALTH_NAME, status)
        if not serving:
            log.error("writes refused: %s; reads are still served", committer.store_full)


async def sample_gauges(metrics, committer: GroupCommitter, store):
    while True:
        observability.sample(metrics, committer, store.env)
        await asyncio.sleep(observability.SAMPLE_INTERVAL_S)


def holds_due(store, now_ms: int) -> bool:
    """Whether a pre-authorization's time is up (the first key of hold_expiry
    is (expires_ms, txn_id), big-endian): a sweep with none to expire would
    still write a transaction (and, replicated, a log entry) for nothing."""
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.hold_expiry)
        return cursor.first() and parse_hold_expiry_key(cursor.key())[0] <= now_ms


async def sweep_expired_holds(committer: GroupCommitter, interval_s: float):
    """Release pre-authorizations whose time is up, so their funds free up
    even if no terminal ever touches them again."""
    while True:
        await asyncio.sleep(interval_s)
        if not committer.takes_writes:
            continue  # a follower: the leader sweeps, and the log brings its releases here
        if not holds_due(committer.ledger.store, committer.clock()):
            continue
        try:
            while (await committer.submit(Op(kind=OpKind.EXPIRE_HOLDS))).amount == limits.EXPIRE_SWEEP_HOLDS_MAX:
                pass
        except (QueueFull, ReplicationError):
            continue


async def take_over(settings: ServerSettings, flow: ChannelFlow, committer: GroupCommitter, ledger: Ledger,
                    demo: bool):
    """What a server does before its first request, on a single node; on a
    replicated node, each time it becomes the leader: settle what the last
    leader left waiting for a channel, seed the demo, sync station domains."""
    if settings.recover:
        await flow.recover()
    if demo:
        await seed_demo_data(committer, ledger)
    if settings.recover:
        await admin_service.sync_station_domains(store=ledger.store, committer=committer)


def follow(replica, address: str, health_servicer, on_promoted, relay=None):
    """Start the node's replica thread: it follows the log and, when it
    becomes the leader, the event loop runs `on_promoted`, health says
    tally.v1.Leader SERVING (NOT_SERVING again when it steps down) and the
    events relay (--events-stream) publishes while it leads."""
    loop = asyncio.get_running_loop()
    leader_health = replication_service.LEADER_HEALTH_NAME

    async def promoted():
        await health_servicer.set(leader_health, health_pb2.HealthCheckResponse.SERVING)
        if relay is not None:
            relay.start()
        try:
            await on_promoted()
        except ReplicationError as error:
            log.warning("taking over stopped: %s", error)

    async def demoted():
        await health_servicer.set(leader_health, health_pb2.HealthCheckResponse.NOT_SERVING)
        if relay is not None:
            await asyncio.to_thread(relay.stop)

    replica.on_promoted = lambda: loop.call_soon_threadsafe(loop.create_task, promoted())
    replica.on_demoted = lambda: loop.call_soon_threadsafe(loop.create_task, demoted())
    replica.start(address)


async def serve(settings: ServerSettings, demo: bool = False, ready=None):
    heap.configure_malloc()
    answers.set_currency(settings.currency)
    store = open_store(settings.data_dir, settings.map_size_bytes, replicated=settings.replication is not None)
    kernel = load_kernel(settings.kernel)
    metrics = None
    if settings.metrics_port is not None or settings.metrics_multiprocess:
        metrics = observability.Metrics()
    # Before the ledger: a node marks its store as one of the log's.
    replica = replication_service.start_replica(settings, store, metrics.append if metrics is not None else None)
    ledger = Ledger(store, kernel)
    if kernel.name == "reference":
        log.warning("running the plain-Python reference kernel: correct, but far slower than the Cython kernel")
    observability.OBSERVER.configure(metrics, settings.log_requests)
    committer = GroupCommitter(
        ledger, settings.utc_offset_minutes, queue_length_max=settings.queue_length_max,
        on_batch=metrics.batch if metrics is not None else None, log=replica,
    )
    committer.start()
    channels = build_channels(settings.simulator, settings.channel_adapters, settings.channel_timeout_ms)
    rules = RulesHolder(store, committer)
    flow = ChannelFlow(ledger, committer, channels, settings.channel_timeout_ms, lambda: rules.rules.expiry.lot_validity_days)
    if replica is None:
        await take_over(settings, flow, committer, ledger, demo)

    master_key = admin_service.load_master_key_of(settings)
    admin = Admin(store, master_key, kernel=kernel, utc_offset_minutes=settings.utc_offset_minutes, writer=committer,
                  field_cipher=admin_service.field_cipher_of(settings))
    server = grpc.aio.server(options=grpc_options(settings.reuse_port))
    # The back office's long reads run there, off this process's GIL.
    readers = Readers(store)
    # Every service registers through this one registrar: it parses each
    # request, checks its caller against server/callers.py, and maps errors.
    services = Registrar(server, guards_for(settings, store, master_key, admin),
                         stamp=replication_service.FreshnessStamp(replica) if replica is not None else None)
    promotions = promotion_service.add_promotion_services(services, ledger, committer, settings)
    sale_promotions = PromotionFlow(ledger, promotions.service, promotions.risk, committer.clock)
    payments = PaymentService(ledger, committer, flow, settings, rules, sale_promotions)
    cards = CardService(ledger, committer, sale_promotions)
    gateway = GatewayService(payments, cards, settings.stream_window)
    payment_pb2_grpc.add_PaymentServiceServicer_to_server(payments, services)
    card_pb2_grpc.add_CardServiceServicer_to_server(cards, services)
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(gateway, services)
    settlement = SettlementService(ledger, committer, payments, readers)
    settlement_pb2_grpc.add_SettlementServiceServicer_to_server(settlement, services)
    loyalty_pb2_grpc.add_LoyaltyServiceServicer_to_server(LoyaltyService(ledger, committer, rules, promotions.risk), services)
    admin_service.add_admin_services(services, admin, committer)
    replication_pb2_grpc.add_ReplicationServiceServicer_to_server(replication_service.ReplicationService(replica), services)
    report_service.add_report_service(services, ledger, committer, readers, replica)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    # (reflection.enable_server_reflection would register on the aio server
    # itself: it checks the type.) Public, like health.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)), services)
    try:
        port = tls.add_port(server, settings)
    except RuntimeError:  # grpcio raises where it used to return 0
        port = 0
    if port == 0:
        raise SystemExit(f"cannot listen on {settings.listen}")
    await server.start()
    for name in ("", *SERVICE_NAMES, WRITES_HEALTH_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    leader_health = replication_service.LEADER_HEALTH_NAME
    await health_servicer.set(leader_health, health_pb2.HealthCheckResponse.SERVING if replica is None
                              else health_pb2.HealthCheckResponse.NOT_SERVING)
    store_watch = asyncio.create_task(watch_store(committer, health_servicer))
    sweeper = asyncio.create_task(sweep_expired_holds(committer, settings.hold_sweep_interval_s))
    trimmer = asyncio.create_task(heap.release_free_heap_every(settings.heap_trim_interval_s)) if settings.heap_trim_interval_s else None
    sampler = asyncio.create_task(sample_gauges(metrics, committer, store)) if metrics is not None else None
    if settings.metrics_port is not None and not settings.metrics_multiprocess:
        metrics_port = observability.serve_metrics(settings.metrics_port, host=settings.listen.rsplit(":", 1)[0])
        # Tests read the bound port from this line (--metrics-port 0).
        log.info("metrics on http://%s:%d/metrics", settings.listen.rsplit(":", 1)[0], metrics_port)
    # The console (server/console/) calls the gRPC port just bound; it is up
    # before the "serving on" line, so whoever reads that line can use both.
    console = None
    if settings.console_listen is not None:
        from server.console.serve import start_console

        console = await start_console(settings, port)
    # Before anyone is told the server listens: a SIGTERM from then on stops it cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    host = settings.listen.rsplit(":", 1)[0]
    relay = None
    if replica is not None:
        if settings.events_stream:
            from server.events import EventRelay

            relay = EventRelay(replica.log, settings.events_stream)
        follow(replica, settings.advertise or f"{host}:{port}", health_servicer,
               lambda: take_over(settings, flow, committer, ledger, demo), relay)
    heap.freeze_start_objects()
    # Tests and benchmarks read the bound port from this line (--listen HOST:0).
    # With --workers the supervisor says "serving on" once all workers listen.
    log.info("%s on %s:%d (kernel: %s, data: %s)", "worker listening" if settings.reuse_port else "serving",
             host, port, kernel.name, settings.data_dir)
    if ready is not None:
        ready(port)

    await stop.wait()

    log.info("stopping: finishing calls in flight")
    if console is not None:
        await console.stop()
    await health_servicer.enter_graceful_shutdown()
    gateway.stop()
    sweeper.cancel()
    store_watch.cancel()
    if trimmer is not None:
        trimmer.cancel()
    promotions.job.cancel()
    if sampler is not None:
        sampler.cancel()
    await server.stop(settings.shutdown_grace_s)
    readers.close()
    committer.stop()
    if relay is not None:
        relay.stop()
    if replica is not None:
        replica.stop()
    store.close()
    log.info("stopped")
