"""Every command in README.md works as written: the client example runs
against a real server and prints what the README says it prints."""

import os
import re
import subprocess
import sys

from tests.support import REPO


def readme_block(language: str, after: str) -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    start = text.index(after)
    return re.search(rf"```{language}\n(.*?)```", text[start:], re.S).group(1)


def test_the_first_payment_example_works_as_written(server):
    code = readme_block("python", "## A first payment")
    environment = dict(os.environ, TALLY_ADDRESS=server.address)
    first = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("APPROVED ")
    assert "TALLY SALE" in first.stdout
    again = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, cwd=REPO)
    assert again.stdout == first.stdout, "the same serial must return the same answer"


def test_the_make_targets_the_readme_names_exist():
    makefile = open(os.path.join(REPO, "Makefile")).read()
    for target in ("run", "test", "bench"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in open(os.path.join(REPO, ".ci", "run")).read()


def test_every_entry_point_has_help():
    for command, expected in (
        ("server", "--listen HOST:PORT"),
        ("core.audit", "usage: python -m core.audit"),
        ("core.loyalty", "usage: python -m core.loyalty"),
        ("core.admin", "usage: python -m core.admin"),
        ("core.settlement", "usage: python -m core.settlement"),
        ("core.migrations", "usage: python -m core.migrations"),
        ("bench", "python -m bench COMMAND"),
        ("bench kernel", "--transfers"),
        ("bench e2e", "--concurrency"),
        ("bench console", "--console-rate"),
        ("server.console", "usage: python -m server.console"),
    ):
        result = subprocess.run([sys.executable, "-m", *command.split(), "--help"], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout


def test_make_run_serves_the_demo_until_interrupted(tmp_path):
    """The README's first command, with the address and data moved aside so
    that it cannot collide with anything on 127.0.0.1:50051."""
    import signal
    import threading

    from tests.support import SERVING_LINE, DEMO_COMPANY_CARD, Terminal

    data_dir = tmp_path / "demo"
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run", "LISTEN=127.0.0.1:0", f"DEMO_DATA={data_dir}"],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    address = []
    ready = threading.Event()

    def read():
        for line in make.stderr:
            match = SERVING_LINE.search(line)
            if match:
                address.append(match.group(1))
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(120), "make run did not serve"
        import grpc

        terminal = Terminal(grpc.insecure_channel(address[0]))
        assert terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor == 500_000
    finally:
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C reaches make and the server
        make.wait(60)
    assert (data_dir / "data.mdb").exists()
