"""Imported statements, differences and every action on them, in LMDB.

Owns: the settlement_* named databases (see core/store.py): importing a
statement file once (idempotent by its SHA-256), running a reconciliation
and keeping its differences in the error queue, resolving a difference with
who and why, and the log of every change.
Used by: the CLI, server/settlement_service.py, tests.

Each change is one LMDB write transaction: a statement and its import record
are stored together or not at all, and so are a reconciliation's differences
and its log lines. A re-import of the same file, or a second reconciliation
with nothing new, changes nothing.

Queue states: OPEN (found, waiting for staff), RESOLVED (staff acted: ACCEPT,
ADJUST or REVERSE, with who and why), CLEARED (a later reconciliation of the
same day no longer finds it, e.g. once the next day's statement matched a
row across midnight; closed by the system and logged).

Domains: every key starts with the headquarters domain whose merchant
account the statement is (0: the network's); a domain's statement is
matched against the journal of its own stations only, the network's against
the stations of no domain (core/domains.py). `seen` arguments let the
server keep staff to what they may see.
"""

import enum
import hashlib
import struct
import time

import msgspec

from core.errors import FailedPrecondition, NotFound
from core.writes import DirectWriter, Writer
from core.records import Op, Txn, decode, u64_key
from core.results import AccountKind, OpKind, ResultCode
from core.settlement import reconcile
from core.settlement.model import (
    Action,
    Difference,
    DifferenceKind,
    DifferenceState,
    ImportRecord,
    ReconcileRun,
    Resolution,
    ResolutionAction,
    Statement,
    parse_difference_key,
)
from core.domains import NETWORK, stations_by_domain
from core.settlement.statements import FORMATS, parse_statement
from core.store import Store

# Adjustments are ledger requests like any other, idempotent on (terminal,
# serial): settlement is the terminal with the largest id, and a difference's
# serial is derived from its key, so a retried ADJUST posts nothing twice.
SETTLEMENT_TERMINAL_ID = 2**32 - 1
TEXT_LENGTH_MAX = 500
_DAY_KEY = struct.Struct(">IBI")
_DIFFERENCE_KEY = struct.Struct(">IBIBQ")
_SEQ_KEY = struct.Struct(">Q")
_encoder = msgspec.msgpack.Encoder()


class StoredStatement(msgspec.Struct, frozen=True):
    sha256: str
    file_name: str
    statement: Statement


class ImportResult(enum.IntEnum):
    IMPORTED = 1
    # The same file (same SHA-256) was imported before: nothing changed.
    ALREADY_IMPORTED = 2
    # A different file replaced the channel's statement of that day.
    REPLACED = 3


