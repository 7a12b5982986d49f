"""`python -m core.loyalty COMMAND --data DIR` (`tally loyalty`): the loyalty jobs and tools.

  expire     expire every lot due on or before --as-of (default today)
  extend     extend the lots of cards whose spend in --month qualified
  clear      the yearly clearance of the oldest year's lots (--year)
  tiers      move cards to the tier their rolling spend earns (--as-of)
  reminders  cards with points expiring within --within days
  statement  a card's points: lots and every movement
  rules      show the saved rules, or check / save a JSON file of rules
             (--domain: a headquarters' own rules; default the network's)

Every job is idempotent and resumable: run it again after a crash. The
jobs take each card by its domain's rules (core/loyalty/rules.py CardRules).
"""

import argparse
import datetime
import json
import sys
import time

import msgspec

from core import dates, tools
from core.domains import require_headquarters
from core.errors import InvalidInput, NotFound
from core.ledger import Ledger, load_kernel
from core.loyalty import jobs
from core.writes import DirectWriter, refuse_if_replicated
from core.loyalty.rules import CardRules, LoyaltyRules, RuleError, load_rules, save_rules, validate
from core.loyalty.statement import PointsStatement, points_statement
from core.records import u64_key

PROG = "python -m core.loyalty"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Exit codes: 0 done; 1 rules check found the rules invalid; "
                                     "2 refused (one line on stderr naming why).")
    tools.add_shared_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        tools.add_shared_options(sub)
        return sub

    expire = command("expire", "expire lots due on or before a date")
    expire.add_argument("--as-of", default=today, type=datetime.date.fromisoformat, help="YYYY-MM-DD, not after today")
    extend = command("extend", "extend lots for a month's qualifying spend")
    extend.add_argument("--month", required=True, help="YYYY-MM")
    clear = command("clear", "the yearly clearance")
    clear.add_argument("--year", required=True, type=int)
    tiers = command("tiers", "upgrade and downgrade tiers by rolling spend")
    tiers.add_argument("--as-of", default=today, type=datetime.date.fromisoformat, help="YYYY-MM-DD")
    reminders = command("reminders", "cards with points expiring soon")
    reminders.add_argument("--within", type=int, default=30, help="days ahead (default %(default)s)")
    reminders.add_argument("--as-of", default=today, type=datetime.date.fromisoformat, help="YYYY-MM-DD")
    statement = command("statement", "a card's points statement: open and closed lots, every movement")
    statement.add_argument("card_id", type=int)
    statement.add_argument("--utc-offset-minutes", type=int, default=0,
                           help="the network's time zone for the times shown, minutes east of UTC (as the server's)")
    rules = command("rules", "show, check or save the rules")
    rules.add_argument("action", choices=("show", "check", "save"))
    rules.add_argument("file", nargs="?", help="JSON file of LoyaltyRules (check, save)")
    rules.add_argument("--domain", type=int, default=0, metavar="HQ",
                       help="the headquarters whose rules are meant (0: the network's, default)")
    return parser


def card_exists(store, card_id: int) -> bool:
    with store.env.begin() as txn:
        return txn.get(u64_key(card_id), db=store.cards) is not None


def statement_of(store, card_id: int) -> PointsStatement:
    """A known card's statement: an unknown one is an error, never "balance 0"."""
    if not card_exists(store, card_id):
        raise NotFound(f"no card {card_id} in this data directory", "card_id")
    return points_statement(store, card_id)


# Commands that write; on a node of a replicated log they are refused (the
# leader's gRPC API takes those changes).
WRITING = ("expire", "extend", "clear", "tiers")


def run(args) -> object:
    store = tools.open_existing_store(tools.data_path(args))
    try:
        if args.command in WRITING or (args.command == "rules" and args.action == "save"):
            refuse_if_replicated(store)
        return run_command(args, store)
    finally:
        store.close()


