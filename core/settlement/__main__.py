"""`python -m core.settlement COMMAND`: statements, reconciliation, the error
queue, clearing, day-end, exports and reports for finance staff and batch
clients.

Every command works on a data directory (--data DIR or $TALLY_DATA, the
server's; one that holds no Tally store is refused) and may run while the
server serves: LMDB serialises writers across processes. --json (before or
after the command) prints the outcome as JSON.
Days are dates (YYYY-MM-DD) or business day numbers. Re-running any command
is safe: an import of a file already imported, or a reconciliation with
nothing new, changes nothing, so a long batch that stopped resumes by being
run again. A statement is a headquarters domain's merchant account
(--domain HQ; 0, the default: the network's, matched against the stations
of no domain): import, reconcile and the queue take --domain.

Exit codes: 0 done (reconcile: every channel clean); 1 reconcile found
differences; 2 refused or failed, one line on stderr per problem (a file
not imported, a channel with sales but no statement, a bad --data).
"""

import argparse
import json
import os
import sys
import time

import msgspec

from core.results import Channel
from core.settlement import queue
from core.settlement.model import DifferenceState, ResolutionAction
from core.settlement.money import date_of_day, format_yuan, parse_day
from core.settlement.reconcile import WINDOW_MS_DEFAULT, WINDOW_MS_MAX
from core.settlement.statements import StatementError
from core import dates, tools
from core.store import open_store

PROG = "python -m core.settlement"
EXIT_CODES = __doc__.split("\n\n")[-1].replace("\n", " ").strip()
ZONE_HELP = (f"the network's time zone, minutes east of UTC (480 for UTC+8), as the server's; default: "
             f"${dates.UTC_OFFSET_VARIABLE}, else 0")
DOMAIN_HELP = "the headquarters whose merchant account the statements are (0, default: the network's)"
CHANNEL_CHOICES = {channel.name.lower(): channel for channel in (Channel.BANK_CARD, Channel.WECHAT_PAY, Channel.ALIPAY)}


def _day(text: str) -> int:
    try:
        return parse_day(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _progress(total: int, description: str, unit: str = "rows"):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, disable=None, leave=False, file=sys.stderr)


def _open(args):
    store = tools.open_existing_store(tools.data_path(args), args.map_size_gib * 2**30)
    if getattr(args, "domain", None):
        from core.domains import require_headquarters

        with store.env.begin() as txn:
            require_headquarters(txn, store, args.domain, "--domain")
    return store


def _open_for_writing(args):
    """The store of a command that writes; a node of a replicated log is
    refused in one line (its changes go through the leader's gRPC API)."""
    from core.writes import refuse_if_replicated

    store = _open(args)
    try:
        refuse_if_replicated(store)
    except ValueError as error:
        store.close()
        raise SystemExit(f"{PROG} {args.command}: {error}") from None
    return store


def _ledger(store, kernel: str):
    from core.ledger import Ledger, load_kernel

    return Ledger(store, load_kernel(kernel))


def _channels(args) -> list[Channel]:
    return [CHANNEL_CHOICES[args.channel]] if args.channel else list(CHANNEL_CHOICES.values())


def _print_json(value):
    print(json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False))


# ------------------------------------------------------------------ commands


def command_import(args) -> int:
    store = _open_for_writing(args)
    failures = 0
    imported = []
    with _progress(len(args.files), "import", "files") as bar:
        for path in args.files:
            try:
                with open(path, "rb") as file:
                    data = file.read()
                result, record = queue.import_statement(store, CHANNEL_CHOICES[args.channel], data, os.path.basename(path), args.by,
                                                        day=args.day, utc_offset_minutes=args.utc_offset_minutes, replace=args.replace,
                                                        domain=args.domain)
            except (OSError, StatementError, queue.SettlementError) as error:
                print(f"{path}: rejected, nothing imported: {tools.describe(error)}", file=sys.stderr)
                failures += 1
            else:
                imported.append({"file": path, "result": result.name.lower(), "record": record})
                if not tools.json_wanted(args):
                    print(f"{path}: {result.name.lower().replace('_', ' ')}: {args.channel} {date_of_day(record.day)}, "
                          f"{record.rows} rows, payments {format_yuan(record.totals.payments_minor)}, "
                          f"refunds {format_yuan(record.totals.refunds_minor)}, fees {format_yuan(record.totals.fees_minor)}")
            bar.update(1)
    store.close()
    if tools.json_wanted(args):
        _print_json(imported)
    return tools.EXIT_ERROR if failures else tools.EXIT_OK


