"""The LMDB environment: the one place that opens the store.

Owns: the data directory, the environment's settings (durable commits), the
named databases and what their keys and values are.
Used by: ledger.py (the writer), audit.py, the server's read paths, tests.

Named databases (keys big-endian, values in core.records layouts):
  accounts        (kind u8, owner u64)       -> Account; a POINTS account: Account + its newest open Lot
  cards           card_id u64                -> Card
  card_stations   (card_id u64, station u32) -> b""   allow list of a card
  txns            txn_id u64                 -> Txn
  requests        seq u64                    -> Request  terminal requests as answered, in order (idempotency)
  request_index   (terminal u32, serial >> 5 u64) -> (serial u64, seq u64)*  requests older than their terminal's tail
  request_tails   terminal u32               -> RequestTail  the terminal's newest requests, not indexed yet
  journal         seq u64                    -> JournalEntry (each names the entry before it on both accounts)
  hold_expiry     (expires_ms u64, txn u64)  -> b""   open pre-authorizations
  pending         txn_id u64                 -> b""   waiting for a channel
  meta            name                       -> u64   counters; b"format_version": the data format (below)
  point_lots      (card_id u64, expires u32) -> Lot   open points lots but each card's newest, oldest first
  closed_lots     (card_id u64, expires u32) -> Lot   lots spent or expired to zero
  lot_expiry      (expires u32, card_id u64) -> b""   every open lot (inline ones too) by expiry (the expiry job)
  members         card_id u64                -> Member      loyalty state of a card
  tier_changes    (card_id u64, number u64)  -> TierChange  every tier change, in order
  gifts           gift_id u64                -> Gift        catalogue, with stock
  gift_counts     (gift_id u64, card_id u64) -> u32         redemptions per customer
  loyalty_config  b"rules"                   -> JSON        core.loyalty.rules.LoyaltyRules, the network's
                  b"rules/" + domain u32     -> JSON        a headquarters domain's own
  loyalty_gift_domains gift_id u64           -> u32         the domain whose catalogue holds a gift (none: the network's)
  shifts          terminal_id u32            -> Shift       the terminal's current or last shift
  day_ends        station_id u32             -> u32         last business day closed at the station
  card_domains    (card_id u64, domain u32)  -> b""         application domains enabled for a card
  station_domains station_id u32             -> u32         the application domain of a station
  counters        (scope u8, owner u64, subject u64, period u32) -> i64  core/counters.py
  txn_counters    txn_id u64                 -> (key 21 bytes, delta i64)*  counters a sale took,
                                                 given back when it is voided, reversed or aborted
  packet_shares   (packet u64, index u32)    -> i64         a red packet's shares, fixed at creation

Settlement's databases (values msgpack of core.settlement.model records),
each statement a headquarters domain's merchant account (0: the network's):
  settlement_imports      (domain u32, channel u8, day u32, sha256)  -> ImportRecord   files imported
  settlement_statements   (domain u32, channel u8, day u32)          -> StoredStatement
  settlement_differences  (domain u32, channel u8, day u32, item u8, reference u64) -> Difference
  settlement_actions      seq u64                        -> Action   the queue's log
  settlement_runs         (domain u32, channel u8, day u32)          -> ReconcileRun

Administration's databases (values msgpack of core.admin.model records):
  admin_orgs        org_id u32                 -> Organisation  the tree; a station's id is its org_id
  admin_terminals   terminal_id u32            -> Terminal      keys sealed under the master key
  admin_operators   operator_id u32            -> Operator
  admin_categories  (org_id u32, code utf-8)   -> Category
  admin_goods       (org_id u32, code utf-8)   -> Goods
  admin_parameters  headquarters org_id u32    -> Parameters    a domain's system parameters
  admin_users       username utf-8             -> User          argon2id password hash
  admin_sessions    sha256(token)              -> Session       bearer tokens, stored hashed
  admin_audit       seq u64                    -> AuditEntry    append-only, hash-chained
  admin_meta        b"audit_head"              -> AuditHead     the chain's last seq and hash
                    b"terminals_version"       -> u64           counts every change of admin_terminals
  admin_cards       card_id u64                -> CardOwner     the issuing organisation of a card
  admin_customers   customer_id u64            -> Customer      card holders' profiles
  admin_customer_cards (customer u64, card u64) -> b""          a customer's cards
  admin_partners    partner_id u32             -> Partner       partner programmes, their keys sealed

Promotions' and risk's databases (core/promotions/store.py, core/risk/):
  promotion_records       promotion_id u64           -> JSON Promotion (core.promotions.model)
  promotion_meta          name                       -> u64 sequences and version; b"policy" -> JSON StackingPolicy
                          (the network's), b"policy/" + domain u32 -> a headquarters domain's
  promotion_coupons       coupon_id u64              -> msgpack Coupon
  promotion_coupon_codes  code utf-8                 -> coupon_id u64
  promotion_card_coupons  (card_id u64, coupon_id u64) -> b""   a card's coupons
  promotion_packets       packet_id u64              -> msgpack Packet (its shares: packet_shares)
  promotion_draws         seq u64                    -> msgpack Draw   every lottery draw
  risk_config             b"rules"                   -> JSON RiskRules (core.risk.rules), the network's;
                          b"rules/" + domain u32     -> a headquarters domain's
  risk_blacklist          card_id u64                -> msgpack BlacklistEntry
  risk_flags              seq u64                    -> msgpack Flag   patterns flagged for review
  promotion_issued        txn_id u64                 -> b""  a sale or top-up whose coupons were issued (once)

Requests the caller numbers itself (core/once.py):
  once              (rpc utf-8, 0, request id utf-8) -> fingerprint 16 bytes + answer  done once, answered the same

The data format. meta b"format_version" (u64 little-endian, as the other
meta values) is the version of the layout above a store holds; a store
without it was made before versions were kept and is version 1. A new store
is stamped with DATA_FORMAT_VERSION when it is created. open_store refuses a
store of another version (StoreFormatError, one line): a newer one this code
does not know, an older one until `python -m core.migrations DIR` brought it
up to date (core/migrations.py holds the steps, one per version).
"""

