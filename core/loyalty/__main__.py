"""`python -m core.loyalty COMMAND --data DIR`: the loyalty jobs and tools.

  expire     expire every lot due on or before --as-of (default today)
  extend     extend the lots of cards whose spend in --month qualified
  clear      the yearly clearance of the oldest year's lots (--year)
  tiers      move cards to the tier their rolling spend earns (--as-of)
  reminders  cards with points expiring within --within days
  statement  a card's points: lots and every movement
  rules      show the saved rules, or check / save a JSON file of rules

Every job is idempotent and resumable: run it again after a crash.
"""

import argparse
import datetime
import json
import sys
import time

import msgspec

from core.ledger import Ledger, load_kernel
from core.loyalty import jobs
from core.writes import DirectWriter, refuse_if_replicated
from core.loyalty.rules import LoyaltyRules, RuleError, load_rules, save_rules, validate
from core.loyalty.statement import points_statement
from core.store import open_store


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m core.loyalty", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, metavar="DIR", help="the server's data directory")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    expire = commands.add_parser("expire", help="expire lots due on or before a date")
    expire.add_argument("--as-of", default=today, type=datetime.date.fromisoformat, help="YYYY-MM-DD, not after today")
    extend = commands.add_parser("extend", help="extend lots for a month's qualifying spend")
    extend.add_argument("--month", required=True, help="YYYY-MM")
    clear = commands.add_parser("clear", help="the yearly clearance")
    clear.add_argument("--year", required=True, type=int)
    tiers = commands.add_parser("tiers", help="upgrade and downgrade tiers by rolling spend")
    tiers.add_argument("--as-of", default=today, type=datetime.date.fromisoformat, help="YYYY-MM-DD")
    reminders = commands.add_parser("reminders", help="cards with points expiring soon")
    reminders.add_argument("--within", type=int, default=30, help="days ahead (default %(default)s)")
    reminders.add_argument("--as-of", default=today, type=datetime.date.fromisoformat, help="YYYY-MM-DD")
    statement = commands.add_parser("statement", help="a card's points statement")
    statement.add_argument("card_id", type=int)
    rules = commands.add_parser("rules", help="show, check or save the rules")
    rules.add_argument("action", choices=("show", "check", "save"))
    rules.add_argument("file", nargs="?", help="JSON file of LoyaltyRules (check, save)")
    return parser.parse_args(argv)


# Commands that write; on a node of a replicated log they are refused (the
# leader's gRPC API takes those changes).
WRITING = ("expire", "extend", "clear", "tiers")


def run(args) -> object:
    store = open_store(args.data)
    if args.command in WRITING or (args.command == "rules" and args.action == "save"):
        refuse_if_replicated(store)
    ledger = Ledger(store, load_kernel())
    rules = load_rules(store)
    today = jobs.day_of(datetime.datetime.now(datetime.timezone.utc).date())
    if args.command == "expire":
        return jobs.expire_points(ledger, jobs.day_of(args.as_of), today)
    if args.command == "extend":
        year, month = (int(part) for part in args.month.split("-"))
        return jobs.extend_lots(ledger, rules, year, month)
    if args.command == "clear":
        return jobs.clear_lots(ledger, args.year)
    if args.command == "tiers":
        return jobs.update_tiers(ledger, rules, jobs.day_of(args.as_of))
    if args.command == "reminders":
        return jobs.expiring_soon(store, jobs.day_of(args.as_of), args.within)
    if args.command == "statement":
        return msgspec.to_builtins(points_statement(store, args.card_id))
    if args.action == "show":
        return msgspec.to_builtins(rules)
    if not args.file:
        raise SystemExit(f"python -m core.loyalty rules {args.action}: give the JSON file of rules")
    with open(args.file, "rb") as handle:
        proposed = msgspec.json.decode(handle.read(), type=LoyaltyRules)
    if args.action == "check":
        validate(proposed)
        return {"valid": True}
    saved = DirectWriter(store).write_blocking(lambda txn: save_rules(txn, store, proposed))
    return {"saved_version": saved.version}


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    try:
        outcome = run(args)
    except (RuleError, ValueError, msgspec.ValidationError) as error:
        print(f"python -m core.loyalty {args.command}: {error}", file=sys.stderr)
        return 1
    if args.json or not isinstance(outcome, dict):
        print(json.dumps(outcome, indent=2, default=str))
    else:
        print(", ".join(f"{key.replace('_', ' ')} {value}" for key, value in outcome.items()) + f" ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
