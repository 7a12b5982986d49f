"""Every limit of the transaction core, in one place.

Owns: the numbers that bound queues, batches, amounts and strings.
Used by: the kernel and reference (amount and balance checks), the group
committer (queue and batch bounds), the server (request validation).

A limit that is not written here is not a limit. Names carry their unit last,
as TigerBeetle does: `amount_minor_max`, `hold_timeout_s_max`.
"""

# Money is an integer number of minor units (fen, cents). The largest single
# amount is 10^12 minor units (10 billion currency units): far above any sale,
# far below where sums of many amounts could overflow a signed 64-bit integer.
AMOUNT_MINOR_MAX = 10**12
# A balance (customer or system account) never leaves +-2^62, so that adding
# one AMOUNT_MINOR_MAX to it can never wrap a signed 64-bit integer. An
# operation that would cross this is declined with BALANCE_LIMIT.
BALANCE_ABS_MAX = 2**62
# Points are integers with the same bounds as money.
POINTS_MAX = AMOUNT_MINOR_MAX

# Operations applied by one kernel call inside one LMDB write transaction.
# 8,189 is TigerBeetle's batch size: large enough that one fsync (0.5 to 2 ms
# here) is shared by thousands of requests.
BATCH_SIZE_MAX = 8189
# Requests waiting for the writer. Beyond this the server answers
# RESOURCE_EXHAUSTED at once instead of queueing without bound.
QUEUE_LENGTH_MAX = 16384
# How long the writer lingers for more requests before committing a batch
# that is not full. Short, since it adds to every answer's latency; long
# enough to gather a burst the event loop read at once (see commit.py).
BATCH_WAIT_MS_MAX = 1
# Records the Cython kernel keeps in memory from one batch to the next
# (cards, accounts, points lots, members, gifts): a few hundred bytes each
# with their keys and dict slots, so on the order of 150 MB of heap at most.
# Past this the kernel forgets them all and starts over. Not lower: points
# lots pile up with every earning sale, and at 100,000 the loyalty mix of
# `bench kernel --mixed` (10,000 cards) kept starting over and ran at 30,000
# operations/s instead of 66,000 to 80,000.
KERNEL_RECORDS_CACHED_MAX = 500_000

# A terminal's requests kept in its tail (core/idempotency.py) before they
# are listed in request_index at once: one index page written per this many
# requests of a terminal, instead of one per request; a retry of a recent
# serial reads at most this many requests to find it.
REQUEST_TAIL_MAX = 32

# Counters (core/counters.py): a delta is at most one amount, a ceiling keeps
# value + delta inside a signed 64-bit integer; a sale links at most this many
# counters (promotion stock and budget, coupon, velocity rules) to itself.
COUNTER_DELTA_ABS_MAX = AMOUNT_MINOR_MAX
COUNTER_CEILING_MAX = 2**62
COUNTER_TAKES_PER_SALE_MAX = 16
# Shares of one red packet.
PACKET_SHARES_MAX = 100_000

# Basket lines in one sale.
BASKET_LINES_MAX = 64
# Quantity of one basket line, in thousandths (millilitres for fuel).
QUANTITY_MILLI_MAX = 10**9
# Text fields (goods code, name, receipt text).
GOODS_CODE_LENGTH_MAX = 32
GOODS_NAME_LENGTH_MAX = 64
# gRPC message size accepted by the server.
MESSAGE_BYTES_MAX = 64 * 1024

# Identifiers. Terminal, station and operator ids are unsigned 32-bit; card ids
# and serials are unsigned 64-bit (a 19-digit card number fits).
STATION_ID_MAX = 2**32 - 1
# Terminal ids above TERMINAL_ID_MAX are the system's own request sources:
# promotions (red packets funded and returned), partner programmes
# (PARTNER_TERMINAL_ID_BASE + partner id from 1, so an exchange is idempotent
# on the partner's reference) and, last, settlement adjustments.
TERMINAL_ID_MAX = 0xFFFEFFFF
PARTNER_TERMINAL_ID_BASE = 0xFFFF0000
PROMOTION_TERMINAL_ID = PARTNER_TERMINAL_ID_BASE
PARTNER_ID_MAX = 0xFFFE
OPERATOR_ID_MAX = 2**32 - 1
CARD_ID_MAX = 2**64 - 1
SERIAL_MAX = 2**64 - 1

# Pre-authorization holds ("grey lock").
HOLD_TIMEOUT_S_DEFAULT = 30 * 60
HOLD_TIMEOUT_S_MAX = 7 * 24 * 3600

# Points as cash: how many points make one currency unit (100 minor units).
POINTS_PER_UNIT_DEFAULT = 100
POINTS_PER_UNIT_MAX = 1_000_000
# Points earned per currency unit paid (not counting what points paid).
EARN_POINTS_PER_UNIT_DEFAULT = 1
EARN_POINTS_PER_UNIT_MAX = 1000
# Points the rules may give one sale.
EARN_POINTS_MAX = POINTS_MAX
# Validity of a points lot: 24 months, as days.
LOT_VALIDITY_DAYS_DEFAULT = 730
LOT_VALIDITY_DAYS_MAX = 20 * 366

# Loyalty.
TZ_OFFSET_MINUTES_MAX = 14 * 60
STREAK_DAYS_MAX = 366
GIFT_STOCK_MAX = 10**9
REDEEM_QUANTITY_MAX = 1000
# Partner conversion rates are a fraction numerator / denominator, each at most this.
PARTNER_RATE_TERM_MAX = 10**6
LOT_EXTENSION_DAYS_MAX = 3660

# Holds expired by one sweep operation, and by every batch before its first
# operation; the sweep is repeated until done.
EXPIRE_SWEEP_HOLDS_MAX = 1024
# Days a station's business day may be ahead of the calendar's: once a
# station closed today (DAY_END), its operations belong to tomorrow. So a
# transaction's business day is its calendar day or the next, and the
# settlement scans by day (core/settlement) allow for that one day.
STATION_DAY_AHEAD_MAX = 1