import os
import struct

import lmdb
import msgspec

from core.errors import FailedPrecondition

DATABASE_NAMES = (
    "accounts",
    "cards",
    "card_stations",
    "txns",
    "requests",
    "request_index",
    "request_tails",
    "journal",
    "hold_expiry",
    "pending",
    "meta",
    "point_lots",
    "closed_lots",
    "lot_expiry",
    "members",
    "tier_changes",
    "gifts",
    "gift_counts",
    "loyalty_config",
    "shifts",
    "day_ends",
    "card_domains",
    "station_domains",
    "counters",
    "txn_counters",
    "packet_shares",
    "settlement_imports",
    "settlement_statements",
    "settlement_differences",
    "settlement_actions",
    "settlement_runs",
    "admin_orgs",
    "admin_terminals",
    "admin_operators",
    "admin_categories",
    "admin_goods",
    "admin_parameters",
    "admin_users",
    "admin_sessions",
    "admin_audit",
    "admin_meta",
    "admin_cards",
    "admin_customers",
    "admin_customer_cards",
    "admin_partners",
    "promotion_records",
    "promotion_meta",
    "promotion_coupons",
    "promotion_coupon_codes",
    "promotion_card_coupons",
    "promotion_packets",
    "promotion_draws",
    "risk_config",
    "risk_blacklist",
    "risk_flags",
    "promotion_issued",
    "once",
    "loyalty_gift_domains",
)

# Databases of older formats that only their migration step opens (and
# deletes): version 2's idem ((terminal, serial) -> Idem) and points_history
# ((card, seq) -> b"").
RETIRED_DATABASE_NAMES = ("idem", "points_history")

# The layout this code reads and writes (see the module docstring); each
# version above 1 has its step in core/migrations.py.
DATA_FORMAT_VERSION = 3
FORMAT_VERSION_KEY = b"format_version"
_FORMAT_VALUE = struct.Struct("<Q")

# The map is a reservation of address space, not of disk: LMDB files grow as
# data is written. 64 GiB holds well over 10 million transactions.
MAP_SIZE_BYTES_DEFAULT = 64 * 2**30
# Readers: gRPC read paths, the audit and batch exports at once.
READERS_MAX = 512


class Store:
    """An open data directory: the environment plus its named databases."""

    def __init__(self, env: lmdb.Environment, path: str, readonly: bool):
        self.env = env
        self.path = path
        self.dbs = {name: self._open_db(name, readonly) for name in DATABASE_NAMES}

    def _open_db(self, name: str, readonly: bool):
        """A read-only store of a directory made before a database was added
        has None for it: readers treat it as empty (see rows)."""
        try:
            return self.env.open_db(name.encode(), create=not readonly)
        except lmdb.NotFoundError:
            return None

    def __getattr__(self, name):
        # store.accounts, store.journal, ... : the named database handles.
        try:
            return self.__dict__["dbs"][name]
        except KeyError:
            raise AttributeError(name) from None

    def close(self):
        self.env.close()


def rows(txn, db, keys: bool = True, values: bool = True):
    """Iterate a named database (nothing if a read-only store lacks it)."""
    if db is None:
        return iter(())
    return txn.cursor(db=db).iternext(keys=keys, values=values)


def entries(txn, db) -> int:
    return 0 if db is None else txn.stat(db)["entries"]


def transactions_in_directory(path: str) -> int | None:
    """The transactions the data directory at `path` holds, or None if it
    holds no database yet. For reports of runs on a seeded directory: every
    run adds to it, so the count says what a figure was measured on."""
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return None
    store = open_store(path, MAP_SIZE_BYTES_DEFAULT, readonly=True)
    try:
        with store.env.begin() as txn:
            return entries(txn, store.txns)
    finally:
        store.close()


class StoreFormatError(FailedPrecondition):
    """A store of a data format this code does not read."""


def format_version(store: Store) -> int:
    """The store's data format version (1: made before versions were kept)."""
    if store.meta is None:
        return 1
    with store.env.begin() as txn:
        raw = txn.get(FORMAT_VERSION_KEY, db=store.meta)
    return 1 if raw is None else _FORMAT_VALUE.unpack(raw)[0]


