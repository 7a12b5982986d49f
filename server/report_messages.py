"""From the books' records to the back-office answers' protobuf messages.

Owns: the builders of the messages that both the server and its reader
processes put in answers: a card's transaction (CardTransaction), clearing
lines, shift and station totals (Totals, MethodTotals) and a settlement
difference (Difference). One module of their own, importing only core and
the generated messages, so that server/readers.py and the services that
answer the same messages (server/report_service.py,
server/settlement_service.py, server/shift_service.py) import it and not
each other.
"""

from core.records import Txn
from core.results import Channel, OpKind, TxnFlag, TxnState
from core.settlement.model import ItemKind
from core.settlement.shifts import MethodTotals, Totals
from tally.v1 import report_pb2, settlement_pb2

# The channels a transaction may name; another value is answered as 0.
_CHANNELS = frozenset(int(channel) for channel in Channel)
_ITEMS = {ItemKind.PAYMENT: settlement_pb2.ITEM_PAYMENT, ItemKind.REFUND: settlement_pb2.ITEM_REFUND,
          ItemKind.UNDO: settlement_pb2.ITEM_UNDO}


def _name(enum_type, value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return str(value)


def transaction_message(record: Txn) -> report_pb2.CardTransaction:
    """A card's transaction as a card's page lists it: the held amounts of
    a hold, the posted ones otherwise."""
    prefix = "held_" if record.state == TxnState.HELD else "posted_"
    refunded = (record.refunded_fleet + record.refunded_personal + record.refunded_points_cash
                + record.refunded_channel)
    return report_pb2.CardTransaction(
        txn_id=record.txn_id, kind=_name(OpKind, record.kind), state=_name(TxnState, record.state),
        voided=bool(record.flags & TxnFlag.VOIDED), reversed=bool(record.flags & TxnFlag.REVERSED),
        business_day=record.business_day, created_ms=record.created_ms, station_id=record.station_id,
        terminal_id=record.terminal_id, operator_id=record.operator_id, amount_minor=record.amount,
        fleet_minor=getattr(record, prefix + "fleet"), personal_minor=getattr(record, prefix + "personal"),
        points_cash_minor=getattr(record, prefix + "points_cash"), points_used=getattr(record, prefix + "points_used"),
        channel=record.channel if record.channel in _CHANNELS else 0, channel_minor=getattr(record, prefix + "channel"),
        refunded_minor=refunded, points_earned=record.points_earned - record.points_clawed_back,
        ref_txn_id=record.ref_txn_id)


def clearing_lines(lines, seen=None) -> list[settlement_pb2.ClearingLine]:
    """The clearing lines (core/settlement/clearing.py) at the stations
    `seen` holds (a set or a predicate's container; None: all)."""
    return [settlement_pb2.ClearingLine(station_id=line.station_id, method=line.method, funded_by=line.funded_by,
                                        in_minor=line.in_minor, out_minor=line.out_minor, net_minor=line.net_minor,
                                        entries=line.entries)
            for line in lines if seen is None or line.station_id in seen]


def method_totals_message(totals: MethodTotals) -> settlement_pb2.MethodTotals:
    channels = sorted((int(Channel[name]), amount) for name, amount in totals.channels.items())
    return settlement_pb2.MethodTotals(
        fleet_minor=totals.fleet, personal_minor=totals.personal, points_cash_minor=totals.points_cash,
        points=totals.points,
        channels=[settlement_pb2.ChannelTotal(channel=channel, amount_minor=amount) for channel, amount in channels],
        total_minor=totals.total,
    )


def totals_message(totals: Totals) -> settlement_pb2.Totals:
    return settlement_pb2.Totals(
        sales_count=totals.sales_count, sales=method_totals_message(totals.sales),
        refunds_count=totals.refunds_count, refunds=method_totals_message(totals.refunds),
        voided_count=totals.voided_count, voided_minor=totals.voided_minor,
        reversed_count=totals.reversed_count, reversed_minor=totals.reversed_minor,
        topups_count=totals.topups_count, topups_minor=totals.topups_minor, discounts_minor=totals.discounts_minor,
    )


def difference_message(found) -> settlement_pb2.Difference:
    """A difference of the settlement queue (core/settlement/queue.py)."""
    message = settlement_pb2.Difference(
        id=found.key, channel=found.channel, day=found.day, item=_ITEMS[found.item], reference=found.reference,
        kind=int(found.kind), state=int(found.state), station_id=found.station_id, ours_minor=found.ours_minor,
        channel_minor=found.channel_minor, delta_minor=found.delta_minor, ours_status=found.ours_status,
        channel_status=found.channel_status, fee_minor=found.fee_minor, detail=found.detail, found_ms=found.found_ms,
        org_id=found.domain,
    )
    if found.resolution is not None:
        resolution = found.resolution
        message.resolution.CopyFrom(settlement_pb2.Resolution(
            action=int(resolution.action), by=resolution.by, why=resolution.why, at_ms=resolution.at_ms,
            adjustment_txn_id=resolution.adjustment_txn_id, adjustment_minor=resolution.adjustment_minor,
        ))
    return message
