"""server/rpc.py Router: the server's one generic handler. Every service
the generated code registers is found by its path; handlers added only as
generic handlers (TerminalKeyService's SignOn) are asked once per path; a
path nobody serves is left to gRPC (UNIMPLEMENTED). The real server's
services answer through it in every server test (tests/test_server.py has
health and reflection)."""

import asyncio
import collections

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.rpc import Router, call_metadata, kept_metadata

Details = collections.namedtuple("Details", "method invocation_metadata")


def handler_answering(text: str):
    return grpc.unary_unary_rpc_method_handler(lambda request, context: text)


class CountingGeneric(grpc.GenericRpcHandler):
    def __init__(self, path: str, handler):
        self.path, self.handler, self.asked = path, handler, 0

    def service(self, handler_call_details):
        self.asked += 1
        return self.handler if handler_call_details.method == self.path else None


def test_a_registered_method_is_found_by_its_path():
    router = Router(server=None)
    pay, refund = handler_answering("pay"), handler_answering("refund")
    router.add_registered_method_handlers("shop.Payments", {"Pay": pay, "Refund": refund})
    assert router.service(Details("/shop.Payments/Pay", ())) is pay
    assert router.service(Details("/shop.Payments/Refund", ())) is refund


def test_a_generic_only_handler_is_asked_once_per_path_and_remembered():
    router = Router(server=None)
    sign_on = handler_answering("signed on")
    generic = CountingGeneric("/keys.Terminals/SignOn", sign_on)
    router.add_generic_rpc_handlers((generic,))
    for _ in range(3):
        assert router.service(Details("/keys.Terminals/SignOn", ())) is sign_on
    assert generic.asked == 1


def test_a_path_nobody_serves_is_none():
    router = Router(server=None)
    router.add_registered_method_handlers("shop.Payments", {"Pay": handler_answering("pay")})
    router.add_generic_rpc_handlers((CountingGeneric("/keys.Terminals/SignOn", handler_answering("x")),))
    assert router.service(Details("/shop.Payments/PayTwice", ())) is None


def test_a_real_server_answers_through_the_router():
    """Health (generated code: generic and registered), a generic-only
    handler, and UNIMPLEMENTED for a path nobody serves, on 127.0.0.1."""

    async def scenario():
        server = grpc.aio.server()
        router = Router(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, router)
        echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
        router.add_generic_rpc_handlers((CountingGeneric("/keys.Terminals/Echo", echo),))
        port = router.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                echoed = await channel.unary_unary("/keys.Terminals/Echo")(b"ping", timeout=5)
                try:
                    await channel.unary_unary("/keys.Terminals/Nobody")(b"", timeout=5)
                    refused = None
                except grpc.aio.AioRpcError as error:
                    refused = error.code()
        finally:
            await server.stop(None)
        return checked.status, echoed, refused

    status, echoed, refused = asyncio.run(scenario())
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert echoed == b"ping"
    assert refused == grpc.StatusCode.UNIMPLEMENTED


def test_a_path_that_keeps_its_metadata_hands_each_call_its_own():
    """call_metadata: what the Router kept at the lookup is the call's own
    metadata, as the context reads it, call after call, 20 calls at once;
    on a path that does not keep it, it is read from the context."""

    async def scenario():
        server = grpc.aio.server()
        router = Router(server)

        async def compare(request, context):
            kept_here = kept_metadata() is not None
            found = call_metadata(context)
            await asyncio.sleep(0.01)  # the others run meanwhile
            same = found == context.invocation_metadata() and dict(found)["x-call"] == request.decode()
            return b"%s %s" % (b"same" if same else b"other", b"kept" if kept_here else b"read")

        router.add_registered_method_handlers("shop.Payments", {
            "Keeps": grpc.unary_unary_rpc_method_handler(compare), "Reads": grpc.unary_unary_rpc_method_handler(compare)})
        router.keep_metadata("/shop.Payments/Keeps")
        port = router.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                calls = [channel.unary_unary(f"/shop.Payments/{path}")(str(number).encode(), metadata=(("x-call", str(number)),),
                                                                       timeout=5)
                         for number in range(20) for path in ("Keeps", "Reads")]
                return await asyncio.gather(*calls)
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == [b"same kept", b"same read"] * 20
