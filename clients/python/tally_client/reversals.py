"""The reversal queue: store-and-forward of the Reverse of every request
whose answer was lost, kept on disk until the server answers it.

Owns: one directory per terminal (terminal-<id>.reversals/ under the
client's state directory): one small JSON file per request whose outcome
is not known, and answered.log, the last answers of the reversals sent.
Used by: the clients, which arm, disarm and drain it.

As jPOS does, the Reverse is stored before the request goes out, not after
its answer is found missing:
  arm      before a request that moves money or points is sent, its entry
           is written and fsync'd (the request is "in flight");
  disarm   when its answer comes, or the server refused it before it ran
           (INVALID_ARGUMENT and the like), the entry is removed, durably,
           before the caller sees the answer;
  due      when no answer came in the call's time, the entry becomes due:
           it gets the serial of its Reverse (written before it is first
           sent, so every resend carries the same serial) and the clients'
           drainer sends that Reverse until the server answers it.
A client that crashes mid-call leaves its entry armed on disk; the next
client to open the queue finds it and makes it due. So a request whose
outcome the terminal never learnt is always reversed, and nothing is
reversed that the caller was told was approved.

What a Reverse's answer means for the original (PaymentService.Reverse):
APPROVED: it is undone; ORIGINAL_NOT_SEEN: it never arrived and now never
will (the serial is blocked); ORIGINAL_DECLINED, ALREADY_REVERSED,
ALREADY_VOIDED, HOLD_CLOSED, HOLD_EXPIRED: it took nothing, or was undone
already; NOT_REVERSIBLE: it arrived and stands (a refund, a void, a loyalty
call: kinds that cannot be undone; Query its serial for its answer). Every
answer is final: none asks for the Reverse to be sent again.
"""

import json
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace

from tally_client._durable import fsync_directory, remove_durably, write_atomically

ANSWERED_LOG = "answered.log"
ANSWERED_KEPT_MAX = 1000
ENTRIES_MAX = 100_000


@dataclass(frozen=True, slots=True)
class PendingReversal:
    """A request whose answer the terminal does not have."""

    terminal_id: int
    station_id: int
    operator_id: int
    # The request to undo: its serial and gRPC method.
    original_serial: int
    method: str
    armed_ms: int
    # The Reverse's own serial; 0 until the entry is due.
    reverse_serial: int = 0


@dataclass(frozen=True, slots=True)
class AnsweredReversal:
    """The server's answer to a queued Reverse."""

    original_serial: int
    reverse_serial: int
    method: str
    # The ResultCode number and words of the Reverse's answer.
    result: int
    result_text: str
    txn_id: int
    answered_ms: int


class ReversalQueue:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._mutex = threading.Lock()
        self._armed: dict[int, PendingReversal] = {}
        self._due: dict[int, PendingReversal] = {}
        self.answered: deque[AnsweredReversal] = deque(maxlen=ANSWERED_KEPT_MAX)
        # What a previous run left is due now: its caller is gone.
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                entry = _read_entry(os.path.join(directory, name))
                self._due[entry.original_serial] = entry
        self._load_answered()

    def _path(self, original_serial: int) -> str:
        return os.path.join(self.directory, f"{original_serial}.json")

    def arm(self, terminal_id: int, station_id: int, operator_id: int, serial: int, method: str) -> PendingReversal:
        """Before sending a request that moves money or points."""
        entry = PendingReversal(terminal_id, station_id, operator_id, serial, method, time.time_ns() // 1_000_000)
        with self._mutex:
            if len(self._armed) + len(self._due) >= ENTRIES_MAX:
                raise OverflowError(f"{self.directory}: {ENTRIES_MAX} reversals pending; "
                                    "the server has not answered them")
        write_atomically(self._path(serial), _encode(entry))
        with self._mutex:
            self._armed[serial] = entry
        return entry

    def disarm(self, entry: PendingReversal) -> None:
        """Its answer came (or it was refused unrun): nothing to reverse."""
        remove_durably(self._path(entry.original_serial))
        with self._mutex:
            self._armed.pop(entry.original_serial, None)

    def make_due(self, entry: PendingReversal, reverse_serial: int) -> PendingReversal:
        """The answer is lost: from now on the Reverse is sent until answered."""
        due = replace(entry, reverse_serial=reverse_serial)
        write_atomically(self._path(entry.original_serial), _encode(due))
        with self._mutex:
            self._armed.pop(entry.original_serial, None)
            self._due[entry.original_serial] = due
        return due

    def due(self) -> list[PendingReversal]:
        """The reversals to send, oldest request first."""
        with self._mutex:
            return [self._due[serial] for serial in sorted(self._due)]

    def __len__(self) -> int:
        with self._mutex:
            return len(self._due)

    def answer(self, entry: PendingReversal, result: int, result_text: str, txn_id: int) -> AnsweredReversal:
        """The server answered the Reverse: log the answer, drop the entry."""
        answered = AnsweredReversal(entry.original_serial, entry.reverse_serial, entry.method, result, result_text,
                                    txn_id, time.time_ns() // 1_000_000)
        with open(os.path.join(self.directory, ANSWERED_LOG), "a") as log:
            log.write(json.dumps(asdict(answered)) + "\n")
            log.flush()
            os.fsync(log.fileno())
        remove_durably(self._path(entry.original_serial))
        with self._mutex:
            self._due.pop(entry.original_serial, None)
            self.answered.append(answered)
        return answered

    def _load_answered(self):
        """The last answers, and the log cut to them (it never grows without bound)."""
        path = os.path.join(self.directory, ANSWERED_LOG)
        try:
            with open(path) as log:
                lines = log.read().splitlines()
        except FileNotFoundError:
            return
        for line in lines[-ANSWERED_KEPT_MAX:]:
            try:
                self.answered.append(AnsweredReversal(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line torn by a crash mid-append: its entry is still queued and is sent again
        if len(lines) > ANSWERED_KEPT_MAX:
            write_atomically(path, "".join(json.dumps(asdict(a)) + "\n" for a in self.answered).encode())
            fsync_directory(self.directory)


def _encode(entry: PendingReversal) -> bytes:
    return json.dumps(asdict(entry), sort_keys=True).encode()


def _read_entry(path: str) -> PendingReversal:
    with open(path, "rb") as file:
        return PendingReversal(**json.loads(file.read()))
