"""The server's configuration: defaults < a TOML file < TALLY_* variables < flags.

Owns: the names, the merge and --print-config. The table is the server's
own argument parser (server/__main__.py build_parser): every long flag is
  - a config file key: the flag without its dashes (`map-size-gib = 64`);
  - an environment variable: TALLY_ and the flag in capitals, dashes as
    underscores (TALLY_MAP_SIZE_GIB=64),
so a flag added to the parser joins the file and the environment by itself.
Values are checked with the flag's own type and choices; a yes/no flag takes
true/false in the file, 1/0 (true/false, yes/no, on/off) in a variable, and
gains a --no-FLAG form so that a flag can undo what a file or a variable set.
An option of several values (--channel-latency-ms MIN MAX) is a TOML array
or a variable of space-separated values. The file is --config FILE, else
$TALLY_CONFIG; an unknown key, an unknown TALLY_ variable (other than the
few read elsewhere: OTHER_VARIABLES) or a value of the wrong type is an
error naming it. The defaults are ServerSettings' (server/settings.py).
Used by: server/__main__.py (`python -m server`, `tally serve`).
"""

import argparse
import difflib
import json
import os
import shlex
import tomllib

from core.errors import InvalidInput

PREFIX = "TALLY_"
CONFIG_VARIABLE = "TALLY_CONFIG"
# Options of one invocation, not settings: never read from a file or a variable.
NOT_SETTINGS = ("help", "config", "print_config", "json")
# TALLY_ variables that are not server settings, and who reads them.
OTHER_VARIABLES = {
    "TALLY_CONFIG": "the server's config file (--config)",
    "TALLY_ADDRESS": "clients and the docs' examples: the server's address",
    "TALLY_SECURE_ADDRESS": "the docs' examples: a server with --terminal-auth",
    "TALLY_STATE_DIR": "the client SDK's examples: where a terminal keeps its serials and reversals",
    "TALLY_TERMINAL_SECRET": "the client SDK's examples: a terminal's secret key",
    "TALLY_PKCS11_PIN": "the HSM's user PIN (server and core.admin; never a flag)",
    "TALLY_HYPOTHESIS": "the test suite: the property tests' profile",
    "TALLY_FUZZ_EXAMPLES": "the test suite: how many requests the RPC fuzz test sends",
    "TALLY_FUZZ_SEED": "the test suite: the RPC fuzz test's seed",
}
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
SOURCES = ("default", "file", "environment", "flag")


def key_of(action: argparse.Action) -> str:
    return next(flag for flag in action.option_strings if flag.startswith("--"))[2:]


def variable_of(key: str) -> str:
    return PREFIX + key.upper().replace("-", "_")


def is_switch(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction))


def settings_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """config key -> the parser's action, for every setting the parser has."""
    return {key_of(action): action for action in parser._actions
            if any(flag.startswith("--") for flag in action.option_strings) and action.dest not in NOT_SETTINGS
            and not getattr(action, "negation", False)}


def add_negations(parser: argparse.ArgumentParser):
    """--no-FLAG for every yes/no flag that has none: a flag beats a file."""
    known = {flag for action in parser._actions for flag in action.option_strings}
    for action in list(parser._actions):
        if isinstance(action, argparse._StoreTrueAction) and action.dest not in NOT_SETTINGS:
            negation = "--no-" + key_of(action)
            if negation not in known:
                parser.add_argument(negation, dest=action.dest, action="store_false", help=argparse.SUPPRESS).negation = True


def _unknown(kind: str, name: str, known) -> InvalidInput:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return InvalidInput(name, f"unknown {kind}{hint}")


