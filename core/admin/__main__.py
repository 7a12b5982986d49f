"""`python -m core.admin COMMAND`: what needs the data directory itself.

The first administrator, a new domain, registering or disabling a terminal
when no administrator is at hand, reading and checking the audit log,
publishing its head, and the master key (a file, or a key made inside a
PKCS#11 token: docs/security-keys.md). Works while the server runs (LMDB
serialises writers). Whoever can run this can
read the data directory, so it acts in every domain; its actions are in the
audit log as "cli:OS-USER".

The data directory is --data DIR or $TALLY_DATA; only create-admin may
start a new one (the first administrator of a new installation), every
other command refuses a directory that holds no Tally store. --json, before
or after the command, prints the outcome as JSON (audit prints JSON lines
either way).

Exit codes: 0 done; 1 verify-audit found breaches (each named); 2 refused
(the reason on stderr, one line).

A token's PIN comes from --pin-file (mode 600) or TALLY_PKCS11_PIN, never
from the command line.
"""

import argparse
import getpass
import json
import sys

import msgspec

from core import tools
from core.admin import Admin, audit, keys
from core.admin.access import cli_actor, now_ms
from core.admin.errors import AdminError
from core.admin.model import AuditHead, OrgKind, Role
from core.errors import FailedPrecondition as Refused
from core.errors import InvalidInput
from core.store import MAP_SIZE_BYTES_DEFAULT, open_store
from core.writes import refuse_if_replicated

PROG = "python -m core.admin"


