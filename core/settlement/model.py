"""The typed records of settlement: statement rows, differences, resolutions.

Owns: what a channel's statement says once parsed (whatever its format),
the four kinds of difference, the queue's records and their states.
Used by: statements/ (produce Statement), reconcile.py (compares them with the
journal), queue.py (stores them in LMDB as msgpack), the CLI and the gRPC
service (show them).

Money is integer minor units; times are ms since the epoch (UTC). A row's
`reference` is the Tally transaction id that Tally gave the channel as its
order number: the sale's id for a payment, and for a refund the sale's id
with the refund's own id in `refund_reference`.

Domains (core/domains.py): a statement is a headquarters domain's merchant
account with the channel (`domain`; 0: the network's, as before domains),
matched against the journal of that domain's stations only. Its import,
run and differences carry that domain; a difference's id names it (the
network's keep the id they had).
"""

import enum

import msgspec


class RowKind(enum.IntEnum):
    """What a statement row records."""

    # A payment (a sale's channel part).
    PAYMENT = 1
    # Money back on a payment: a refund (refund_reference is the refund's
    # Tally id) or the undo of a void or reversal booked on a later day
    # (refund_reference equals reference).
    REFUND = 2


class RowStatus(enum.IntEnum):
    """The channel's status of a row."""

    SUCCESS = 1
    # A payment revoked (reversed) on the channel the same day: it moved no
    # money in the end.
    REVOKED = 2
    # A refund the channel is still working on.
    PROCESSING = 3
    # A refund (or payment) the channel failed or closed: no money moved.
    FAILED = 4


class StatementRow(msgspec.Struct, frozen=True):
    line: int
    kind: RowKind
    status: RowStatus
    reference: int
    refund_reference: int
    # The channel's own id of the payment or refund.
    channel_trade_no: str
    amount_minor: int
    # What the channel charged for the row; negative on a refund: the share
    # of the fee the channel gave back.
    fee_minor: int
    time_ms: int
    # The terminal or device the channel names, if any (display only).
    device: str = ""


class StatementTotals(msgspec.Struct, frozen=True):
    """The totals a statement states about itself, checked against its rows."""

    rows: int
    payments_minor: int
    refunds_minor: int
    fees_minor: int


class Statement(msgspec.Struct, frozen=True):
    """One channel's statement of one day."""

    channel: int
    # The calendar day the statement covers, in the channel's local time
    # (days since 1970-01-01).
    day: int
    merchant_id: str
    rows: tuple[StatementRow, ...]
    totals: StatementTotals


def totals_of(rows) -> StatementTotals:
    """The totals every format writes (and every parser checks): payments
    that succeeded or were revoked, refunds that succeeded, all fees."""
    payments = sum(row.amount_minor for row in rows if row.kind == RowKind.PAYMENT)
    refunds = sum(row.amount_minor for row in rows if row.kind == RowKind.REFUND and row.status == RowStatus.SUCCESS)
    return StatementTotals(len(rows), payments, refunds, sum(row.fee_minor for row in rows))


# ------------------------------------------------------------ differences


class DifferenceKind(enum.IntEnum):
    """Every difference is exactly one of these."""

    # We posted it; the channel's statement does not have it.
    ONLY_OURS = 1
    # The channel's statement has it; we did not post it.
    ONLY_CHANNEL = 2
    # Both have it with the same status, for different amounts.
    AMOUNT_DIFFERS = 3
    # Both have it, but one side has it paid (or refunded) and the other
    # undone (or failed).
    STATUS_DIFFERS = 4


class ItemKind(enum.IntEnum):
    """What a difference is about."""

    # A sale's channel part, with its same-day void or reversal.
    PAYMENT = 1
    # A refund.
    REFUND = 2
    # The void or reversal of a payment of an earlier day.
    UNDO = 3


class DifferenceState(enum.IntEnum):
    OPEN = 1
    # Staff resolved it (see Resolution).
    RESOLVED = 2
    # A later reconciliation of the same day no longer finds it (the next
    # day's statement arrived, say); closed by the system, logged.
    CLEARED = 3