def command_reconcile(args) -> int:
    """Exit 0 if every channel is clean (a channel with neither sales nor a
    statement that day is), 1 if any has differences, 2 if any could not be
    reconciled (sales but no statement imported, or a refusal)."""
    store = _open_for_writing(args)
    outcomes = {}
    try:
        for channel in _channels(args):
            outcomes[channel.name.lower()] = reconcile_channel(store, channel, args)
    finally:
        store.close()
    if tools.json_wanted(args):
        _print_json(outcomes)
    statuses = {outcome["status"] for outcome in outcomes.values()}
    if "error" in statuses:
        return tools.EXIT_ERROR
    return tools.EXIT_FOUND if "differences" in statuses else tools.EXIT_OK


def reconcile_channel(store, channel: Channel, args) -> dict:
    """One channel's reconciliation of args.day, said on stdout (stderr for
    an error) unless --json; its outcome: status clean, differences or error."""
    from core.settlement.queue import domain_stations
    from core.settlement.reconcile import our_events

    name = f"{channel.name.lower()} {date_of_day(args.day)}"
    if queue.load_statement(store, channel, args.day, args.domain) is None:
        sales = len(our_events(store, channel, args.day, args.day, *domain_stations(store, args.domain)))
        if sales == 0:
            if not tools.json_wanted(args):
                print(f"{name}: no sales and no statement: nothing to reconcile")
            return {"status": "clean", "sales": 0, "statement": False}
        error = f"{sales} channel movements but no statement imported: import the channel's statement of the day first"
        print(f"{name}: {error}", file=sys.stderr)
        return {"status": "error", "error": error, "sales": sales, "statement": False}
    try:
        run = queue.reconcile_day(store, channel, args.day, args.window_s * 1000, args.utc_offset_minutes, domain=args.domain)
    except queue.SettlementError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return {"status": "error", "error": str(error)}
    if not tools.json_wanted(args):
        kinds = ", ".join(f"{count} {kind.lower()}" for kind, count in run.differences_by_kind.items() if count) or "none"
        print(f"{name}: {run.items_matched} matched, {run.items_waiting} waiting "
              f"for the next statement, differences: {kinds}; fees {format_yuan(run.fees_minor)}")
    return {"status": "differences" if run.differences else "clean", "run": msgspec.to_builtins(run)}


def command_queue_list(args) -> int:
    store = _open(args)
    state = None if args.all else DifferenceState.OPEN
    channel = CHANNEL_CHOICES[args.channel] if args.channel else None
    found = queue.differences(store, day=args.day, channel=channel, state=state, domain=args.domain)
    store.close()
    if tools.json_wanted(args):
        _print_json([dict(msgspec.to_builtins(item), id=item.key) for item in found])
        return 0
    for item in found:
        resolution = f"  [{item.resolution.action.name.lower()} by {item.resolution.by}: {item.resolution.why}]" if item.resolution else ""
        print(f"{item.key:<28} {item.state.name.lower():<8} {item.kind.name.lower():<15} station {item.station_id:<5} "
              f"delta {format_yuan(item.delta_minor):>10}  {item.detail}{resolution}")
    print(f"{len(found)} {'differences' if args.all else 'open differences'}")
    return 0


def _kernel_in_transaction(store, args):
    """apply_in(txn, ops) for ADJUST: the kernel inside resolve's transaction."""
    from core.ledger import business_day

    ledger = _ledger(store, args.kernel)
    now_ms = time.time_ns() // 1_000_000
    return lambda txn, ops: ledger.apply_in(txn, ops, now_ms, business_day(now_ms, args.utc_offset_minutes))