def run_command(args, store) -> object:
    ledger = Ledger(store, load_kernel())
    rules = CardRules(store)
    today = jobs.day_of(datetime.datetime.now(datetime.timezone.utc).date())
    if args.command == "expire":
        return jobs.expire_points(ledger, jobs.day_of(args.as_of), today)
    if args.command == "extend":
        year, month = parse_month(args.month)
        return jobs.extend_lots(ledger, rules, year, month)
    if args.command == "clear":
        return jobs.clear_lots(ledger, args.year)
    if args.command == "tiers":
        return jobs.update_tiers(ledger, rules, jobs.day_of(args.as_of))
    if args.command == "reminders":
        return jobs.expiring_soon(store, jobs.day_of(args.as_of), args.within)
    if args.command == "statement":
        return statement_of(store, args.card_id)
    with store.env.begin() as txn:
        require_headquarters(txn, store, args.domain, "--domain")
    if args.action == "show":
        return msgspec.to_builtins(load_rules(store, args.domain))
    if not args.file:
        raise InvalidInput("file", f"rules {args.action}: give the JSON file of rules")
    with open(args.file, "rb") as handle:
        try:
            proposed = msgspec.json.decode(handle.read(), type=LoyaltyRules)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise RuleError(args.file, str(error)) from None
    if args.action == "check":
        validate(proposed)
        return {"valid": True}
    saved = DirectWriter(store).write_blocking(lambda txn: save_rules(txn, store, proposed, args.domain))
    return {"saved_version": saved.version}


def parse_month(text: str) -> tuple[int, int]:
    try:
        year, month = (int(part) for part in text.split("-"))
        datetime.date(year, month, 1)
    except ValueError:
        raise InvalidInput("--month", f"YYYY-MM, got {text!r}") from None
    return year, month


# ------------------------------------------------------------------ output


def print_statement(statement: PointsStatement, utc_offset_minutes: int):
    print(f"card {statement.card_id}: {statement.balance:,} points")
    print(f"open lots ({len(statement.open_lots)})" + (":" if statement.open_lots else ""))
    if statement.open_lots:
        print(f"  {'earned':<10}  {'expires':<10}  {'original':>10}  {'remaining':>10}")
    for lot in statement.open_lots:
        print(f"  {jobs.date_of(lot.earned_day)!s:<10}  {jobs.date_of(lot.expires_day)!s:<10}  "
              f"{lot.original:>10,}  {lot.remaining:>10,}")
    print(f"closed lots: {len(statement.closed_lots)}")
    zone = dates.zone_name(utc_offset_minutes)
    print(f"movements ({len(statement.lines)}{', the most recent' if statement.truncated else ''}):")
    if statement.lines:
        print(f"  {'time (' + zone + ')':<19}  {'business day':<12}  {'txn':>10}  {'movement':<16}  {'points':>10}  {'balance':>10}")
    for line in statement.lines:
        print(f"  {dates.local_time(line.created_ms, utc_offset_minutes):<19}  {jobs.date_of(line.business_day)!s:<12}  "
              f"{line.txn_id:>10}  {line.movement:<16}  {line.points:>+10,}  {line.balance_after:>10,}")


def print_reminders(found: list[dict]):
    print(f"{len(found)} lots expiring" + (":" if found else ""))
    if found:
        print(f"  {'card':<20}  {'expires':<10}  {'points':>10}")
    for item in found:
        print(f"  {item['card_id']:<20}  {item['expires']:<10}  {item['points']:>10,}")


def print_outcome(args, outcome, elapsed_s: float):
    if tools.json_wanted(args):
        print(json.dumps(msgspec.to_builtins(outcome), indent=2, default=str))
    elif args.command == "statement":
        print_statement(outcome, args.utc_offset_minutes)
    elif args.command == "reminders":
        print_reminders(outcome)
    elif args.command == "rules" and args.action == "show":
        print(json.dumps(outcome, indent=2))
    else:
        print(", ".join(f"{key.replace('_', ' ')} {value}" for key, value in outcome.items()) + f" ({elapsed_s:.1f} s)")


def main(argv=None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()

    def command(args) -> int:
        try:
            outcome = run(args)
        except RuleError as error:
            if args.command == "rules" and args.action == "check":
                print(f"{prog} rules check: {error}", file=sys.stderr)
                return tools.EXIT_FOUND
            raise
        print_outcome(args, outcome, time.perf_counter() - started)
        return tools.EXIT_OK

    return tools.run(f"{prog} {args.command}", command, args)


if __name__ == "__main__":
    sys.exit(main())
