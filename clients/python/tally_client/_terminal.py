"""What the sync and asyncio terminal clients share: the terminal's
identity and state on disk, and turning a Request into wire bytes.

Owns: opening the state directory (serials, reversal queue), stamping the
TerminalContext, serializing once (every attempt and the MAC use the same
bytes), the MAC metadata, and the Reverse a lost request gets.
Used by: client.py (TerminalClient), aio.py (AsyncTerminalClient).
"""

import os
from dataclasses import dataclass
from typing import Any

from tally_client import _proto, operations
from tally_client.errors import TallyRpcError
from tally_client.reversals import PendingReversal, ReversalQueue
from tally_client.serials import SerialAllocator
from tally_client.settings import ClientSettings
from tally_client.terminal_keys import TerminalKeys

TERMINAL_ID_MAX = 0xFFFEFFFF
ID32_MAX = 2**32 - 1


class Lost(Exception):
    """No answer in the operation's time, or a failure after which the
    server may have acted without answering: the answer is lost."""

    def __init__(self, last: TallyRpcError | None):
        super().__init__(str(last) if last else "no answer")
        self.last = last


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready to go: the exact bytes every attempt sends."""

    method: str
    body: bytes
    # The serial the MAC carries: the request's own, 0 when it has none (Query).
    serial: int
    answer_type: Any
    armed: bool


class TerminalBase:
    def __init__(self, *, station_id: int, terminal_id: int, operator_id: int, state_dir: str,
                 secret: bytes | None = None, algorithm: str | None = None, settings: ClientSettings | None = None,
                 serial_first: int = 1):
        if not 1 <= terminal_id <= TERMINAL_ID_MAX:
            raise ValueError(f"terminal_id: must be within 1 .. {TERMINAL_ID_MAX}, got {terminal_id}")
        for name, value in (("station_id", station_id), ("operator_id", operator_id)):
            if not 1 <= value <= ID32_MAX:
                raise ValueError(f"{name}: must be within 1 .. {ID32_MAX}, got {value}")
        self.station_id, self.terminal_id, self.operator_id = station_id, terminal_id, operator_id
        self.settings = settings or ClientSettings()
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.serials = SerialAllocator(os.path.join(state_dir, f"terminal-{terminal_id}.serial"),
                                       self.settings.serial_block, serial_first)
        try:
            self.reversals = ReversalQueue(os.path.join(state_dir, f"terminal-{terminal_id}.reversals"))
        except BaseException:
            self.serials.close()
            raise
        self.keys: TerminalKeys | None = None
        if secret is not None:
            self.keys = TerminalKeys(terminal_id, station_id, secret, *([algorithm] if algorithm else []))

    def prepare(self, request: operations.Request) -> Prepared:
        """Stamp a new serial (requests with a TerminalContext) and serialize once."""
        message = request.message
        serial = 0
        if operations.has_terminal(message):
            serial = self.serials.next()
            operations.stamp(message, self.station_id, self.terminal_id, serial, self.operator_id)
        body = message.SerializeToString(deterministic=True)
        return Prepared(request.method, body, serial, _proto.tally(operations.ANSWERS[request.method]),
                        request.armed and serial != 0)

    def arm(self, prepared: Prepared) -> PendingReversal:
        """Record a request that moves money or points before it is sent."""
        assert prepared.armed, f"{prepared.method} with serial {prepared.serial} is not reversible"
        return self.reversals.arm(self.terminal_id, self.station_id, self.operator_id, prepared.serial, prepared.method)

    def reverse_due(self, entry: PendingReversal) -> PendingReversal:
        """A lost answer: give the entry its Reverse's serial, durably."""
        return self.reversals.make_due(entry, self.serials.next())

    def queue_lost_reverse(self, prepared: Prepared, original_serial: int) -> PendingReversal:
        """A Reverse the caller sent whose answer was lost: the queue resends
        it (same serial) until answered."""
        entry = self.reversals.arm(self.terminal_id, self.station_id, self.operator_id, original_serial,
                                   operations.REVERSE)
        return self.reversals.make_due(entry, prepared.serial)

    def reverse_request(self, entry: PendingReversal) -> Prepared:
        message = operations.reverse(entry.original_serial).message
        operations.stamp(message, entry.station_id, entry.terminal_id, entry.reverse_serial, entry.operator_id)
        return Prepared(operations.REVERSE, message.SerializeToString(deterministic=True), entry.reverse_serial,
                        _proto.tally("PaymentAnswer"), armed=False)

    def metadata(self, prepared: Prepared) -> tuple | None:
        if self.keys is None:
            return None
        return self.keys.metadata(prepared.method, prepared.serial, prepared.body)

    def needs_sign_on(self) -> bool:
        return self.keys is not None and self.keys.needs_sign_on(int(self.settings.key_rotation_margin_s * 1000))

    def close_state(self):
        self.serials.close()