def command_queue_resolve(args) -> int:
    store = _open_for_writing(args)
    action = ResolutionAction[args.action.upper()]
    apply_in = _kernel_in_transaction(store, args) if action == ResolutionAction.ADJUST else None
    try:
        resolved = queue.resolve(store, args.id, action, args.by, args.why, apply_in=apply_in, station_id=args.station)
    finally:
        store.close()
    if tools.json_wanted(args):
        _print_json(dict(msgspec.to_builtins(resolved), id=resolved.key))
        return 0
    extra = f", transfer txn {resolved.resolution.adjustment_txn_id}" if resolved.resolution.adjustment_txn_id else ""
    print(f"{resolved.key}: resolved ({action.name.lower()} by {args.by}{extra})")
    return 0


def command_queue_log(args) -> int:
    store = _open(args)
    try:
        logged = queue.actions(store, args.id, args.domain)
    finally:
        store.close()
    if tools.json_wanted(args):
        _print_json(logged)
        return 0
    offset = dates.network_offset(args.utc_offset_minutes)
    for action in logged:
        at = dates.local_time(action.at_ms, offset)
        print(f"{action.seq:>6} {at} {dates.zone_name(offset)} {action.key:<28} {action.what} -- {action.by}: {action.why}")
    return 0


def command_clear(args) -> int:
    from core.settlement.clearing import clear_day
    from core.settlement.report import write_takings_csv

    store = _open(args)
    clearing = clear_day(store, args.day)
    store.close()
    if args.csv:
        write_takings_csv(clearing, args.csv)
    if tools.json_wanted(args):
        _print_json(clearing)
        return 0
    print(f"clearing of {date_of_day(args.day)}: + the station is owed, - it owes")
    for line in clearing.lines:
        print(f"  station {line.station_id:<6} {line.method:<22} {format_yuan(line.net_minor):>16}   {line.funded_by}")
    for station, net in sorted(clearing.net_by_station().items()):
        print(f"  station {station:<6} {'all methods':<22} {format_yuan(net):>16}")
    print(f"  {'all stations':<29} {format_yuan(clearing.net_minor):>16}")
    if clearing.discounts:
        print("promotions' discounts (not journal movements: owed to the station by the funder)")
    for line in clearing.discounts:
        print(f"  station {line.station_id:<6} promotion {line.promotion_id:<12} {format_yuan(line.discount_minor):>16}   "
              f"{line.sales} sales, funded by {line.funded_by} {line.funder_id or ''}".rstrip())
    return 0


def _print_totals(name: str, totals) -> None:
    sales = totals.sales
    channels = "".join(f", {channel.lower()} {format_yuan(amount)}" for channel, amount in sorted(sales.channels.items()))
    print(f"  {name:<16} {totals.sales_count:>5} sales {format_yuan(sales.total):>14} (fleet {format_yuan(sales.fleet)}, "
          f"personal {format_yuan(sales.personal)}, points {format_yuan(sales.points_cash)}{channels}); "
          f"{totals.refunds_count} refunds {format_yuan(totals.refunds.total)}, {totals.voided_count} voided "
          f"{format_yuan(totals.voided_minor)}, {totals.reversed_count} reversed {format_yuan(totals.reversed_minor)}, "
          f"{totals.topups_count} top-ups {format_yuan(totals.topups_minor)}")


