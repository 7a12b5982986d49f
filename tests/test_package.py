"""The package installs and runs outside the checkout: a wheel built from the
working tree (copied to a temporary directory, so nothing generated in the
checkout helps), installed into a new venv, serves a Pay with its compiled
kernel and answers `tally --help`; the wheel holds every subpackage, the
generated tally.v1 stubs and the license, and no .pth file."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from setuptools import find_packages

from tests.support import REPO, SERVING_LINE

BUILD_TIMEOUT_S = 900
PAY = """
import sys
import grpc
from tally.v1 import common_pb2, payment_pb2, payment_pb2_grpc

payments = payment_pb2_grpc.PaymentServiceStub(grpc.insecure_channel(sys.argv[1]))
answer = payments.Pay(payment_pb2.PayRequest(
    terminal=common_pb2.TerminalContext(station_id=1, terminal_id=101, serial=1, operator_id=7),
    amount_minor=25000, plan=payment_pb2.PaymentPlan(card_id=6200000000000001, use_fleet=True)))
print(common_pb2.ResultCode.Name(answer.result), answer.sources.fleet_minor)
"""


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [name for name in listed.decode().split("\0") if name and os.path.exists(os.path.join(REPO, name))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin directory, wheel path): the working tree as a fresh clone
    would have it, built into a wheel and installed into a new venv."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    for name in tracked_files():
        os.makedirs(source / os.path.dirname(name), exist_ok=True)
        shutil.copy2(os.path.join(REPO, name), source / name)
    wheels = root / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                            "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(wheels.glob("tally-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(wheel)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv / "bin", wheel


def test_the_wheel_holds_every_package_the_stubs_the_kernel_and_the_license(installed):
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    packages = {os.path.dirname(name).replace("/", ".") for name in names if name.endswith("/__init__.py")}
    expected = set(find_packages(REPO, include=["core", "core.*", "server", "server.*", "bench", "bench.*"]))
    assert expected and expected <= packages, expected - packages
    for proto in ("common", "payment", "card", "loyalty", "promotion", "settlement", "admin", "gateway"):
        assert f"tally/v1/{proto}_pb2.py" in names and f"tally/v1/{proto}_pb2_grpc.py" in names, proto
    assert any(re.fullmatch(r"core/kernel\.cpython-.*\.so", name) for name in names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.endswith(".pth") for name in names)
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"core", "server", "bench", "tally"}, top_level  # README, "Installing": why these names


def test_the_installed_tally_serves_a_pay_with_the_compiled_kernel(installed, tmp_path):
    bin_dir, _ = installed
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("TALLY_", "PYTHON"))}
    helped = subprocess.run([str(bin_dir / "tally"), "--help"], cwd=tmp_path, capture_output=True, text=True, env=environment)
    assert helped.returncode == 0 and "usage: tally" in helped.stdout and "settlement" in helped.stdout
    server = subprocess.Popen([str(bin_dir / "tally"), "serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                               "--demo"], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        for line in server.stderr:
            match = SERVING_LINE.search(line)
            if match:
                break
        assert match, "tally serve did not start"
        address, kernel = match.group(1), match.group(2)
        assert kernel == "cython"
        paid = subprocess.run([str(bin_dir / "python"), "-c", PAY, address], cwd=tmp_path, capture_output=True, text=True,
                              env=environment, timeout=60)
        assert paid.returncode == 0, paid.stderr
        assert paid.stdout.split() == ["APPROVED", "25000"]
    finally:
        server.terminate()
        server.wait(30)
    audited = subprocess.run([str(bin_dir / "tally"), "--data", str(tmp_path / "data"), "audit"], cwd=tmp_path,
                             capture_output=True, text=True, env=environment)
    assert audited.returncode == 0, audited.stdout + audited.stderr
