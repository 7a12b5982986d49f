"""`python -m bench.echo --listen HOST:PORT`: the gRPC stack without the ledger.

Owns: an echo PaymentService whose Pay answers a fixed APPROVED PaymentAnswer
at once, and an echo GatewayService whose stream answers every operation of
a message with that answer (the stream mode's baseline), served by grpc.aio on uvloop with the real server's options and
health checking. It is the baseline of `python -m bench e2e`: the same client
load against it shows what the transport alone costs, so the ratio pay/echo
shows what the ledger, the group commit and the answer building add.
Used by: bench/e2e.py (in a subprocess, never at the same time as the real
server: the machine has two cores).
May call: server.app for GRPC_OPTIONS and server.rpc for Router only; nothing
that opens a store.
"""

import argparse
import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.app import GRPC_OPTIONS
from server.rpc import Router
from tally.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, payment_pb2, payment_pb2_grpc

log = logging.getLogger("tally.bench.echo")

SERVICE_NAME = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
SHUTDOWN_GRACE_S = 5.0

# A sale of 1.00 paid from the personal account, shaped like the real
# server's answer (same fields set, a receipt of similar length) so that the
# bytes on the wire are comparable.
ECHO_RECEIPT = "\n".join(
    (
        "TALLY SALE",
        "station 1  terminal 1000  operator 1",
        "serial 1  txn 1  day 20000",
        "AMOUNT 1.00",
        "  personal account  1.00",
        "points earned 1",
        "balance fleet 0.00  personal 9999999999.00  points 1",
        "APPROVED: approved",
    )
)


def echo_answer() -> payment_pb2.PaymentAnswer:
    return payment_pb2.PaymentAnswer(
        result=common_pb2.APPROVED,
        result_text="approved",
        txn_id=1,
        amount_minor=100,
        sources=payment_pb2.Sources(personal_minor=100),
        points_earned=1,
        balances=common_pb2.Balances(personal_minor=999_999_999_900, points=1),
        receipt=ECHO_RECEIPT,
        business_day=20_000,
    )


class EchoPaymentService(payment_pb2_grpc.PaymentServiceServicer):
    """Pay only; the other methods stay UNIMPLEMENTED (the benchmark never
    calls them)."""

    def __init__(self):
        # Built once: the baseline is the transport, so building the answer
        # per call (which the real server does) belongs to what Pay costs.
        self.answer = echo_answer()

    async def Pay(self, request, context):
        return self.answer


class EchoGatewayService(gateway_pb2_grpc.GatewayServiceServicer):
    """Each message answered at once, in order, with one fixed result per
    operation: what the stream transport alone costs."""

    def __init__(self):
        self.result = gateway_pb2.GatewayResult(payment=echo_answer())

    async def Exchange(self, request_iterator, context):
        await context.send_initial_metadata((("tally-stream-window", "2048"),))
        async for message in request_iterator:
            yield gateway_pb2.GatewayReply(
                correlation_id=message.correlation_id, results=[self.result] * len(message.operations)
            )


async def serve_echo(listen: str):
    server = grpc.aio.server(options=GRPC_OPTIONS)
    # Routed as the real server routes its services (server/rpc.py Router).
    services = Router(server)
    payment_pb2_grpc.add_PaymentServiceServicer_to_server(EchoPaymentService(), services)
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(EchoGatewayService(), services)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving on %s (echo PaymentService, no ledger)", listen)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(SHUTDOWN_GRACE_S)
    log.info("stopped")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench.echo",
        description="Echo PaymentService for benchmarks: Pay answers a fixed APPROVED answer without "
        "a ledger, on the same gRPC stack and options as the real server, until SIGINT or SIGTERM.",
    )
    parser.add_argument("--listen", default="127.0.0.1:50052", metavar="HOST:PORT", help="gRPC address (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging level (default %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    uvloop.run(serve_echo(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
