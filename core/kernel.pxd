# C views of the fixed layouts in core/records.py. Field for field the same
# order and widths as the struct formats there. Every field sits at its
# natural alignment, so the C compiler adds no padding and the structs need
# not be packed; tests/test_records.py checks the sizes and the property
# tests check every byte written.

from libc.stdint cimport int16_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

# Leg indexes of the held/posted/refunded arrays, in payment order.
cdef enum:
    LEG_FLEET = 0
    LEG_PERSONAL = 1
    LEG_POINTS_CASH = 2
    LEG_POINTS_USED = 3
    LEG_CHANNEL = 4
    LEG_COUNT = 5

cdef struct OpRec:
    uint8_t kind
    uint8_t channel
    uint8_t plan_flags
    uint8_t card_status
    uint8_t account_kind
    uint8_t credit_kind
    uint16_t abort_code
    uint32_t station_id
    uint32_t terminal_id
    uint32_t operator_id
    uint32_t hold_timeout_s
    uint32_t points_per_unit
    uint32_t lot_validity_days
    uint64_t serial
    uint64_t card_id
    uint64_t ref_txn_id
    uint64_t ref_serial
    uint64_t account_owner
    uint64_t credit_owner
    int64_t amount
    int64_t points_max
    int64_t earn_points
    int64_t limit_per_txn
    int64_t limit_per_day
    char fingerprint[16]
    uint64_t item_id
    int64_t bonus_points
    uint32_t period
    uint32_t period_start
    uint32_t count_limit
    uint8_t tier
    uint8_t reason
    int16_t tz_offset_minutes
    uint8_t link
    uint8_t reserved[7]

cdef struct ResultRec:
    uint16_t code
    uint8_t kind
    uint8_t final
    uint32_t business_day
    uint64_t txn_id
    uint64_t card_id
    int64_t amount
    int64_t fleet
    int64_t personal
    int64_t points_cash
    int64_t points_used
    int64_t channel_amount
    int64_t points_earned
    int64_t points_clawed_back
    int64_t shortfall_settled
    int64_t fleet_balance
    int64_t personal_balance
    int64_t points_balance

cdef struct AccountRec:
    uint8_t kind
    uint8_t unit
    uint16_t flags
    uint32_t reserved
    uint64_t owner
    int64_t balance
    int64_t held
    int64_t debits
    int64_t credits
    uint64_t last_seq

cdef struct CardRec:
    uint64_t card_id
    uint8_t status
    uint8_t card_type
    uint16_t flags
    uint32_t day
    int64_t day_spent
    int64_t limit_per_txn
    int64_t limit_per_day
    uint64_t opened_ms

cdef struct TxnRec:
    uint64_t txn_id
    uint8_t kind
    uint8_t state
    uint8_t flags
    uint8_t channel
    uint32_t station_id
    uint32_t terminal_id
    uint32_t operator_id
    uint32_t business_day
    uint32_t points_per_unit
    uint64_t serial
    uint64_t card_id
    uint64_t ref_txn_id
    uint64_t created_ms
    uint64_t expires_ms
    int64_t amount
    int64_t held[5]
    int64_t posted[5]
    int64_t refunded[5]
    int64_t points_earned
    int64_t points_clawed_back
    int64_t points_shortfall
    int64_t refunds_posted
    int64_t shortfall_settled

cdef struct IdemRec:
    char fingerprint[16]
    ResultRec result

cdef struct JournalRec:
    uint64_t seq
    uint64_t txn_id
    int64_t amount
    uint64_t created_ms
    uint64_t debit_owner
    uint64_t credit_owner
    uint8_t debit_kind
    uint8_t credit_kind
    uint8_t movement
    uint8_t reason
    uint32_t business_day
    uint32_t station_id
    uint32_t reserved
    uint64_t debit_prev
    uint64_t credit_prev

cdef struct LotRec:
    uint64_t card_id
    uint32_t expires_day
    uint32_t earned_day
    int64_t original
    int64_t remaining
    uint64_t first_txn_id

# A card's POINTS account as stored: the account, then its newest open lot
# (all zero: none).
cdef struct PointsAccountRec:
    AccountRec account
    LotRec lot

cdef struct RequestRec:
    uint32_t terminal_id
    uint32_t reserved
    uint64_t serial
    uint64_t prev_seq
    IdemRec idem

cdef struct RequestTailRec:
    uint64_t last_seq
    uint64_t max_serial
    uint64_t tail_min_serial
    uint64_t tail_max_serial
    uint32_t tail_count
    uint32_t reserved

cdef struct MemberRec:
    uint64_t card_id
    uint8_t tier
    uint8_t flags
    int16_t tz_offset_minutes
    uint32_t checkin_day
    uint32_t checkin_streak
    uint32_t task_day
    int64_t task_points_today
    uint32_t extended_month
    uint32_t cleared_year

cdef struct TierChangeRec:
    uint64_t card_id
    uint32_t day
    uint8_t old_tier
    uint8_t new_tier
    uint16_t reason
    int64_t spend_minor

cdef struct GiftRec:
    uint64_t gift_id
    int64_t points_price
    int64_t cash_price
    int64_t stock
    int64_t redeemed
    uint32_t per_customer_limit
    uint32_t tier_mask
    uint32_t valid_from_day
    uint32_t valid_to_day

cdef struct ShiftRec:
    uint32_t terminal_id
    uint32_t station_id
    uint32_t operator_id
    uint8_t state
    uint8_t reserved
    uint16_t reserved2
    uint64_t shift_id
    uint64_t opened_ms
    uint64_t closed_ms
    uint64_t first_txn_id
    uint64_t last_txn_id

# One transfer of an operation, before it is applied.
cdef struct Posting:
    uint8_t debit_kind
    uint8_t credit_kind
    uint8_t movement
    uint8_t reason
    uint64_t debit_owner
    uint64_t credit_owner
    int64_t amount