def command_close_day(args) -> int:
    """DAY_END straight through the ledger, like `queue resolve --action
    adjust`: LMDB lets one writer in at a time across processes, so this
    works whether the server runs or not (the server's DayEnd RPC does the
    same through its group commit). Safe to repeat: days only move forward."""
    from core.ledger import business_day
    from core.settlement.shifts import day_end_op, day_totals

    now_ms = time.time_ns() // 1_000_000
    today = business_day(now_ms, args.utc_offset_minutes)
    if not 1 <= args.day <= today or not 1 <= args.station <= 2**32 - 1:
        print(f"{PROG} close-day: --day must be within 1 .. today ({date_of_day(today)}), --station within 1 .. 2^32-1",
              file=sys.stderr)
        return 2
    store = _open_for_writing(args)
    try:
        result = _ledger(store, args.kernel).apply([day_end_op(args.station, args.day)], now_ms, today)[0]
        totals = day_totals(store, args.station, args.day)
    finally:
        store.close()
    if tools.json_wanted(args):
        _print_json({"closed_through_day": result.amount, "by": args.by, "totals": totals})
        return 0
    print(f"station {args.station} {date_of_day(args.day)}: closed by {args.by} (closed through {date_of_day(result.amount)}); "
          "voids of the day are refused from now on, refunds still work")
    _print_totals("station", totals.station)
    for terminal_id, part in sorted(totals.by_terminal.items()):
        _print_totals(f"terminal {terminal_id}", part)
    for operator_id, part in sorted(totals.by_operator.items()):
        _print_totals(f"operator {operator_id}", part)
    return 0


def command_export(args) -> int:
    from core.settlement.export import export_day

    if args.benchmark:
        from core.settlement.benchmark import run_export_benchmark

        report = run_export_benchmark(args.rows)
        print(json.dumps(report, indent=2))
        return 0
    if args.day is None or not (args.csv or args.parquet):
        print(f"{PROG} export: give --day and at least one of --csv FILE, --parquet FILE (or --benchmark)", file=sys.stderr)
        return 2
    store = _open(args)
    started = time.perf_counter()
    with store.env.begin() as txn:
        total = txn.stat(store.journal)["entries"]
    with _progress(total, "journal") as bar:
        rows = export_day(store, args.day, args.csv, args.parquet, progress=bar.update,
                          utc_offset_minutes=dates.network_offset(args.utc_offset_minutes))
    store.close()
    elapsed = time.perf_counter() - started
    if tools.json_wanted(args):
        _print_json({"rows": rows, "day": args.day, "csv": args.csv, "parquet": args.parquet, "seconds": elapsed})
        return 0
    print(f"exported {rows} journal rows of {date_of_day(args.day)} in {elapsed:.2f} s")
    return 0


def command_report(args) -> int:
    from core.settlement.clearing import clear_day
    from core.settlement.report import write_day_report

    store = _open(args)
    paths = write_day_report(store, clear_day(store, args.day), args.out)
    store.close()
    if tools.json_wanted(args):
        _print_json({"files": paths})
        return 0
    for path in paths:
        print(path)
    return 0


def generate_refusal(days: int, sales: int) -> str | None:
    """Why `generate` cannot make days x sales (None: it can): the channels
    remember GENERATED_PAYMENTS_MAX payments each, and every day's statement
    is written from that memory at the end."""
    from core.settlement.simulate import GENERATED_DAYS_MAX, GENERATED_SALES_MAX

    if not 1 <= days <= GENERATED_DAYS_MAX:
        return f"--days must be within 1 .. {GENERATED_DAYS_MAX}, got {days}"
    if not 1 <= sales <= GENERATED_SALES_MAX:
        return f"--sales must be within 1 .. {GENERATED_SALES_MAX}, got {sales}"
    if days * sales > GENERATED_SALES_MAX:
        return f"--days x --sales must be at most {GENERATED_SALES_MAX} sales in all, got {days} x {sales} = {days * sales}"
    return None