def _convert(action: argparse.Action, name: str, strings: list[str]):
    """strings through the action's type and choices, as argparse would."""
    convert = action.type or str
    values = []
    for text in strings:
        try:
            value = convert(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise InvalidInput(name, f"expected {getattr(convert, '__name__', 'a value')}, got {text!r}") from None
        if action.choices is not None and value not in action.choices:
            raise InvalidInput(name, f"must be one of {', '.join(map(str, action.choices))}, got {text!r}")
        values.append(value)
    if action.nargs is None:
        if len(values) != 1:
            raise InvalidInput(name, f"expected one value, got {len(values)}")
        return values[0]
    if isinstance(action.nargs, int) and len(values) != action.nargs:
        raise InvalidInput(name, f"expected {action.nargs} values, got {len(values)}")
    if action.nargs == "+" and not values:
        raise InvalidInput(name, "expected at least one value")
    return values


def file_value(action: argparse.Action, key: str, raw):
    """A TOML value, typed as the flag's."""
    if is_switch(action):
        if not isinstance(raw, bool):
            raise InvalidInput(key, f"expected true or false, got {raw!r}")
        return raw if not isinstance(action, argparse._StoreFalseAction) else not raw
    items = raw if isinstance(raw, list) else [raw]
    if action.nargs is None and isinstance(raw, list):
        raise InvalidInput(key, f"expected one value, got a list {raw!r}")
    if action.nargs not in (None, "?") and not isinstance(raw, list):
        raise InvalidInput(key, f"expected a list (several values), got {raw!r}")
    expected = {int: (int,), float: (int, float)}.get(action.type, (str,))
    for item in items:
        if isinstance(item, bool) or not isinstance(item, expected):
            raise InvalidInput(key, f"expected {' or '.join(t.__name__ for t in expected)}, got {item!r}")
    return _convert(action, key, [str(item) for item in items])


def environment_value(action: argparse.Action, name: str, text: str):
    if is_switch(action):
        word = text.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise InvalidInput(name, f"expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}, got {text!r}")
        value = word in TRUE_WORDS
        return value if not isinstance(action, argparse._StoreFalseAction) else not value
    strings = shlex.split(text) if action.nargs not in (None, "?") else [text]
    return _convert(action, name, strings)


def read_file(path: str, options: dict) -> dict:
    """key -> value from the TOML file at `path`."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as error:
        raise InvalidInput("--config", f"{path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput("--config", f"{path}: not valid TOML: {error}") from None
    values = {}
    for key, raw in table.items():
        if key not in options:
            raise _unknown(f"key in {path}", key, options)
        values[key] = file_value(options[key], f"{path}: {key}", raw)
    return values


def read_environment(environ, options: dict) -> dict:
    """key -> value from TALLY_* variables; an unknown one is an error."""
    by_variable = {variable_of(key): key for key in options}
    values = {}
    for name, text in sorted(environ.items()):
        if not name.startswith(PREFIX) or name in OTHER_VARIABLES:
            continue
        if name not in by_variable:
            raise _unknown("variable: not a Tally setting", name, list(by_variable) + list(OTHER_VARIABLES))
        key = by_variable[name]
        values[key] = environment_value(options[key], name, text)
    return values


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the command line itself set."""
    saved = {action: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved.items():
            action.default = default
    return set(vars(given))


class Merged:
    """The parsed arguments after the merge, and where each setting came from."""

    def __init__(self, args: argparse.Namespace, sources: dict[str, str], options: dict):
        self.args = args
        self.sources = sources
        self.options = options


def parse(parser: argparse.ArgumentParser, argv: list[str], environ=None) -> Merged:
    """Parse argv over the config file and the environment (argparse keeps
    a value already in the namespace: the flags are parsed last)."""
    environ = os.environ if environ is None else environ
    add_negations(parser)
    options = settings_options(parser)
    config_path = _config_path(parser, argv, environ)
    from_file = read_file(config_path, options) if config_path else {}
    from_environment = read_environment(environ, options)
    namespace = argparse.Namespace()
    sources = {key: "default" for key in options}
    for origin, values in (("file", from_file), ("environment", from_environment)):
        for key, value in values.items():
            setattr(namespace, options[key].dest, value)
            sources[key] = origin
    args = parser.parse_args(argv, namespace=namespace)
    given = _given_flags(parser, argv)  # after: --help and bad flags have exited
    for key, action in options.items():
        if action.dest in given:
            sources[key] = "flag"
    args.config = config_path
    return Merged(args, sources, options)


def _config_path(parser, argv, environ) -> str | None:
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config")
    known, _ = probe.parse_known_args(argv)
    return known.config or environ.get(CONFIG_VARIABLE) or None


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(merged: Merged) -> str:
    """Every setting as a config file would say it, with where it came from:
    saved to a file, it configures the same server."""
    lines = ["# tally serve --print-config: defaults < file < environment < flags"]
    if merged.args.config:
        lines.append(f"# config file: {merged.args.config}")
    for key, action in merged.options.items():
        value = getattr(merged.args, action.dest)
        source = merged.sources[key]
        if value is None:
            lines.append(f"# {key} is not set")
        else:
            lines.append(f"{key} = {toml_value(value)}  # {source}")
    return "\n".join(lines)


def render_json(merged: Merged, settings) -> str:
    import msgspec

    options = {key: {"value": getattr(merged.args, action.dest), "source": merged.sources[key],
                     "variable": variable_of(key)} for key, action in merged.options.items()}
    return json.dumps({"config_file": merged.args.config, "options": options, "settings": msgspec.to_builtins(settings)},
                      indent=2, default=str)
