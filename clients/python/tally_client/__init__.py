"""Tally's client SDK for POS vendors and payment gateways.

    from tally_client import TerminalClient

    with TerminalClient("127.0.0.1:50051", station_id=1, terminal_id=101, operator_id=7,
                        state_dir="/var/lib/pos/tally") as client:
        result = client.pay(25_000, card_id=6200000000000001, use_fleet=True)
        print(result.result.name, result.txn_id, result.amount_minor)

What is where:
  client.TerminalClient        blocking terminal client (POS)
  aio.AsyncTerminalClient      the same for asyncio
  gateway.GatewayStream        many operations in flight on one stream (gateways)
  results                      typed answers (money in int minor units)
  codes                        ResultCode, Outcome, Channel and the other enums
  errors                       typed exceptions with status, reason and field
  serials, reversals           the terminal's state on disk: serials, the reversal queue
  terminal_keys, mac           sign-on, working keys, the terminal MAC
  iso8583                      ResultCode -> ISO 8583 response code (field 39)
  messages                     every tally.v1 message class, for raw use

Depends on grpcio, protobuf and cryptography only; never on Tally's server.
"""

from tally_client._proto import messages
from tally_client.aio import AsyncTerminalClient
from tally_client.client import TerminalClient
from tally_client.codes import (CardAccount, Channel, CustomerTier, Outcome, ResultCode, TransactionKind,
                                TransactionState)
from tally_client.errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition, FieldViolation, Internal,
                                 InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, TallyRpcError,
                                 Unauthenticated, Unavailable)
from tally_client.gateway import GatewayStream, OperationLost
from tally_client.iso8583 import response_code
from tally_client.results import (Balances, BasketLine, Gift, LoyaltyResult, PaymentResult, PointsItem, PointsLot,
                                  PointsQuote, PointsResult, QueryResult, SignOnResult, Sources, Transaction)
from tally_client.reversals import AnsweredReversal, PendingReversal, ReversalQueue
from tally_client.serials import SerialAllocator, SerialsInUse
from tally_client.settings import ClientSettings
from tally_client.terminal_keys import TerminalKeys

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists", "AnsweredReversal", "AsyncTerminalClient", "Balances", "BasketLine", "CardAccount", "Channel",
    "ClientSettings", "CustomerTier", "DeadlineExceeded", "FailedPrecondition", "FieldViolation", "GatewayStream",
    "Gift", "Internal", "InvalidArgument", "LoyaltyResult", "NotFound", "OperationLost", "Outcome", "PaymentResult",
    "PendingReversal", "PermissionDenied", "PointsItem", "PointsLot", "PointsQuote", "PointsResult", "QueryResult",
    "ResourceExhausted", "ResultCode", "ReversalQueue", "SerialAllocator", "SerialsInUse", "SignOnResult", "Sources",
    "TallyRpcError", "TerminalClient", "TerminalKeys", "Transaction", "TransactionKind", "TransactionState",
    "Unauthenticated", "Unavailable", "messages", "response_code",
]
