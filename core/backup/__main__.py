"""`python -m core.backup COMMAND`: snapshot, list, restore, trim, digest.

  snapshot  an online, consistent snapshot of DIR (a running server's too)
            into a new folder of BACKUPS, with its log position
  list      the snapshots in BACKUPS
  restore   a snapshot into a new directory; with --replicate, the log
            replayed onto it up to --position, --time or its end; then
            core.audit (exit 1 if it finds a breach)
  trim      keep the newest --keep snapshots, delete the others, and with
            --replicate trim the log before the oldest snapshot kept
            (nothing a kept snapshot needs is ever trimmed)
  digest    a directory's log position and the SHA-256 of its content:
            nodes of one log at one position show the same digest
"""

import argparse
import datetime
import shutil
import sys

from core.backup import catalogue, restore as restoring, snapshot as snapshots
from core.replication.log import STREAM_DEFAULT, SUBJECT_DEFAULT, LogNames, ReplicationLog
from core.store import open_store

PROG = "python -m core.backup"


def parse_time_ms(text: str) -> int:
    """ISO 8601 (2026-12-03T09:00:00Z, or with an offset) -> ms since the epoch."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-12-03T09:00:00Z)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z or an offset such as +08:00")
    return int(moment.timestamp() * 1000)


def add_log_flags(parser, needed: bool):
    parser.add_argument("--replicate", metavar="URLS", required=needed,
                        help="NATS URLs of the replicated log (as given to the server)")
    parser.add_argument("--log-stream", default=STREAM_DEFAULT, metavar="NAME",
                        help="the log's stream (default %(default)s, as the server's --log-stream)")


def log_names(stream: str) -> LogNames:
    subject = SUBJECT_DEFAULT if stream == STREAM_DEFAULT else stream.lower().replace("_", ".")
    return LogNames(stream, subject)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    take = commands.add_parser("snapshot", help="an online, consistent snapshot of a data directory")
    take.add_argument("--data", required=True, metavar="DIR", help="the data directory (its server may run)")
    take.add_argument("--to", required=True, metavar="BACKUPS", help="folder of snapshots; a new folder is made in it")
    take.add_argument("--rate-mib-s", type=float, metavar="MIB",
                      help="write at most this many MiB/s (spares the disk the server commits to); default: as fast "
                      "as the disk goes")
    take.add_argument("--full-speed", action="store_true",
                      help="keep normal CPU and I/O priority (by default the snapshot takes the lowest, yielding to "
                      "the server it runs beside)")
    take.set_defaults(function=command_snapshot)

    listing = commands.add_parser("list", help="the snapshots of a folder, oldest first")
    listing.add_argument("backups", metavar="BACKUPS")
    listing.set_defaults(function=command_list)

    back = commands.add_parser("restore",
                               help="a snapshot into a new directory, the log replayed onto it, then the audit")
    source = back.add_mutually_exclusive_group(required=True)
    source.add_argument("--snapshot", metavar="PATH", help="the snapshot folder to restore")
    source.add_argument("--backups", metavar="BACKUPS", help="pick the newest snapshot of this folder that the target "
                        "can start from")
    back.add_argument("--to", required=True, metavar="DIR", help="the new data directory (must not exist, or be empty)")
    add_log_flags(back, needed=False)
    target = back.add_mutually_exclusive_group()
    target.add_argument("--position", type=int, metavar="N", help="replay up to log position N (inclusive)")
    target.add_argument("--time", type=parse_time_ms, metavar="ISO8601",
                        help="replay the entries the log stored at or before this time (e.g. 2026-12-03T09:00:00Z)")
    back.add_argument("--standalone", action="store_true",
                      help="make the result a standalone directory (for inspection; tools and a server without "
                      "--replicate may write it); default: it stays a node of the log and replays the rest when "
                      "started with --replicate")
    back.set_defaults(function=command_restore)

    trim = commands.add_parser("trim", help="retention: keep the newest snapshots, trim the log behind the oldest kept")
    trim.add_argument("--backups", required=True, metavar="BACKUPS")
    trim.add_argument("--keep", type=int, required=True, metavar="N", help="snapshots to keep, 1 .. 10000")
    add_log_flags(trim, needed=False)
    trim.set_defaults(function=command_trim)

    digest = commands.add_parser("digest", help="log position and content SHA-256 of a directory")
    digest.add_argument("data", metavar="DIR")
    digest.set_defaults(function=command_digest)
    return parser


def command_snapshot(args) -> int:
    if args.rate_mib_s is not None and not 0 < args.rate_mib_s <= snapshots.RATE_MIB_S_MAX:
        raise SystemExit(f"{PROG} snapshot: --rate-mib-s must be within 0 .. {snapshots.RATE_MIB_S_MAX}")
    path, manifest = snapshots.take(args.data, args.to, args.rate_mib_s, yielding=not args.full_speed)
    print(f"snapshot {path}: {manifest.bytes:,} bytes, log position {manifest.position}"
          f"{' of ' + manifest.stream if manifest.stream else ' (standalone)'}")
    return 0


def command_list(args) -> int:
    for one in catalogue.snapshots(args.backups):
        manifest = one.manifest
        taken = datetime.datetime.fromtimestamp(manifest.taken_ms / 1000, datetime.timezone.utc)
        taken = taken.isoformat(timespec="seconds")
        print(f"{one.path}  taken {taken}  position {manifest.position}  {manifest.bytes:,} bytes  "
              f"{manifest.stream or 'standalone'}")
    return 0


def command_restore(args) -> int:
    if args.snapshot:
        snapshot = catalogue.Snapshot(args.snapshot, catalogue.read_manifest(args.snapshot))
    else:
        snapshot = catalogue.choose(args.backups, args.position, args.time)
        if snapshot is None:
            raise SystemExit(f"{PROG} restore: no snapshot in {args.backups} is at or before the target")
    if (args.position is not None or args.time is not None) and not args.replicate:
        raise SystemExit(f"{PROG} restore: --position and --time replay the log: give --replicate URLS")
    target = restoring.Target(args.position, args.time)
    try:
        position, applied = restoring.restore(snapshot, args.to, args.replicate, log_names(args.log_stream), target,
                                              args.standalone)
    except restoring.RestoreError as error:
        raise SystemExit(f"{PROG} restore: {error}") from None
    print(f"restored {snapshot.path} into {args.to}: snapshot at position {snapshot.manifest.position}, "
          f"{applied} log entries replayed, now at position {position}"
          f"{' (standalone)' if args.standalone else ''}")
    from core import audit

    return audit.main([args.to])


def command_trim(args) -> int:
    if not 1 <= args.keep <= 10_000:
        raise SystemExit(f"{PROG} trim: --keep must be within 1 .. 10000")
    found = catalogue.snapshots(args.backups)
    kept, dropped = found[-args.keep:], found[:-args.keep]
    for one in dropped:
        shutil.rmtree(one.path)
        print(f"deleted {one.path}")
    if args.replicate and kept:
        keep_from = kept[0].manifest.position + 1
        log = ReplicationLog(args.replicate, log_names(args.log_stream), name="tally-trim")
        log.connect(30)
        try:
            log.trim_before(keep_from)
            state = log.state()
        finally:
            log.close()
        print(f"log trimmed before position {keep_from} (the oldest kept snapshot's next); it now holds "
              f"{state.first} .. {state.last}")
    print(f"kept {len(kept)} snapshots")
    return 0


def command_digest(args) -> int:
    from core.replication.applier import content_digest

    store = open_store(args.data, readonly=True)
    try:
        position, digest = content_digest(store)
    finally:
        store.close()
    print(f"position {position} sha256 {digest}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.function(args)


if __name__ == "__main__":
    sys.exit(main())