class ResolutionAction(enum.IntEnum):
    # Keep the books as they are (a fee, a timing difference explained).
    ACCEPT = 1
    # Tally posts a correcting transfer so that our books agree with the
    # channel's statement (channel clearing <-> station receivable).
    ADJUST = 2
    # The extra side was reversed at its source (with the channel, or by a
    # terminal reversal); recorded here, nothing posted by settlement.
    REVERSE = 3


class Resolution(msgspec.Struct, frozen=True):
    action: ResolutionAction
    by: str
    why: str
    at_ms: int
    # ADJUST: the Tally transaction of the correcting transfer, and its
    # amount (positive: channel clearing -> station receivable).
    adjustment_txn_id: int = 0
    adjustment_minor: int = 0


class Difference(msgspec.Struct, frozen=True):
    channel: int
    # The business day reconciled.
    day: int
    item: ItemKind
    # The Tally transaction id: the sale's for PAYMENT and UNDO, the refund's
    # for REFUND.
    reference: int
    kind: DifferenceKind
    station_id: int
    # Money that moved on each side for the item (0 when absent or undone).
    ours_minor: int
    channel_minor: int
    ours_status: str
    channel_status: str
    fee_minor: int
    detail: str
    state: DifferenceState = DifferenceState.OPEN
    found_ms: int = 0
    resolution: Resolution | None = None
    # The headquarters whose statement found it (0: the network's).
    domain: int = 0

    @property
    def key(self) -> str:
        """Stable id shown to staff: CHANNEL-DAY-ITEM-REFERENCE, with
        DOMAIN- before it for a domain's difference."""
        return difference_key(self.channel, self.day, self.item, self.reference, self.domain)

    @property
    def delta_minor(self) -> int:
        """What the channel has more than we do (negative: less)."""
        return self.channel_minor - self.ours_minor


def difference_key(channel: int, day: int, item: int, reference: int, domain: int = 0) -> str:
    key = f"{int(channel)}-{day}-{int(item)}-{reference}"
    return f"{domain}-{key}" if domain else key


def parse_difference_key(text: str) -> tuple[int, int, int, int, int]:
    """(channel, day, item, reference, domain) of a difference id."""
    parts = text.split("-")
    wrong = f"{text!r} is not a difference id ([DOMAIN-]CHANNEL-DAY-ITEM-REFERENCE)"
    if len(parts) not in (4, 5) or not all(part.isascii() and part.isdigit() for part in parts):
        raise ValueError(wrong)
    numbers = [int(part) for part in parts]
    domain = numbers.pop(0) if len(numbers) == 5 else 0
    channel, day, item, reference = numbers
    if not (0 < channel < 256 and day < 2**32 and item in set(ItemKind) and reference < 2**64 and domain < 2**32):
        raise ValueError(wrong)
    if len(parts) == 5 and domain == 0:
        raise ValueError(wrong + ": the network's ids have no domain part")
    return channel, day, item, reference, domain


class ImportRecord(msgspec.Struct, frozen=True):
    """A statement file once imported; keyed by its SHA-256."""

    sha256: str
    channel: int
    day: int
    file_name: str
    rows: int
    totals: StatementTotals
    by: str
    at_ms: int
    domain: int = 0


class ReconcileRun(msgspec.Struct, frozen=True):
    """The last reconciliation of one channel and day."""

    channel: int
    day: int
    at_ms: int
    window_ms: int
    statement_sha256: str
    items_matched: int
    items_waiting: int
    differences: int
    differences_by_kind: dict[str, int]
    fees_minor: int
    ours_minor: int
    channel_minor: int
    domain: int = 0


class Action(msgspec.Struct, frozen=True):
    """One line of the queue's log: every change, with who and why."""

    seq: int
    at_ms: int
    key: str
    what: str
    by: str
    why: str
    # The domain of what it is about (0: the network's).
    domain: int = 0
