"""Demo data: cards with balances and points, so `make run` has something to pay with.

The demo network: stations 1 and 2, terminals 101 and 102 at station 1 and
201 at station 2, operator 7. Cards (README lists them):
  6200000000000001  company card, fleet 5,000.00, personal 1,000.00, 20,000 points
  6200000000000002  personal card, personal 300.00, 5,000 points, limit 500.00 a sale
  6200000000000003  personal card, personal 50.00, restricted to station 2
Written through the kernel like any other operation, with a serial per top-up,
so running it twice changes nothing.
"""

import logging

from core.commit import GroupCommitter
from core.ledger import Ledger
from core.records import Op
from core.results import AccountKind, CardType, OpKind

log = logging.getLogger(__name__)

DEMO_TERMINAL_ID = 1
DEMO_STATION_ID = 1
DEMO_CARDS = (
    # card_id, type, per-sale limit, fleet, personal, points, allowed station
    (6200000000000001, CardType.COMPANY, 0, 500_000, 100_000, 20_000, 0),
    (6200000000000002, CardType.PERSONAL, 50_000, 0, 30_000, 5_000, 0),
    (6200000000000003, CardType.PERSONAL, 0, 0, 5_000, 0, 2),
)


def demo_ops() -> list[Op]:
    ops = []
    serial = 0
    for card_id, card_type, limit, fleet, personal, points, station in DEMO_CARDS:
        ops.append(Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=card_type, limit_per_txn=limit))
        if station:
            ops.append(Op(kind=OpKind.ALLOW_STATION, card_id=card_id, station_id=station))
        for kind, amount in ((AccountKind.FLEET, fleet), (AccountKind.PERSONAL, personal), (AccountKind.POINTS, points)):
            serial += 1
            if amount:
                ops.append(
                    Op(
                        kind=OpKind.TOPUP,
                        station_id=DEMO_STATION_ID,
                        terminal_id=DEMO_TERMINAL_ID,
                        operator_id=1,
                        serial=serial,
                        card_id=card_id,
                        account_kind=kind,
                        amount=amount,
                        fingerprint=serial.to_bytes(16, "big"),
                    )
                )
    return ops


async def seed_demo_data(committer: GroupCommitter, ledger: Ledger):
    if ledger.card(DEMO_CARDS[0][0]) is not None:
        return
    for op in demo_ops():
        await committer.submit(op)
    log.info("demo data created: %d cards", len(DEMO_CARDS))
