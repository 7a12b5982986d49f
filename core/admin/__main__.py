"""`python -m core.admin COMMAND`: what needs the data directory itself.

The first administrator, a new domain, registering or disabling a terminal
when no administrator is at hand, reading and checking the audit log. Works
while the server runs (LMDB serialises writers). Whoever can run this can
read the data directory, so it acts in every domain; its actions are in the
audit log as "cli:OS-USER".

Exit codes: 0 done; 1 verify-audit found breaches (each named); 2 refused
(the reason on stderr).
"""

import argparse
import getpass
import json
import sys

import msgspec

from core.admin import Admin, keys
from core.admin.access import cli_actor
from core.admin.errors import AdminError
from core.admin.model import OrgKind, Role
from core.store import MAP_SIZE_BYTES_DEFAULT, open_store
from core.writes import refuse_if_replicated

PROG = "python -m core.admin"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text, data=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if data:
            sub.add_argument("--data", required=True, metavar="DIR", help="the server's data directory")
        return sub

    sub = command("master-key", "write a new random master key file (mode 600); never overwrites one", data=False)
    sub.add_argument("--out", required=True, metavar="FILE")

    sub = command("create-admin", "create a headquarters (a new domain) unless --org-id names one, and an administrator in it")
    sub.add_argument("--org-name", metavar="NAME", help="name of the new headquarters")
    sub.add_argument("--org-id", type=int, default=0, metavar="ID",
                     help="the headquarters' id: an existing one, or the id to give the new one (default: next free)")
    sub.add_argument("--username", required=True)
    sub.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin "
                     "(default: prompt twice)")

    sub = command("create-org", "create a region or station under an organisation")
    sub.add_argument("--parent", type=int, required=True, metavar="ID")
    sub.add_argument("--kind", choices=("region", "station"), required=True)
    sub.add_argument("--id", type=int, default=0, metavar="ID", help="for a station: the station id its terminals send")
    sub.add_argument("--name", required=True)

    sub = command("register-terminal", "register a terminal at a station and print its secret key, once")
    sub.add_argument("--master-key-file", required=True, metavar="FILE")
    sub.add_argument("--terminal-id", type=int, required=True)
    sub.add_argument("--station-id", type=int, required=True)
    sub.add_argument("--name", default="")

    sub = command("disable-terminal", "refuse every request of a terminal from now on")
    sub.add_argument("--terminal-id", type=int, required=True)
    sub.add_argument("--reason", required=True)

    command("verify-audit", "check the audit log's hash chain; exit 1 naming each breach")

    sub = command("audit", "print audit entries as JSON lines, oldest first")
    sub.add_argument("--after", type=int, default=0, metavar="SEQ", help="entries after this seq (default: all)")
    sub.add_argument("--limit", type=int, default=1000, help="at most this many (1 .. 10000, default %(default)s)")
    return parser.parse_args(argv)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit(f"{PROG}: the passwords differ")
    return first


def run(args) -> int:
    if args.command == "master-key":
        keys.new_master_key_file(args.out)
        print(f"master key written to {args.out}: keep it off the data directory's backups")
        return 0
    readonly = args.command in ("verify-audit", "audit")
    master_key = keys.load_master_key(args.master_key_file) if getattr(args, "master_key_file", None) else None
    store = open_store(args.data, MAP_SIZE_BYTES_DEFAULT, readonly=readonly)
    try:
        if not readonly:
            refuse_if_replicated(store)  # its changes go through the leader's AdminService
        return COMMANDS[args.command](Admin(store, master_key), args)
    finally:
        store.close()


def create_admin(admin: Admin, args) -> int:
    actor = cli_actor()
    try:
        headquarters = admin.get_organisation(actor, args.org_id) if args.org_id else None
    except AdminError:
        headquarters = None
    if headquarters is None:
        if not args.org_name:
            raise SystemExit(f"{PROG}: --org-name is required to create a headquarters")
        headquarters = admin.create_headquarters(actor, args.org_name, args.org_id)
    elif headquarters.kind != OrgKind.HEADQUARTERS:
        raise SystemExit(f"{PROG}: organisation {args.org_id} is a {headquarters.kind.name}, not a HEADQUARTERS")
    admin.create_user(actor, args.username, read_password(args.password_stdin), headquarters.org_id, Role.ADMINISTRATOR)
    print(f"administrator {args.username} of headquarters {headquarters.org_id} ({headquarters.name})")
    return 0


def create_org(admin: Admin, args) -> int:
    kind = OrgKind.REGION if args.kind == "region" else OrgKind.STATION
    org = admin.create_organisation(cli_actor(), args.parent, kind, args.name, org_id=args.id)
    if kind == OrgKind.STATION:
        tell_kernel_station_domain(admin, org.org_id)
    print(f"{org.kind.name.lower()} {org.org_id} ({org.name}) under {org.parent_id}")
    return 0


def tell_kernel_station_domain(admin: Admin, station_id: int):
    """The kernel learns the new station's domain now, in its own write
    transaction (LMDB serialises it with a running server's)."""
    from core.admin.access import now_ms
    from core.admin.directory import station_domain_op
    from core.ledger import Ledger, business_day, load_kernel

    now = now_ms()
    Ledger(admin.store, load_kernel()).apply([station_domain_op(station_id, admin.domain_of(station_id))], now, business_day(now))


def register_terminal(admin: Admin, args) -> int:
    terminal, secret = admin.register_terminal(cli_actor(), args.terminal_id, args.station_id, args.name)
    print(f"terminal {terminal.terminal_id} registered at station {terminal.station_id}")
    print(f"secret key: {secret.hex()}")
    print("load it into the terminal now: it is not shown again")
    return 0


def disable_terminal(admin: Admin, args) -> int:
    admin.disable_terminal(cli_actor(), args.terminal_id, args.reason)
    print(f"terminal {args.terminal_id} disabled")
    return 0


def verify_audit(admin: Admin, args) -> int:
    result = admin.verify_audit()
    for breach in result.breaches:
        print(f"entry {breach.seq}: {breach.reason}")
    if result.breaches:
        print(f"BROKEN: {len(result.breaches)} breach(es) in {result.entries} entries")
        return 1
    print(f"intact: {result.entries} entries, head {result.head_seq} {result.head_hash}")
    return 0


def print_audit(admin: Admin, args) -> int:
    entries, truncated = admin.read_audit(cli_actor(), args.after, args.limit)
    for entry in entries:
        row = msgspec.to_builtins(entry)
        row["prev_hash"], row["hash"] = entry.prev_hash.hex(), entry.hash.hex()
        print(json.dumps(row, ensure_ascii=False))
    if truncated:
        print(f"(more after {entries[-1].seq}: --after {entries[-1].seq})", file=sys.stderr)
    return 0


COMMANDS = {
    "create-admin": create_admin,
    "create-org": create_org,
    "register-terminal": register_terminal,
    "disable-terminal": disable_terminal,
    "verify-audit": verify_audit,
    "audit": print_audit,
}


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (AdminError, ValueError, FileExistsError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