class SettlementError(FailedPrecondition):
    """A request settlement refuses (an unknown difference, a second
    statement for a day without --replace, ...); the message says why."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _decode(record_type, value):
    return None if value is None else msgspec.msgpack.decode(value, type=record_type)


def _difference_key(difference: Difference) -> bytes:
    return _DIFFERENCE_KEY.pack(difference.domain, difference.channel, difference.day, difference.item, difference.reference)


def _day_key(domain: int, channel: int, day: int) -> bytes:
    return _DAY_KEY.pack(domain, channel, day)


def _import_key(channel: int, day: int, sha256: str, domain: int = NETWORK) -> bytes:
    """Two statements may be byte for byte the same (a day without trades):
    a file is known by its hash together with its domain, channel and day."""
    return _day_key(domain, channel, day) + bytes.fromhex(sha256)


def _log(txn, store: Store, key: str, what: str, by: str, why: str, now_ms: int, domain: int = NETWORK):
    cursor = txn.cursor(db=store.settlement_actions)
    seq = _SEQ_KEY.unpack(cursor.key())[0] + 1 if cursor.last() else 1
    action = Action(seq=seq, at_ms=now_ms, key=key, what=what, by=by, why=why, domain=domain)
    txn.put(_SEQ_KEY.pack(seq), _encoder.encode(action), db=store.settlement_actions, append=True)


def _check_text(value: str, name: str):
    if not value.strip():
        raise SettlementError(f"{name} is required: say who and why")
    if len(value) > TEXT_LENGTH_MAX:
        raise SettlementError(f"{name} is longer than {TEXT_LENGTH_MAX} characters")


# ------------------------------------------------------------------ import


def import_statement(store: Store, channel: int, data: bytes, file_name: str, by: str, day: int | None = None,
                     utc_offset_minutes: int | None = None, replace: bool = False, now_ms: int | None = None,
                     writer: Writer | None = None, domain: int = NETWORK):
    """Parse and store a statement file of a domain's merchant account:
    (ImportResult, ImportRecord). The same file again (same bytes, domain,
    channel and day) changes nothing.

    Raises StatementError (nothing stored) for a malformed file and
    SettlementError for a different file of a day already imported (unless
    `replace`)."""
    _check_text(by, "by")
    now_ms = _now_ms() if now_ms is None else now_ms
    sha = hashlib.sha256(data).hexdigest()
    statement = parse_statement(channel, data, day=day, utc_offset_minutes=utc_offset_minutes)
    import_key = _import_key(channel, statement.day, sha, domain)
    with store.env.begin() as txn:
        known = _decode(ImportRecord, txn.get(import_key, db=store.settlement_imports))
    if known is not None:
        return ImportResult.ALREADY_IMPORTED, known
    record = ImportRecord(sha256=sha, channel=channel, day=statement.day, file_name=file_name, rows=len(statement.rows),
                          totals=statement.totals, by=by, at_ms=now_ms, domain=domain)
    day_key = _day_key(domain, channel, statement.day)

    def store_statement(txn):
        known = _decode(ImportRecord, txn.get(import_key, db=store.settlement_imports))
        if known is not None:  # imported meanwhile, by another caller
            return ImportResult.ALREADY_IMPORTED, known
        previous = _decode(StoredStatement, txn.get(day_key, db=store.settlement_statements))
        result = ImportResult.IMPORTED
        if previous is not None:
            if not replace:
                raise SettlementError(
                    f"a different statement of this channel and day is imported ({previous.file_name}, "
                    f"sha256 {previous.sha256[:12]}...); replace it explicitly"
                )
            txn.delete(_import_key(channel, statement.day, previous.sha256, domain), db=store.settlement_imports)
            result = ImportResult.REPLACED
        txn.put(import_key, _encoder.encode(record), db=store.settlement_imports)
        txn.put(day_key, _encoder.encode(StoredStatement(sha, file_name, statement)), db=store.settlement_statements)
        what = f"imported {len(statement.rows)} rows from {file_name}" + (" (replacing the earlier file)" if previous else "")
        name = f"statement-{channel}-{statement.day}" if domain == NETWORK else f"statement-{domain}-{channel}-{statement.day}"
        _log(txn, store, name, what, by, f"sha256 {sha}", now_ms, domain)
        return result, record

    return (writer or DirectWriter(store)).write_blocking(store_statement)


def load_statement(store: Store, channel: int, day: int, domain: int = NETWORK) -> StoredStatement | None:
    with store.env.begin() as txn:
        return _decode(StoredStatement, txn.get(_day_key(domain, channel, day), db=store.settlement_statements))


def imports(store: Store, domain: int | None = None) -> list[ImportRecord]:
    """Files imported, of one domain or (None) all."""
    with store.env.begin() as txn:
        found = (_decode(ImportRecord, value) for value in txn.cursor(db=store.settlement_imports).iternext(keys=False))
        return sorted((record for record in found if domain is None or record.domain == domain),
                      key=lambda record: (record.domain, record.day, record.channel))


# ------------------------------------------------------------------ reconcile


def txn_reader(store: Store):
    """txn_id -> our Txn record or None (what reconciliation asks of the
    ledger for what only the channel has: its station and state)."""

    def read(txn_id: int):
        with store.env.begin() as txn:
            value = txn.get(u64_key(txn_id), db=store.txns)
        return None if value is None else decode(Txn, value)

    return read


def domain_stations(store: Store, domain: int) -> tuple[set[int], bool]:
    """(stations, include) choosing the journal a domain's statement is
    matched against: its own stations (include), or for the network's
    every station of no domain (those of any domain excluded)."""
    with store.env.begin() as txn:
        by_domain = stations_by_domain(txn, store)
    if domain == NETWORK:
        return set(by_domain), False
    return {station for station, owner in by_domain.items() if owner == domain}, True


def reconcile_day(store: Store, channel: int, day: int, window_ms: int = reconcile.WINDOW_MS_DEFAULT,
                  statement_utc_offset_minutes: int | None = None, now_ms: int | None = None, txn_lookup=None,
                  writer: Writer | None = None, domain: int = NETWORK) -> ReconcileRun:
    """Match a domain's statement of the channel's `day` against the journal
    of that domain's stations and bring the queue up to date; the run's
    summary is stored and returned."""
    now_ms = _now_ms() if now_ms is None else now_ms
    stored = {d: load_statement(store, channel, d, domain) for d in (day - 1, day, day + 1)}
    if stored[day] is None:
        where = "" if domain == NETWORK else f" of headquarters {domain}"
        raise SettlementError(f"no statement{where} of channel {channel} for day {day} is imported")
    offset = FORMATS[channel].UTC_OFFSET_MINUTES if statement_utc_offset_minutes is None else statement_utc_offset_minutes
    ours = reconcile.our_events(store, channel, day - 1, day + 1, *domain_stations(store, domain))
    theirs = reconcile.their_events([s.statement for s in stored.values() if s is not None])
    statement_days = {d for d, s in stored.items() if s is not None}
    outcome = reconcile.match(ours, theirs, channel, day, window_ms, statement_days, offset, txn_lookup or txn_reader(store))
    found = [msgspec.structs.replace(difference, domain=domain) for difference in outcome.differences]
    by_kind = {kind.name: 0 for kind in DifferenceKind}
    for difference in outcome.differences:
        by_kind[difference.kind.name] += 1
    run = ReconcileRun(
        channel=channel, day=day, at_ms=now_ms, window_ms=window_ms, statement_sha256=stored[day].sha256,
        items_matched=outcome.items_matched, items_waiting=outcome.items_waiting, differences=len(outcome.differences),
        differences_by_kind=by_kind, fees_minor=reconcile.statement_fees(stored[day].statement),
        ours_minor=outcome.ours_minor, channel_minor=outcome.channel_minor, domain=domain,
    )

    def store_run(txn):
        _update_queue(txn, store, domain, channel, day, found, now_ms)
        txn.put(_day_key(domain, channel, day), _encoder.encode(run), db=store.settlement_runs)
        return run

    return (writer or DirectWriter(store)).write_blocking(store_run)


def _update_queue(txn, store: Store, domain: int, channel: int, day: int, found: list[Difference], now_ms: int):
    """Add new differences, refresh open ones, reopen cleared ones that are
    back, clear open ones no longer found. Resolved ones stay as staff left them."""
    found_keys = set()
    for difference in found:
        key = _difference_key(difference)
        found_keys.add(key)
        known = _decode(Difference, txn.get(key, db=store.settlement_differences))
        if known is not None and known.state == DifferenceState.RESOLVED:
            continue
        fresh = msgspec.structs.replace(difference, found_ms=known.found_ms if known else now_ms)
        if known is not None and known.state == DifferenceState.OPEN and known == fresh:
            continue
        txn.put(key, _encoder.encode(fresh), db=store.settlement_differences)
        if known is None or known.state == DifferenceState.CLEARED:
            _log(txn, store, fresh.key, f"found {fresh.kind.name}" if known is None else f"found again {fresh.kind.name}",
                 "system", fresh.detail, now_ms, domain)
        elif known.kind != fresh.kind:
            _log(txn, store, fresh.key, f"now {fresh.kind.name} (was {known.kind.name})", "system", fresh.detail, now_ms, domain)
    cursor = txn.cursor(db=store.settlement_differences)
    prefix = _day_key(domain, channel, day)
    if cursor.set_range(prefix):
        for key, value in list(cursor.iternext()):
            if not key.startswith(prefix):
                break
            if key in found_keys:
                continue
            known = _decode(Difference, value)
            if known.state == DifferenceState.OPEN:
                txn.put(key, _encoder.encode(msgspec.structs.replace(known, state=DifferenceState.CLEARED)), db=store.settlement_differences)
                _log(txn, store, known.key, "cleared", "system", "a later reconciliation of the day no longer finds it", now_ms,
                     domain)


def last_run(store: Store, channel: int, day: int, domain: int = NETWORK) -> ReconcileRun | None:
    with store.env.begin() as txn:
        return _decode(ReconcileRun, txn.get(_day_key(domain, channel, day), db=store.settlement_runs))


def runs(store: Store, day: int | None = None, domain: int | None = None) -> list[ReconcileRun]:
    """Reconciliation runs, of one day and one domain, or (None) all."""
    with store.env.begin() as txn:
        found = [_decode(ReconcileRun, value) for value in txn.cursor(db=store.settlement_runs).iternext(keys=False)]
    return [run for run in found if (day is None or run.day == day) and (domain is None or run.domain == domain)]


# ------------------------------------------------------------------ the queue


def differences(store: Store, day: int | None = None, channel: int | None = None, state: int | None = None,
                limit: int | None = None, domain: int | None = None, seen=None) -> list[Difference]:
    """Differences in key order (domain, channel, day, item, reference),
    filtered; seen(difference): whether the caller may see it."""
    found = []
    with store.env.begin() as txn:
        for value in txn.cursor(db=store.settlement_differences).iternext(keys=False):
            difference = _decode(Difference, value)
            if seen is not None and not seen(difference):
                continue
            if (day is None or difference.day == day) and (channel is None or difference.channel == channel) and (
                state is None or difference.state == state) and (domain is None or difference.domain == domain):
                found.append(difference)
                if limit is not None and len(found) >= limit:
                    break
    return found


def difference(store: Store, key: str, seen=None) -> Difference:
    """The difference of an id; NotFound if there is none the caller sees."""
    channel, day, item, reference, domain = parse_difference_key(key)
    with store.env.begin() as txn:
        found = _decode(Difference, txn.get(_DIFFERENCE_KEY.pack(domain, channel, day, item, reference),
                                            db=store.settlement_differences))
    if found is None or (seen is not None and not seen(found)):
        raise NotFound(f"no difference {key}")
    return found


def adjustment_op(found: Difference, station_id: int = 0) -> Op:
    """The ledger operation of ADJUST: a transfer between the channel's
    clearing account and the station's receivable that makes our books
    agree with the channel's statement."""
    delta = found.delta_minor
    station = station_id or found.station_id
    if delta == 0:
        raise SettlementError(f"{found.key}: both sides moved the same money, there is nothing to adjust; accept it")
    if station == 0:
        raise SettlementError(f"{found.key}: the station is unknown; give the station the adjustment is for")
    clearing, receivable = (AccountKind.CHANNEL_CLEARING, found.channel), (AccountKind.STATION_RECEIVABLE, station)
    debit, credit = (clearing, receivable) if delta > 0 else (receivable, clearing)
    serial = int.from_bytes(hashlib.blake2b(found.key.encode(), digest_size=8).digest(), "big") or 1
    return Op(
        kind=OpKind.TRANSFER, station_id=station, terminal_id=SETTLEMENT_TERMINAL_ID, serial=serial,
        account_kind=debit[0], account_owner=debit[1], credit_kind=credit[0], credit_owner=credit[1], amount=abs(delta),
        fingerprint=hashlib.blake2b(f"adjust {found.key} {delta} {station}".encode(), digest_size=16).digest(),
    )