def set_format_version(txn, store: Store, version: int):
    """Record the format, in the caller's write transaction (a migration
    step's own, so the step and its version are stored together)."""
    txn.put(FORMAT_VERSION_KEY, _FORMAT_VALUE.pack(version), db=store.meta)


def require_current_format(store: Store, path: str):
    version = format_version(store)
    if version > DATA_FORMAT_VERSION:
        raise StoreFormatError(f"{path} holds data format {version}, newer than this code's {DATA_FORMAT_VERSION}: "
                               "run the version of Tally that wrote it", reason="STORE_FORMAT_NEWER")
    if version < DATA_FORMAT_VERSION:
        raise StoreFormatError(f"{path} holds data format {version}, this code reads {DATA_FORMAT_VERSION}: "
                               f"run `python -m core.migrations {path}` first", reason="STORE_FORMAT_OLD")


def require_format_of(path: str):
    """Refuse (StoreFormatError) a data directory of another data format;
    a directory without a store yet passes (it is made current). For the
    server, before it starts its workers."""
    if os.path.exists(os.path.join(path, "data.mdb")):
        open_store(path, MAP_SIZE_BYTES_DEFAULT, readonly=True).close()


def open_store(
    path: str, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT, readonly: bool = False, durable: bool = True,
    replicated: bool = False,
    check_format: bool = True,
) -> Store:
    """Open (creating if needed) the data directory at `path`.

    A new store is stamped with DATA_FORMAT_VERSION; an existing one of
    another version is refused (StoreFormatError) unless check_format is
    False (core/migrations.py, which brings it up to date).

    sync and metasync are on: a commit returns only when its data and the
    meta page are on disk (fdatasync), which is what lets the server answer
    a request only after its commit is durable. durable=False is for bulk
    loading only (`bench seed`): commits skip the fsync, the loader calls
    env.sync(True) once at the end; a crash in between loses the load.
    replicated: a node of a replicated log (core/replication/) whose
    durability is the log's quorum: the data pages are synced at each
    commit but the meta page is not (one fdatasync a commit instead of
    two). A power cut may then undo the node's last commit, never damage
    the store, and the position undone with it is replayed from the log.
    """
    if not readonly:
        os.makedirs(path, exist_ok=True)
    is_new = not readonly and not os.path.exists(os.path.join(path, "data.mdb"))
    env = lmdb.open(
        path,
        map_size=map_size_bytes,
        max_dbs=len(DATABASE_NAMES) + len(RETIRED_DATABASE_NAMES),
        max_readers=READERS_MAX,
        sync=durable,
        metasync=durable and not replicated,
        readonly=readonly,
        # The server reads records at random (no readahead); a read-only
        # open is the audit or an export scanning everything in order.
        readahead=readonly,
        # Several server processes may open the same files (issue 7); LMDB
        # serialises their writers with its own lock.
        lock=True,
    )
    store = Store(env, path, readonly)
    if is_new:
        from core.writes import DirectWriter  # it imports this module

        DirectWriter(store).write_blocking(lambda txn: set_format_version(txn, store, DATA_FORMAT_VERSION))
    elif check_format:
        try:
            require_current_format(store, path)
        except StoreFormatError:
            store.close()
            raise
    return store


LOG_POSITION_KEY = b"log_position"
LOG_STREAM_KEY = b"log_stream"
LOG_POSITION = struct.Struct("<QQ")


def log_position_in(txn, store: Store) -> tuple[int, int]:
    """(position, time_ms) of the last log entry this directory applied;
    (0, 0) if none (a new node, or a directory never replicated)."""
    raw = txn.get(LOG_POSITION_KEY, db=store.meta) if store.meta is not None else None
    return (0, 0) if raw is None else LOG_POSITION.unpack(raw)


def log_position(store: Store) -> tuple[int, int]:
    with store.env.begin() as txn:
        return log_position_in(txn, store)


def replicated_stream(store: Store) -> str | None:
    """The log this directory is a node of, or None (a standalone store)."""
    if store.meta is None:
        return None
    with store.env.begin() as txn:
        raw = txn.get(LOG_STREAM_KEY, db=store.meta)
    return None if raw is None else raw.decode()


def load_json(store: Store, db, key: bytes, record_type):
    """A configuration record saved as JSON (rules, policies), or its
    defaults (record_type()) when none was saved."""
    with store.env.begin() as txn:
        raw = txn.get(key, db=db)
    return record_type() if raw is None else msgspec.json.decode(raw, type=record_type)


def put_versioned_json(txn, db, key: bytes, record):
    """Save a configuration record (a msgspec Struct with a `version` field)
    under the next version number, inside the caller's write transaction;
    returns what was saved. Readers in other processes reload when the
    version they hold is behind."""
    raw = txn.get(key, db=db)
    current = 0 if raw is None else msgspec.json.decode(raw, type=type(record)).version
    saved = msgspec.structs.replace(record, version=current + 1)
    txn.put(key, msgspec.json.encode(saved), db=db)
    return saved
