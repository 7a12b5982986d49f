"""What every command-line tool shares: where the data is, --json, one-line errors.

Owns:
  - the data directory's option: --data DIR, or the TALLY_DATA environment
    variable when --data is not given; and --json (machine-readable output).
    Both are accepted before or after a subcommand (add_shared_options);
  - opening a tool's store (open_existing_store): a directory that holds no
    Tally store is refused, never created, so a mistyped --data cannot make
    an empty store that then reports "all clear";
  - the server's check of its directory before it serves
    (check_server_directory): it may create one, but a file, a read-only
    directory or a data.mdb that is not LMDB is one line naming the problem;
  - the exit codes and how a failure is said (run): 0 done; 1 the tool found
    what it looks for (audit breaches, reconciliation differences, pending
    migrations); 2 refused or failed, one line on stderr naming the problem,
    never a traceback for an operating error (a bug still shows its traceback).
Used by: core.audit, core.loyalty, core.settlement, core.admin, the server's
start (server/__main__.py) and `tally` (server/cli.py).
"""

import argparse
import errno
import os
import sys

import lmdb

from core.errors import FailedPrecondition, InvalidInput, NotFound, TallyError
from core.store import MAP_SIZE_BYTES_DEFAULT, Store, open_store

DATA_VARIABLE = "TALLY_DATA"
EXIT_OK = 0
EXIT_FOUND = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DATA_FILE = "data.mdb"
# A named database every Tally store has from its first open: a data.mdb
# without it is some other program's LMDB.
TALLY_MARKER_DATABASE = b"accounts"
# Optional packages (pyproject.toml's extras) a command may need.
EXTRAS_OF_MODULE = {"pyarrow": "settlement", "matplotlib": "settlement", "nats": "replication", "pkcs11": "hsm"}


def add_shared_options(parser: argparse.ArgumentParser, data: bool = True):
    """--data and --json on `parser`. Add them to the top parser and to
    every subcommand's: a value given on either side of the subcommand
    counts (SUPPRESS: a subcommand that was not given one leaves the
    top's alone)."""
    if data:
        parser.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS,
                            help=f"the server's data directory (default: ${DATA_VARIABLE})")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output: JSON on stdout")


def data_path(args) -> str:
    """The data directory: --data, else $TALLY_DATA."""
    path = getattr(args, "data", None) or os.environ.get(DATA_VARIABLE)
    if not path:
        raise InvalidInput("--data", f"give the data directory: --data DIR or {DATA_VARIABLE}=DIR")
    return path


def json_wanted(args) -> bool:
    return bool(getattr(args, "json", False))


def refuse_non_store(path: str):
    """Raise naming what `path` is if it is not a Tally data directory."""
    if not os.path.exists(path):
        raise NotFound(f"{path}: no such directory", "--data")
    if not os.path.isdir(path):
        raise InvalidInput("--data", f"{path} is a file, not a data directory")
    if not os.path.exists(os.path.join(path, DATA_FILE)):
        raise NotFound(f"{path} holds no Tally store (no {DATA_FILE}): check the path", "--data")
    try:
        env = lmdb.open(path, readonly=True, max_dbs=1, lock=False)
    except lmdb.Error as error:
        raise store_error(path, error) from None
    try:
        with env.begin() as txn:
            marked = txn.get(TALLY_MARKER_DATABASE) is not None
    finally:
        env.close()
    if not marked:
        raise FailedPrecondition(f"{path} holds an LMDB database that is not a Tally store", "--data")


def open_existing_store(path: str, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT, readonly: bool = False) -> Store:
    """The store of an existing data directory, for a tool; refuses (never
    creates) anything else."""
    refuse_non_store(path)
    try:
        return open_store(path, map_size_bytes, readonly=readonly)
    except lmdb.Error as error:
        raise store_error(path, error) from None


def check_server_directory(path: str, map_size_bytes: int):
    """The server's directory can be opened for writing (created if it is
    missing): called once before serving, so that a bad --data is one line."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidInput("--data", f"{path} is a file, not a data directory")
    try:
        open_store(path, map_size_bytes).close()
    except (lmdb.Error, OSError) as error:
        raise store_error(path, error) from None


def store_error(path: str, error: Exception) -> TallyError:
    """An LMDB or OS error opening `path`, said for people."""
    text = str(error)
    code = getattr(error, "errno", None)
    cause = error.strerror if isinstance(error, OSError) and error.strerror else text.split(": ")[-1]
    if isinstance(error, lmdb.InvalidError):
        return FailedPrecondition(f"{path}/{DATA_FILE} is not an LMDB file (not a Tally store)", "--data")
    if isinstance(error, (lmdb.ReadonlyError, PermissionError)) or code in (errno.EACCES, errno.EROFS, errno.EPERM) \
            or "Permission denied" in text or "Read-only file system" in text:
        return FailedPrecondition(f"{path} is not writable ({cause}): the server writes its store there",
                                  "--data")
    if isinstance(error, lmdb.VersionMismatchError):
        return FailedPrecondition(f"{path}: made by another LMDB version ({text})", "--data")
    return FailedPrecondition(f"{path}: cannot open the store: {cause}", "--data")


def say_error(prog: str, error: BaseException) -> int:
    """One line on stderr for an operating error; its exit code."""
    print(f"{prog}: {describe(error)}", file=sys.stderr)
    return EXIT_ERROR


def describe(error: BaseException) -> str:
    if isinstance(error, TallyError):
        return str(error)
    if isinstance(error, ModuleNotFoundError) and error.name in EXTRAS_OF_MODULE:
        return f"this command needs {error.name}: pip install 'tally[{EXTRAS_OF_MODULE[error.name]}]'"
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


# What a tool may raise for an operating error (its input, files, the
# store): said in one line. Anything else is a bug and keeps its traceback.
# ValueError too: some older refusals (statement parsing, key files) are
# still ValueErrors with a message for people, on their way to core.errors.
OPERATING_ERRORS = (TallyError, ValueError, OSError, lmdb.Error)


def run(prog: str, command, args) -> int:
    """command(args) -> exit code, with operating errors said in one line."""
    try:
        return command(args)
    except BrokenPipeError:
        return EXIT_ERROR  # stdout closed early (| head): nothing more to say
    except OPERATING_ERRORS as error:
        return say_error(prog, error)
    except ModuleNotFoundError as error:
        if error.name not in EXTRAS_OF_MODULE:
            raise
        return say_error(prog, error)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