def resolve(store: Store, key: str, action: ResolutionAction, by: str, why: str, apply_in=None, station_id: int = 0,
            now_ms: int | None = None, writer: Writer | None = None, seen=None) -> Difference:
    """Resolve an open difference with who and why, in one write transaction.
    ADJUST needs `apply_in(txn, ops) -> [Result]` (core.ledger.Ledger.apply_in
    with the time filled in) to post the correcting transfer in that same
    transaction: the transfer and the resolution are stored together or not
    at all."""
    _check_text(by, "by")
    _check_text(why, "why")
    action = ResolutionAction(action)
    now_ms = _now_ms() if now_ms is None else now_ms
    if action == ResolutionAction.ADJUST and apply_in is None:
        raise SettlementError("ADJUST posts to the ledger: no ledger was given")
    channel, day, item, reference, domain = parse_difference_key(key)
    difference_key = _DIFFERENCE_KEY.pack(domain, channel, day, item, reference)

    def resolve_in(txn):
        found = _decode(Difference, txn.get(difference_key, db=store.settlement_differences))
        if found is None or (seen is not None and not seen(found)):
            raise NotFound(f"no difference {key}")
        if found.state != DifferenceState.OPEN:
            resolution = found.resolution
            who = f" by {resolution.by} ({resolution.action.name})" if resolution else ""
            raise SettlementError(f"{key} is {found.state.name.lower()}{who}, not open")
        resolution = Resolution(action=action, by=by, why=why, at_ms=now_ms)
        if action == ResolutionAction.ADJUST:
            op = adjustment_op(found, station_id)
            (result,) = apply_in(txn, [op])
            if result.code != ResultCode.APPROVED:
                raise SettlementError(f"{key}: the ledger declined the adjustment: {ResultCode(result.code).name}")
            signed = op.amount if op.account_kind == AccountKind.CHANNEL_CLEARING else -op.amount
            resolution = msgspec.structs.replace(resolution, adjustment_txn_id=result.txn_id, adjustment_minor=signed)
        resolved = msgspec.structs.replace(found, state=DifferenceState.RESOLVED, resolution=resolution)
        txn.put(difference_key, _encoder.encode(resolved), db=store.settlement_differences)
        what = action.name.lower() + (f" (transfer txn {resolution.adjustment_txn_id})" if resolution.adjustment_txn_id else "")
        _log(txn, store, key, what, by, why, now_ms, domain)
        return resolved

    return (writer or DirectWriter(store)).write_blocking(resolve_in)


def actions(store: Store, key: str | None = None, domain: int | None = None) -> list[Action]:
    """The queue's log, of one id and one domain, or (None) all."""
    with store.env.begin() as txn:
        found = [_decode(Action, value) for value in txn.cursor(db=store.settlement_actions).iternext(keys=False)]
    return [action for action in found if (key is None or action.key == key) and (domain is None or action.domain == domain)]