def command_generate(args) -> int:
    """Demo data: generated days through the kernel, and each channel's
    statements in its real format, with one of each fault on the last day."""
    from core.settlement.simulate import CHANNELS, Network

    refusal = generate_refusal(args.days, args.sales)
    if refusal is not None:
        print(f"{PROG} generate: {refusal}", file=sys.stderr)
        return 2
    # The one command that may make a new data directory: it writes demo data.
    store = open_store(tools.data_path(args), args.map_size_gib * 2**30)
    network = Network(_ledger(store, args.kernel), seed=args.seed)
    first = args.day - args.days + 1
    for day in range(first, args.day + 1):
        network.run_day(day, sales=args.sales)
    if args.faults:
        network.fault_paid_after_timeout(1, Channel.WECHAT_PAY)
        network.fault_void_lost(2, Channel.ALIPAY)
        network.fault_net_of_fee(3, Channel.BANK_CARD)
        network.fault_missing_on_statement(1, Channel.ALIPAY)
    os.makedirs(args.statements, exist_ok=True)
    names = {Channel.BANK_CARD: "bank_card-{date}.txt", Channel.WECHAT_PAY: "wechat_pay-{date}.csv", Channel.ALIPAY: "alipay-{date}.csv"}
    for day in range(first, args.day + 1):
        for channel in CHANNELS:
            path = os.path.join(args.statements, names[channel].format(date=date_of_day(day)))
            with open(path, "wb") as file:
                file.write(network.statement_file(channel, day))
            print(path)
    for expected in network.expected:
        print(f"injected: {expected.fault}: expect {expected.kind.name.lower()} for {expected.item.name.lower()} {expected.reference}")
    network.close()
    store.close()
    return 0


