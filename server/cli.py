"""`tally`: one command for every Tally tool (the console script of the package).

usage: tally [--data DIR] [--json] [--config FILE] COMMAND [ARGS ...]

  serve       run a server                           (python -m server)
  console     the web console beside a server        (python -m server.console)
  audit       check the books                        (python -m core.audit)
  loyalty     loyalty jobs, statements, rules        (python -m core.loyalty)
  settlement  statements, reconciliation, the queue, clearing, exports
                                                     (python -m core.settlement)
  admin       administrators, organisations, terminals, the audit log
                                                     (python -m core.admin)
  backup      snapshots and restores                 (python -m core.backup)
  migrate     bring a data directory to this code's data format
                                                     (python -m core.migrations)
  bench       benchmarks                             (python -m bench)

Every command has --help. The data directory is --data DIR or $TALLY_DATA,
and --json asks for JSON on stdout, before or after COMMAND alike. bench is
the exception: a benchmark never takes its directory from $TALLY_DATA (it
would write millions of transactions into it), and its --json names the
report file. The server also reads a TOML config file (--config FILE or
$TALLY_CONFIG) and TALLY_* variables: `tally serve --help`.

Exit codes, on every command: 0 done; 1 the command found what it checks
for (audit breaches, reconciliation differences, pending migrations); 2
refused or failed, with one line on stderr naming the problem.

Why here: `tally serve` runs the server, and core never imports the server,
so the one command that reaches both lives on the server's side. Each tool
keeps its `python -m` form; this only routes to it.
"""

import importlib
import importlib.util
import runpy
import sys

from core import tools
from core.errors import FailedPrecondition, InvalidInput, TallyError

# name -> the module that runs it. Tally's own tools take main(argv, prog)
# and share core/tools.py's --data and --json; PASSED_THROUGH ones are run
# as `python -m MODULE ARGS` would run them.
COMMANDS = {
    "serve": "server.__main__",
    "console": "server.console.__main__",
    "audit": "core.audit",
    "loyalty": "core.loyalty.__main__",
    "settlement": "core.settlement.__main__",
    "admin": "core.admin.__main__",
    "backup": "core.backup",
    "migrate": "core.migrations",
    "bench": "bench.__main__",
}
PASSED_THROUGH = ("bench", "migrate", "backup")
# Commands whose module another part of the team writes: said in one line
# when this build does not have it yet.
OPTIONAL = {"backup": "issue 17's backups", "migrate": "the data-format versions"}
GLOBAL_WITH_VALUE = ("--data", "--config")
GLOBAL_FLAGS = ("--json",)


def usage() -> str:
    return __doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2]


def split_globals(argv: list[str]) -> tuple[list[str], list[str]]:
    """The options before COMMAND, and the rest (COMMAND first)."""
    options = []
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        word = argv[index]
        name = word.split("=", 1)[0]
        if name in GLOBAL_WITH_VALUE and "=" not in word:
            if index + 1 >= len(argv):
                raise InvalidInput(name, "needs a value")
            options += [word, argv[index + 1]]
            index += 2
            continue
        if name not in GLOBAL_WITH_VALUE + GLOBAL_FLAGS:
            break
        options.append(word)
        index += 1
    return options, argv[index:]


def forward(command: str, options: list[str], rest: list[str]) -> list[str]:
    """The arguments the command's own main gets."""
    if command == "bench":
        if options:
            raise InvalidInput(options[0].split("=")[0], "bench takes its options after the benchmark's name "
                                     "(--data DIR, --json FILE: see tally bench COMMAND --help)")
        return rest
    if any(option.startswith("--config") for option in options) and command != "serve":
        raise InvalidInput("--config", "the config file is the server's: tally serve --config FILE")
    if command == "migrate":
        return migrate_arguments(options + rest)
    return options + rest


def migrate_arguments(argv: list[str]) -> list[str]:
    """core.migrations takes the directory as its first argument: --data
    or $TALLY_DATA become it."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    tools.add_shared_options(parser)
    known, rest = parser.parse_known_args(argv)
    if tools.json_wanted(known):
        raise InvalidInput("--json", "tally migrate prints one line; it has no JSON output")
    if "-h" in rest or "--help" in rest:
        return rest
    return [tools.data_path(known), *rest]


def run(command: str, argv: list[str]) -> int:
    prog = f"tally {command}"
    if command not in PASSED_THROUGH:
        return importlib.import_module(COMMANDS[command]).main(argv, prog=prog)
    if importlib.util.find_spec(COMMANDS[command]) is None:
        return tools.say_error(prog, FailedPrecondition(f"{COMMANDS[command]} is not part of this build ({OPTIONAL[command]})"))
    # As `python -m MODULE` runs it: its exit code is its SystemExit.
    saved, sys.argv = sys.argv, [prog, *argv]
    try:
        runpy.run_module(COMMANDS[command], run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        options, rest = split_globals(argv)
        if not rest or rest[0] in ("-h", "--help", "help"):
            print(usage())
            return 0 if rest else tools.EXIT_ERROR
        if rest[0] == "--version":
            print(f"tally {version()}")
            return 0
        command = rest[0]
        if command not in COMMANDS:
            raise InvalidInput("COMMAND", f"no command {command!r}: one of {', '.join(COMMANDS)}")
    except TallyError as error:
        return tools.say_error("tally", error)
    try:
        arguments = forward(command, options, rest[1:])
    except TallyError as error:
        return tools.say_error(f"tally {command}", error)
    return run(command, arguments) or 0


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tally")
    except PackageNotFoundError:
        return "(a checkout, not installed)"


if __name__ == "__main__":
    sys.exit(main())
