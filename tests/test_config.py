"""The server's configuration (server/config.py): defaults < TOML file <
TALLY_* variables < flags, one set of defaults (ServerSettings), names
derived from the parser so that every flag, also one added later, is a file
key and a variable; unknown names and wrong types are one-line errors."""

import json
import os
import re
import subprocess
import sys

import pytest

from server import config
from server.__main__ import build_parser, settings_of
from server.settings import ServerSettings
from tests.support import REPO, SERVING_LINE

CLEAN_ENVIRONMENT = {key: value for key, value in os.environ.items() if not key.startswith("TALLY_")}


def serve(*args, env=None):
    return subprocess.run([sys.executable, "-m", "server", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=dict(CLEAN_ENVIRONMENT, **(env or {})))


def printed(*args, env=None) -> dict:
    result = serve(*args, "--print-config", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_flags_beat_variables_beat_the_file_beat_the_defaults(tmp_path):
    file = tmp_path / "tally.toml"
    file.write_text(f'data = "{tmp_path / "data"}"\nlisten = "127.0.0.1:7001"\nstream-window = 100\n'
                    'log-requests = true\nterminal-auth = false\nchannel-latency-ms = [5, 9]\n')
    merged = printed("--config", file, "--stream-window", "300", "--no-log-requests",
                     env={"TALLY_LISTEN": "127.0.0.1:7002", "TALLY_STREAM_WINDOW": "200", "TALLY_QUEUE_LENGTH_MAX": "77"})
    options = merged["options"]
    assert options["data"] == {"value": str(tmp_path / "data"), "source": "file", "variable": "TALLY_DATA"}
    assert (options["listen"]["value"], options["listen"]["source"]) == ("127.0.0.1:7002", "environment")
    assert (options["stream-window"]["value"], options["stream-window"]["source"]) == (300, "flag")
    assert (options["log-requests"]["value"], options["log-requests"]["source"]) == (False, "flag")
    assert (options["queue-length-max"]["value"], options["queue-length-max"]["source"]) == (77, "environment")
    assert (options["channel-latency-ms"]["value"], options["channel-latency-ms"]["source"]) == ([5, 9], "file")
    assert options["workers"]["source"] == "default"
    settings = merged["settings"]
    assert (settings["listen"], settings["stream_window"], settings["queue_length_max"]) == ("127.0.0.1:7002", 300, 77)
    assert settings["simulator"]["latency_ms_min"] == 5 and settings["log_requests"] is False
    # TALLY_CONFIG names the file when --config does not.
    assert printed(env={"TALLY_CONFIG": str(file)})["options"]["stream-window"]["value"] == 100


def test_printed_config_is_a_config_file_that_gives_the_same_settings(tmp_path):
    first = serve("--data", tmp_path / "data", "--workers", "2", "--channel-adapter", "alipay=simulator",
                  "--metrics-port", "0", "--print-config", env={"TALLY_UTC_OFFSET_MINUTES": "480"})
    assert first.returncode == 0, first.stderr
    saved = tmp_path / "printed.toml"
    saved.write_text(first.stdout)
    again = printed("--config", saved)
    assert again["settings"] == printed("--data", tmp_path / "data", "--workers", "2", "--channel-adapter",
                                        "alipay=simulator", "--metrics-port", "0",
                                        env={"TALLY_UTC_OFFSET_MINUTES": "480"})["settings"]
    assert again["settings"]["utc_offset_minutes"] == 480 and again["settings"]["channel_adapters"] == {"alipay": "simulator"}
    assert {option["source"] for option in again["options"].values()} <= {"file", "default"}


def test_the_flags_take_their_defaults_from_server_settings():
    args = config.parse(build_parser(), ["--data", "somewhere"], environ={}).args
    assert settings_of(args) == ServerSettings(data_dir="somewhere")


def test_every_flag_is_a_file_key_and_a_variable():
    parser = build_parser()
    options = config.settings_options(parser)
    config.add_negations(parser)
    flags = {flag[2:] for action in parser._actions for flag in action.option_strings[:1]
             if flag.startswith("--") and action.dest not in config.NOT_SETTINGS and not getattr(action, "negation", False)}
    assert set(options) == flags
    assert {config.variable_of(key) for key in options} >= {"TALLY_DATA", "TALLY_LISTEN", "TALLY_MAP_SIZE_GIB",
                                                             "TALLY_CHANNEL_TIMEOUT_MS", "TALLY_TERMINAL_AUTH"}


def test_a_flag_added_later_joins_the_file_and_the_environment_by_itself(tmp_path):
    parser = build_parser()
    parser.add_argument("--replica-lag-ms-max", type=int, default=5, help="a flag another change adds")
    file = tmp_path / "tally.toml"
    file.write_text("replica-lag-ms-max = 7\n")
    assert config.parse(parser, ["--config", str(file)], environ={}).args.replica_lag_ms_max == 7
    merged = config.parse(build_parser_with_lag(), [], environ={"TALLY_REPLICA_LAG_MS_MAX": "9"})
    assert (merged.args.replica_lag_ms_max, merged.sources["replica-lag-ms-max"]) == (9, "environment")
    assert "replica-lag-ms-max = 9  # environment" in config.render_toml(merged)


def build_parser_with_lag():
    parser = build_parser()
    parser.add_argument("--replica-lag-ms-max", type=int, default=5)
    return parser


@pytest.mark.parametrize("content, words", [
    ("mapsize = 3\n", ["mapsize", "unknown key", "did you mean map-size-"]),
    ('map-size-gib = "3"\n', ["map-size-gib", "expected int, got '3'"]),
    ("terminal-auth = 1\n", ["terminal-auth", "expected true or false"]),
    ('kernel = "fast"\n', ["kernel", "must be one of auto, cython, reference"]),
    ("channel-latency-ms = 5\n", ["channel-latency-ms", "expected a list"]),
    ("channel-latency-ms = [1, 2, 3]\n", ["channel-latency-ms", "expected 2 values, got 3"]),
    ("listen = \n", ["not valid TOML"]),
])
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path, content, words):
    file = tmp_path / "tally.toml"
    file.write_text(f'data = "{tmp_path}"\n' + content)
    refused(serve("--config", file), *words)


@pytest.mark.parametrize("name, value, words", [
    ("TALLY_LISTN", "127.0.0.1:1", ["TALLY_LISTN", "not a Tally setting", "did you mean TALLY_LISTEN?"]),
    ("TALLY_WORKERS", "two", ["TALLY_WORKERS", "expected int, got 'two'"]),
    ("TALLY_DEMO", "maybe", ["TALLY_DEMO", "expected one of 1, true"]),
    ("TALLY_WORKERS", "999", ["--workers must be within 1 .. 64, got 999"]),
])
def test_a_bad_variable_is_one_line_naming_it(tmp_path, name, value, words):
    refused(serve("--data", tmp_path, env={name: value}), *words)


def test_a_missing_config_file_or_data_directory_is_one_line(tmp_path):
    refused(serve("--config", tmp_path / "none.toml"), "--config", "none.toml", "No such file")
    refused(serve(), "--data", "TALLY_DATA", "config file")


# TALLY_ words in the code that are not environment variables.
NOT_VARIABLES = {
    "TALLY_NAME": "the pattern, in help texts",
    "TALLY_LOG": "the name of the replication log's NATS stream (core/replication)",
    "TALLY_LOG_LEADER": "the name of the leader lease's JetStream key-value bucket (core/replication/lease.py)",
    "TALLY_EVENTS": "a JetStream stream of events in the tests (server/events.py)",
}


def test_every_tally_variable_the_code_reads_is_known():
    """A TALLY_ name read anywhere (a client's address, a PIN) must be a
    setting or listed in OTHER_VARIABLES: otherwise the server would refuse
    to start wherever that variable is set."""
    settings = {config.variable_of(key) for key in config.settings_options(build_parser())}
    listed = subprocess.run(["git", "ls-files", "*.py", "*.md", "Makefile", ".ci/*"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    found = set()
    for name in listed:
        path = os.path.join(REPO, name)
        if os.path.exists(path) and name != "tests/test_config.py":  # its wrong names are on purpose
            # Quoted, in backticks or after $: names, not Python constants.
            found |= set(re.findall(r"[\"'`$](TALLY_[A-Z0-9_]*[A-Z0-9])\b", open(path, encoding="utf-8").read()))
    unknown = found - settings - set(config.OTHER_VARIABLES) - set(NOT_VARIABLES)
    assert not unknown, f"add these to server/config.py OTHER_VARIABLES (or make them flags): {sorted(unknown)}"


def test_a_server_starts_from_its_config_file_alone(tmp_path):
    file = tmp_path / "tally.toml"
    file.write_text(f'data = "{tmp_path / "data"}"\nlisten = "127.0.0.1:0"\ndemo = true\n')
    process = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                               env=dict(CLEAN_ENVIRONMENT, TALLY_CONFIG=str(file)))
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if SERVING_LINE.search(line):
                break
        else:
            pytest.fail("no serving line:\n" + "".join(lines))
        assert f"data: {tmp_path / 'data'}" in lines[-1]
    finally:
        process.terminate()
        process.wait(30)
    assert (tmp_path / "data" / "data.mdb").exists()
