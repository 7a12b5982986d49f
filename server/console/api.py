"""The console's way to the server: Tally's own gRPC API, with the user's token.

Owns: one grpc.aio channel to this server's own port (TLS when the server
has it), the stubs of every service, calls made with the session's bearer
token, and ApiError: a refused call with its status, text, machine reason
and the field it names (from google.rpc.Status details in the
`grpc-status-details-bin` trailer), so a page can show it beside that field.
Used by: the console's pages (server/console/pages/).

Why over gRPC and not by calling core directly: every permission, every
organisation boundary, every validation and the login lockout are the API's
(server/rpc.py, server/callers.py, the services); the console adds none of
its own and cannot drift from them.
"""

import grpc
from google.rpc import error_details_pb2, status_pb2

from tally.v1 import (
    admin_pb2_grpc,
    card_pb2_grpc,
    loyalty_pb2_grpc,
    payment_pb2_grpc,
    promotion_pb2_grpc,
    replication_pb2_grpc,
    report_pb2_grpc,
    settlement_pb2_grpc,
)

DETAILS_KEY = "grpc-status-details-bin"
CALL_TIMEOUT_S = 30.0
STUBS = {
    "admin": admin_pb2_grpc.AdminServiceStub,
    "cards": card_pb2_grpc.CardServiceStub,
    "loyalty": loyalty_pb2_grpc.LoyaltyServiceStub,
    "payments": payment_pb2_grpc.PaymentServiceStub,
    "promotions": promotion_pb2_grpc.PromotionServiceStub,
    "risk": promotion_pb2_grpc.RiskServiceStub,
    "settlement": settlement_pb2_grpc.SettlementServiceStub,
    "reports": report_pb2_grpc.ReportServiceStub,
    "replication": replication_pb2_grpc.ReplicationServiceStub,
}


class ApiError(Exception):
    """A call the API refused. field: the request field it names ("" if none)."""

    def __init__(self, code: grpc.StatusCode, text: str, reason: str = "", field: str = ""):
        super().__init__(text)
        self.code = code
        self.text = text
        self.reason = reason
        self.field = field

    @property
    def invalid(self) -> bool:
        return self.code == grpc.StatusCode.INVALID_ARGUMENT


def api_error_of(error: grpc.aio.AioRpcError) -> ApiError:
    reason, field = "", ""
    for key, value in error.trailing_metadata() or ():
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, field = info.reason, info.metadata.get("field", field)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                detail.Unpack(request)
                if request.field_violations:
                    field = request.field_violations[0].field
    return ApiError(error.code(), error.details() or error.code().name, reason, field)


def channel_to(target: str, root_certificates: bytes | None = None, server_name: str | None = None) -> grpc.aio.Channel:
    if root_certificates is None:
        return grpc.aio.insecure_channel(target)
    options = (("grpc.ssl_target_name_override", server_name),) if server_name else ()
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options=options)


class Api:
    """The stubs, called for one user: `await api.call(token, "admin", "WhoAmI", request)`."""

    def __init__(self, channel: grpc.aio.Channel):
        self.channel = channel
        self._stubs = {name: stub(channel) for name, stub in STUBS.items()}

    @staticmethod
    def _metadata(token: str) -> tuple:
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def call(self, token: str, service: str, rpc: str, request):
        method = getattr(self._stubs[service], rpc)
        try:
            return await method(request, metadata=self._metadata(token), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise api_error_of(error) from None

    async def stream(self, token: str, service: str, rpc: str, request) -> list:
        """A server-streaming call's messages, all of them."""
        method = getattr(self._stubs[service], rpc)
        try:
            return [message async for message in method(request, metadata=self._metadata(token), timeout=CALL_TIMEOUT_S)]
        except grpc.aio.AioRpcError as error:
            raise api_error_of(error) from None

    async def send_stream(self, token: str, service: str, rpc: str, messages):
        """A client-streaming call (a statement's chunks)."""
        method = getattr(self._stubs[service], rpc)
        try:
            return await method(iter(messages), metadata=self._metadata(token), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise api_error_of(error) from None

    async def close(self):
        await self.channel.close()
