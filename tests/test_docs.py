"""The operator's and the finance guides work as written: every example is run.

A guide's fenced blocks say what they are in their info string:
  ```sh test              run with bash (-euo pipefail) in the guide's working directory
  ```sh test background   started and left running (a server): the next blocks
                          run once it serves; stopped with SIGTERM at the end
  ```python test          run with the venv's python
  ```toml file=NAME       written to NAME in the working directory (a config file)
  ```text                 right after a test block: lines its output must hold,
                          in order; "..." in a line stands for anything
  ```sh untested          shown only (what tests/test_package.py does, or what
                          needs a part not in this build)
Blocks of one guide run in order in one temporary directory, with the
venv's bin first on PATH (so `tally` is the installed command) and no TALLY_
variables but what the blocks set. The example ports 50051 and 9464 are
replaced by free ones, so that a guide never collides with a server on the
machine.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.support import REPO, SERVING_LINE

GUIDES = ("docs/operators.md", "docs/finance.md")
BLOCK = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
EXAMPLE_PORTS = ("50051", "9464")
BLOCK_TIMEOUT_S = 300


def blocks(path: str) -> list[tuple[list[str], str]]:
    with open(os.path.join(REPO, path), encoding="utf-8") as file:
        return [(info.split(), body) for info, body in BLOCK.findall(file.read())]


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def expected_lines_hold(expected: str, output: str) -> str | None:
    """None if every line of `expected` is in `output`, in order; else the
    first line that is not."""
    lines = output.splitlines()
    position = 0
    for wanted in filter(None, (line.rstrip() for line in expected.splitlines())):
        pattern = re.compile(".*".join(map(re.escape, wanted.split("..."))))
        while position < len(lines) and not pattern.search(lines[position]):
            position += 1
        if position == len(lines):
            return wanted
        position += 1
    return None


class Guide:
    """Runs one guide's blocks, in order, in `directory`."""

    def __init__(self, path: str, directory):
        self.path = path
        self.directory = directory
        self.ports = {port: free_port() for port in EXAMPLE_PORTS}
        bin_dir = os.path.dirname(sys.executable)
        self.environment = {key: value for key, value in os.environ.items() if not key.startswith("TALLY_")}
        self.environment["PATH"] = bin_dir + os.pathsep + self.environment.get("PATH", "")
        self.background = []

    def text(self, body: str) -> str:
        for example, port in self.ports.items():
            body = body.replace(example, port)
        return body

    def run(self) -> int:
        """Every block; the number of examples run."""
        run_count = 0
        last_output = None
        for number, (info, body) in enumerate(blocks(self.path), 1):
            where = f"{self.path} block {number} ({' '.join(info)})"
            words = set(info[1:])
            if info and info[0] == "text" and last_output is not None:
                missing = expected_lines_hold(self.text(body), last_output)
                assert missing is None, f"{where}: {missing!r} not in the output:\n{last_output}"
                last_output = None
                continue
            last_output = None
            files = [word.removeprefix("file=") for word in words if word.startswith("file=")]
            if files:
                (self.directory / files[0]).write_text(self.text(body))
            elif "test" in words and "background" in words:
                self.start(self.text(body), where)
                run_count += 1
            elif "test" in words:
                last_output = self.run_block(info[0], self.text(body), where)
                run_count += 1
            else:
                assert info[:1] not in (["sh"], ["python"]) or "untested" in words, \
                    f"{where}: mark it `test` (or `untested` if it cannot run here)"
        return run_count

    def run_block(self, language: str, body: str, where: str) -> str:
        command = ["bash", "-euo", "pipefail", "-c", body] if language == "sh" else [sys.executable, "-c", body]
        # One stream, as a terminal shows it: stderr lines where they came.
        result = subprocess.run(command, cwd=self.directory, env=self.environment, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=BLOCK_TIMEOUT_S)
        assert result.returncode == 0, f"{where} exited {result.returncode}:\n{body}\n{result.stdout}"
        return result.stdout

    def start(self, body: str, where: str):
        process = subprocess.Popen(["bash", "-c", "exec " + body.strip()], cwd=self.directory, env=self.environment,
                                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)
        self.background.append(process)
        ready = threading.Event()
        log = []

        def read():
            for line in process.stderr:
                log.append(line)
                if SERVING_LINE.search(line):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(60), f"{where} did not serve:\n{''.join(log)}"

    def stop(self):
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)


@pytest.mark.parametrize("path", GUIDES)
def test_every_example_of_the_guide_runs_as_written(path, tmp_path):
    guide = Guide(path, tmp_path)
    try:
        assert guide.run() >= 5, f"{path}: too few tested examples"
    finally:
        guide.stop()


def test_the_guides_are_linked_from_the_readme():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    for path in GUIDES:
        assert f"({path})" in readme, path


def test_expected_output_matching_is_strict():
    assert expected_lines_hold("a ... c\nd", "x\na b c\nd\n") is None
    assert expected_lines_hold("d\na ... c", "a b c\nd\n") == "a ... c"  # order counts
    assert expected_lines_hold("zzz", "a\n") == "zzz"