# ------------------------------------------------------------------ arguments


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Tally settlement: channel statements, reconciliation, the error queue, clearing, "
        "exports and reports. Each command has --help.",
        epilog=EXIT_CODES,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tools.add_shared_options(parser)

    def command(name, function, help_text, data=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if data:
            data_options(sub)
        sub.set_defaults(function=function)
        return sub

    def data_options(sub):
        tools.add_shared_options(sub)
        sub.add_argument("--map-size-gib", type=int, default=64, help="LMDB map size, GiB (as the server's)")

    sub = command("import", command_import, "import channel statement files (each whole or not at all; idempotent by file hash)")
    sub.add_argument("--channel", required=True, choices=CHANNEL_CHOICES)
    sub.add_argument("files", nargs="+", metavar="FILE")
    sub.add_argument("--day", type=_day, help="the statement's day, if the file does not say (WeChat bills)")
    sub.add_argument("--by", default=os.environ.get("USER", "settlement"), help="who imports (logged)")
    sub.add_argument("--replace", action="store_true", help="replace a different file imported for the same channel and day")
    sub.add_argument("--utc-offset-minutes", type=int, help="the statement's time zone (default: the channel's, 480 = UTC+8)")
    sub.add_argument("--domain", type=int, default=0, metavar="HQ", help=DOMAIN_HELP)

    sub = command("reconcile", command_reconcile, "match the day's statements against the journal; differences go to the queue")
    sub.epilog = EXIT_CODES
    sub.add_argument("--day", type=_day, required=True)
    sub.add_argument("--channel", choices=CHANNEL_CHOICES, help="one channel (default: each)")
    sub.add_argument("--window-s", type=int, default=WINDOW_MS_DEFAULT // 1000,
                     help="rows across midnight this close (seconds) are matched, not reported (default %(default)s)")
    sub.add_argument("--utc-offset-minutes", type=int, help="the statements' time zone (default: the channel's)")
    sub.add_argument("--domain", type=int, default=0, metavar="HQ", help=DOMAIN_HELP)

    sub = command("queue", None, "the error queue: list, resolve, log", data=False)
    queue_commands = sub.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = queue_commands.add_parser("list", help="differences still open (--all: every state)")
    listing.add_argument("--day", type=_day)
    listing.add_argument("--channel", choices=CHANNEL_CHOICES)
    listing.add_argument("--all", action="store_true", help="also resolved and cleared ones")
    listing.add_argument("--domain", type=int, metavar="HQ", help="only this domain's (0: the network's; default: every one)")
    listing.set_defaults(function=command_queue_list)
    resolving = queue_commands.add_parser("resolve", help="resolve one difference, with who and why")
    resolving.add_argument("id", help="the difference's id, as listed ([DOMAIN-]CHANNEL-DAY-ITEM-REFERENCE)")
    resolving.add_argument("--action", required=True, choices=[action.name.lower() for action in ResolutionAction],
                           help="accept: as is; adjust: post a correcting transfer; reverse: reversed at its source")
    resolving.add_argument("--by", required=True, help="who resolves")
    resolving.add_argument("--why", required=True, help="why")
    resolving.add_argument("--station", type=int, default=0, help="adjust: the station, when the difference does not know it")
    resolving.add_argument("--kernel", choices=("auto", "cython", "reference"), default="auto")
    resolving.add_argument("--utc-offset-minutes", type=int, default=0, help="the ledger's business day boundary")
    resolving.set_defaults(function=command_queue_resolve)
    log = queue_commands.add_parser("log", help="every action on the queue, oldest first")
    log.add_argument("id", nargs="?", help="only this difference")
    log.add_argument("--domain", type=int, metavar="HQ", help="only this domain's (0: the network's; default: every one)")
    log.add_argument("--utc-offset-minutes", type=int, help=ZONE_HELP)
    log.set_defaults(function=command_queue_log)
    tools.add_shared_options(sub)
    for child in (listing, resolving, log):
        data_options(child)

    sub = command("clear", command_clear, "what each station is owed or owes for the day, per payment method")
    sub.add_argument("--day", type=_day, required=True)
    sub.add_argument("--csv", metavar="FILE", help="also write the lines as CSV")

    sub = command("close-day", command_close_day, "close a station's business day (voids of it are refused from then on; "
                  "refunds work) and print its totals by method, terminal and operator")
    sub.add_argument("--station", type=int, required=True)
    sub.add_argument("--day", type=_day, required=True, help="the business day to close (and every day before it)")
    sub.add_argument("--by", default=os.environ.get("USER", "settlement"), help="who closes the day (printed)")
    sub.add_argument("--kernel", choices=("auto", "cython", "reference"), default="auto")
    sub.add_argument("--utc-offset-minutes", type=int, default=0, help="the ledger's business day boundary (as the server's)")

    sub = command("export", command_export, "a day's journal as CSV and/or Parquet; --benchmark measures 1,000,000 rows")
    sub.add_argument("--day", type=_day)
    sub.add_argument("--csv", metavar="FILE")
    sub.add_argument("--parquet", metavar="FILE")
    sub.add_argument("--utc-offset-minutes", type=int, help=ZONE_HELP)
    sub.add_argument("--benchmark", action="store_true", help="build a journal of --rows rows in a temporary directory and time both exports")
    sub.add_argument("--rows", type=int, default=1_000_000, help="benchmark: journal rows of the day (default %(default)s)")

    sub = command("report", command_report, "CSV reports and PNG charts of a day: takings by method and station, differences by kind")
    sub.add_argument("--day", type=_day, required=True)
    sub.add_argument("--out", required=True, metavar="DIR")

    sub = command("generate", command_generate, "demo: generated days through the kernel and simulators, and their statements")
    sub.add_argument("--day", type=_day, required=True, help="the last day generated")
    sub.add_argument("--days", type=int, default=2, help="days generated, ending with --day, 1 .. 366 (default %(default)s)")
    sub.add_argument("--sales", type=int, default=60, help="sales a day; at most 25,000 over all the days (default %(default)s)")
    sub.add_argument("--faults", action="store_true", help="inject one of each statement fault on the last day")
    sub.add_argument("--statements", required=True, metavar="DIR", help="where the statement files go")
    sub.add_argument("--seed", type=int, default=1)
    sub.add_argument("--kernel", choices=("auto", "cython", "reference"), default="auto")
    return parser


def main(argv=None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    if getattr(args, "window_s", 0) is not None and not 0 <= getattr(args, "window_s", 0) * 1000 <= WINDOW_MS_MAX:
        print(f"{prog}: --window-s must be within 0 .. {WINDOW_MS_MAX // 1000}", file=sys.stderr)
        return 2
    return tools.run(f"{prog} {args.command}", args.function, args)


if __name__ == "__main__":
    sys.exit(main())