def parse_args(argv, prog: str = PROG):
    parser = argparse.ArgumentParser(prog=prog, description="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tools.add_shared_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text, data=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        tools.add_shared_options(sub, data=data)
        return sub

    sub = command("master-key", "make a new master key: a random key file (mode 600) with --out, or an AES-256 key "
                  "inside a PKCS#11 token that never leaves it; never replaces one", data=False)
    sub.add_argument("--out", metavar="FILE", help="the key file to write")
    add_token_arguments(sub, "tally-master")

    sub = command("audit-key", "make the HMAC-SHA256 key inside a PKCS#11 token that signs published audit heads",
                  data=False)
    add_token_arguments(sub, "tally-audit")

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
    add_master_key_arguments(sub)
    sub.add_argument("--terminal-id", type=int, required=True)
    sub.add_argument("--station-id", type=int, required=True)
    sub.add_argument("--name", default="")
    sub.add_argument("--key-algorithm", choices=tuple(ALGORITHMS), default="aes",
                     help="the terminal's key suite: aes (AES-256, HMAC-SHA256) or sm4 (SM4, CMAC-SM4); default %(default)s")

    sub = command("rotate-master-key", "seal every terminal key and customer data key again under a new master key "
                  "(the server stopped; then start it with the new key and destroy the old one)")
    add_master_key_arguments(sub)
    new = sub.add_mutually_exclusive_group(required=True)
    new.add_argument("--new-master-key-file", metavar="FILE", help="the new key: a key file (made by master-key --out)")
    new.add_argument("--new-key-label", metavar="LABEL",
                     help="the new key: this key of the token of --pkcs11-module (made by master-key)")

    sub = command("disable-terminal", "refuse every request of a terminal from now on")
    sub.add_argument("--terminal-id", type=int, required=True)
    sub.add_argument("--reason", required=True)

    sub = command("verify-audit", "check the audit log's hash chain; exit 1 naming each breach")
    sub.add_argument("--expected-head", metavar="FILE",
                     help="a head written by audit-head: the chain must still hold that entry with that hash")
    add_token_arguments(sub, "tally-audit", "check the head file's MAC with this token's key")

    sub = command("audit-head", "write the audit log's head (seq, hash) to a file to keep off this host; with "
                  "--pkcs11-module, MACed by the token's audit key")
    sub.add_argument("--out", required=True, metavar="FILE")
    add_token_arguments(sub, "tally-audit", "MAC the head with this token's key (made by audit-key)")

    sub = command("audit", "print audit entries as JSON lines, oldest first")
    sub.add_argument("--after", type=int, default=0, metavar="SEQ", help="entries after this seq (default: all)")
    sub.add_argument("--limit", type=int, default=1000, help="at most this many (1 .. 10000, default %(default)s)")
    return parser.parse_args(argv)


ALGORITHMS = {"aes": keys.KeyAlgorithm.AES_HMAC_SHA256, "sm4": keys.KeyAlgorithm.SM4_CMAC}


def add_token_arguments(sub, key_label_default: str, what: str = "the key's PKCS#11 library"):
    """--pkcs11-module and the token's, key's and PIN file's labels (the
    short forms --token-label, --key-label, --pin-file say the same)."""
    sub.add_argument("--pkcs11-module", metavar="SO", help=what + " (e.g. /usr/lib/softhsm/libsofthsm2.so)")
    sub.add_argument("--pkcs11-token-label", "--token-label", dest="token_label", default="", metavar="LABEL")
    sub.add_argument("--pkcs11-key-label", "--key-label", dest="key_label", default=key_label_default, metavar="LABEL",
                     help="default %(default)s")
    sub.add_argument("--pkcs11-pin-file", "--pin-file", dest="pin_file", metavar="FILE",
                     help="its first line is the user PIN (default: the TALLY_PKCS11_PIN environment variable)")


def add_master_key_arguments(sub):
    sub.add_argument("--master-key-file", metavar="FILE", help="the master key file (or the token's key: --pkcs11-module)")
    add_token_arguments(sub, "tally-master")


def token_config_of(args):
    """The token of --pkcs11-module, or None."""
    if not args.pkcs11_module:
        return None
    from core.admin import hsm

    if not args.token_label:
        raise Refused("--pkcs11-module needs --token-label")
    return hsm.TokenConfig(args.pkcs11_module, args.token_label, args.key_label, args.pin_file)


def master_key_of(args) -> keys.MasterKey:
    token = token_config_of(args)
    if (token is None) == (args.master_key_file is None):
        raise Refused("the master key: --master-key-file FILE or --pkcs11-module (one of them)")
    if token is None:
        return keys.SoftwareMasterKey.from_file(args.master_key_file)
    return token_master_key(token)


def token_master_key(token) -> keys.MasterKey:
    from core.admin import hsm

    return hsm.Pkcs11MasterKey(token)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise Refused("the passwords differ")
    return first


def emit(args, text: str, **record):
    """The outcome: `text` for people, or `record` as JSON with --json."""
    print(json.dumps(record, ensure_ascii=False) if tools.json_wanted(args) else text)


def make_master_key(args) -> int:
    token = token_config_of(args)
    if (token is None) == (args.out is None):
        raise Refused("master-key: --out FILE, or --pkcs11-module with --token-label (one of them)")
    if token is None:
        keys.new_master_key_file(args.out)
        emit(args, f"master key written to {args.out}: keep it off the data directory's backups", master_key_file=args.out)
        return 0
    from core.admin import hsm

    hsm.create_master_key(token)
    emit(args, f"master key made inside the token: {token.describe()}, not extractable; start the server with "
         f"--pkcs11-module {token.module} --pkcs11-token-label {token.token_label} --pkcs11-key-label {token.key_label}",
         token=token.describe())
    return 0


def make_audit_key(args) -> int:
    token = token_config_of(args)
    if token is None:
        raise Refused("audit-key: --pkcs11-module and --token-label name the token")
    from core.admin import hsm

    hsm.create_audit_key(token)
    emit(args, f"audit key made inside the token: {token.describe()}, not extractable", token=token.describe())
    return 0


def rotate_master_key(args) -> int:
    """The old key: --master-key-file, else the token's --key-label; the
    new one: --new-master-key-file, else the token's --new-key-label."""
    from core.admin.rotation import rotate_master_key as rotate

    token = token_config_of(args)
    if args.master_key_file is None and token is None:
        raise Refused("rotate-master-key: the old master key: --master-key-file FILE or --pkcs11-module")
    if args.new_key_label is not None and token is None:
        raise Refused("rotate-master-key: --new-key-label names a key of the token of --pkcs11-module")
    old = (keys.SoftwareMasterKey.from_file(args.master_key_file) if args.master_key_file is not None
           else token_master_key(token))
    new = (keys.SoftwareMasterKey.from_file(args.new_master_key_file) if args.new_master_key_file is not None
           else token_master_key(msgspec.structs.replace(token, key_label=args.new_key_label)))
    store = tools.open_existing_store(tools.data_path(args), MAP_SIZE_BYTES_DEFAULT)
    try:
        rotated = rotate(store, old, new, cli_actor().name, now_ms())
    finally:
        store.close()
    emit(args, f"sealed again under {new.description}: {rotated.terminals} terminal secrets, {rotated.working_keys} working "
         f"keys, {rotated.partners} partner secrets, {rotated.customers} customers' data keys; start the server with the new key, then destroy "
         f"{old.description}", **msgspec.to_builtins(rotated))
    return 0


# Commands that open what they need themselves.
SELF_CONTAINED = {"master-key": make_master_key, "audit-key": make_audit_key, "rotate-master-key": rotate_master_key}
WITH_MASTER_KEY = frozenset(("register-terminal",))
READ_ONLY = frozenset(("verify-audit", "audit", "audit-head"))


def run(args) -> int:
    if args.command in SELF_CONTAINED:
        return SELF_CONTAINED[args.command](args)
    master_key = master_key_of(args) if args.command in WITH_MASTER_KEY else None
    path = tools.data_path(args)
    if args.command == "create-admin":
        tools.check_server_directory(path, MAP_SIZE_BYTES_DEFAULT)  # may start a new installation
        store = open_store(path, MAP_SIZE_BYTES_DEFAULT)
    else:
        store = tools.open_existing_store(path, MAP_SIZE_BYTES_DEFAULT, readonly=args.command in READ_ONLY)
    try:
        if args.command not in READ_ONLY:
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
            raise InvalidInput("--org-name", "required to create a headquarters")
        headquarters = admin.create_headquarters(actor, args.org_name, args.org_id)
    elif headquarters.kind != OrgKind.HEADQUARTERS:
        raise InvalidInput("--org-id", f"organisation {args.org_id} is a {headquarters.kind.name}, not a HEADQUARTERS")
    admin.create_user(actor, args.username, read_password(args.password_stdin), headquarters.org_id, Role.ADMINISTRATOR)
    emit(args, f"administrator {args.username} of headquarters {headquarters.org_id} ({headquarters.name})",
         username=args.username, org_id=headquarters.org_id, org_name=headquarters.name)
    return 0


def create_org(admin: Admin, args) -> int:
    kind = OrgKind.REGION if args.kind == "region" else OrgKind.STATION
    org = admin.create_organisation(cli_actor(), args.parent, kind, args.name, org_id=args.id)
    if kind == OrgKind.STATION:
        tell_kernel_station_domain(admin, org.org_id)
    emit(args, f"{org.kind.name.lower()} {org.org_id} ({org.name}) under {org.parent_id}",
         kind=org.kind.name.lower(), org_id=org.org_id, name=org.name, parent_id=org.parent_id)
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
    terminal, secret = admin.register_terminal(cli_actor(), args.terminal_id, args.station_id, args.name,
                                               ALGORITHMS[args.key_algorithm])
    emit(args, f"terminal {terminal.terminal_id} registered at station {terminal.station_id}, "
         f"key suite {terminal.key_algorithm.name}\nsecret key: {secret.hex()}\n"
         "load it into the terminal now: it is not shown again",
         terminal_id=terminal.terminal_id, station_id=terminal.station_id, key_suite=terminal.key_algorithm.name,
         secret_key=secret.hex())
    return 0


def disable_terminal(admin: Admin, args) -> int:
    admin.disable_terminal(cli_actor(), args.terminal_id, args.reason)
    emit(args, f"terminal {args.terminal_id} disabled", terminal_id=args.terminal_id, disabled=True)
    return 0


def verify_audit(admin: Admin, args) -> int:
    published = audit.read_published(args.expected_head) if args.expected_head else None
    mac_breach = check_head_mac(published, args) if published is not None else None
    result = admin.verify_audit(published.head() if published is not None else None)
    breaches = (*result.breaches, *((mac_breach,) if mac_breach else ()))
    if tools.json_wanted(args):
        print(json.dumps({"intact": not breaches, "entries": result.entries, "head_seq": result.head_seq,
                          "head_hash": result.head_hash, "breaches": [msgspec.to_builtins(b) for b in breaches],
                          "published_head": msgspec.to_builtins(published) if published is not None else None}))
        return 1 if breaches else 0
    for breach in breaches:
        print(f"entry {breach.seq}: {breach.reason}")
    if breaches:
        print(f"BROKEN: {len(breaches)} breach(es) in {result.entries} entries")
        return 1
    print(f"intact: {result.entries} entries, head {result.head_seq} {result.head_hash}")
    if published is not None:
        print(f"holds the published head: entry {published.seq} {published.hash}" + (" (MAC verified)" if published.mac else ""))
    return 0


def check_head_mac(published: audit.PublishedHead, args) -> audit.Breach | None:
    """None when the head file's MAC verifies under the token's audit key;
    a head file with a MAC is checked only with the token at hand, and one
    without is refused when a token is given (it would pass unsigned)."""
    token = token_config_of(args)
    if published.mac and token is None:
        raise Refused(f"{args.expected_head} is MACed by {published.mac_key}: give --pkcs11-module, "
                         f"--token-label and --key-label to check it")
    if token is None:
        return None
    if not published.mac:
        raise Refused(f"{args.expected_head} carries no MAC, and --pkcs11-module asks to check one")
    from core.admin import hsm

    signer = hsm.Pkcs11Signer(token)
    if signer.verify(audit.head_mac_input(published.head()), bytes.fromhex(published.mac)):
        return None
    return audit.Breach(published.seq, f"the published head's MAC does not verify under {token.describe()}: "
                                       f"the head file was altered")


def write_audit_head(admin: Admin, args) -> int:
    """The head as the chain's last entry has it, after checking the chain:
    a head of a broken chain is not published."""
    result = admin.verify_audit()
    if result.breaches:
        raise Refused(f"the chain is broken ({len(result.breaches)} breach(es); see verify-audit): "
                         f"no head published")
    head = AuditHead(result.head_seq, bytes.fromhex(result.head_hash))
    token = token_config_of(args)
    mac, mac_key = "", ""
    if token is not None:
        from core.admin import hsm

        mac, mac_key = hsm.Pkcs11Signer(token).sign(audit.head_mac_input(head)).hex(), token.describe()
    published = audit.PublishedHead(audit.HEAD_FORMAT, head.seq, head.hash.hex(), now_ms(), mac, mac_key)
    with open(args.out, "wb") as file:
        file.write(msgspec.json.format(msgspec.json.encode(published)) + b"\n")
    emit(args, f"audit head: entry {head.seq} {head.hash.hex()}" + (f", MACed by {mac_key}" if mac else "") +
         f"; written to {args.out}: keep it off this host", **msgspec.to_builtins(published), file=args.out)
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
    "audit-head": write_audit_head,
    "audit": print_audit,
}


def main(argv=None, prog: str = PROG) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)

    def run_refusing_sealed(args) -> int:
        try:
            return run(args)
        except keys.SealError as error:  # a wrong master key: said like any refusal
            raise Refused(str(error)) from None

    return tools.run(prog, run_refusing_sealed, args)


if __name__ == "__main__":
    sys.exit(main())
