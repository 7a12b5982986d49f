"""SoftHSM2 as a real PKCS#11 token for tests.

`shared_token()` makes one token per test process, in a temp dir of its own:
a softhsm2.conf whose tokendir is inside it, SOFTHSM2_CONF pointing at it
(set in this process's environment, so the servers and commands a test
starts find the same token), then `softhsm2-util --init-token --free`.
One per process because a PKCS#11 library reads its configuration once, at
C_Initialize: a token made later in another directory stays invisible to
this process. Tests keep apart by key labels (`with_key_label`).
Without softhsm2 (the Debian package `softhsm2`, which .ci/run installs)
the test is skipped with the reason said.
"""

import atexit
import os
import shutil
import subprocess
import tempfile

import msgspec
import pytest

from core.admin.hsm import TokenConfig

MODULE_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
TOKEN_LABEL = "tally-test"
USER_PIN = "1234-user"
SO_PIN = "5678-so"
CONFIG_ENVIRONMENT = "SOFTHSM2_CONF"
_made: list[TokenConfig] = []


def module_path() -> str:
    """The SoftHSM2 library, or skip saying what is missing."""
    found = [path for path in MODULE_PATHS if os.path.exists(path)]
    if not found or shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2 is not installed (apt-get install -y softhsm2; .ci/run does): no PKCS#11 token to test with")
    return found[0]


def shared_token() -> TokenConfig:
    """This process's token (made at the first call); its user PIN in a
    mode-600 file (TokenConfig.pin_file)."""
    if not _made:
        _made.append(_make_token(module_path()))
    return _made[0]


def with_key_label(label: str) -> TokenConfig:
    return msgspec.structs.replace(shared_token(), key_label=label)


def _make_token(module: str) -> TokenConfig:
    directory = tempfile.mkdtemp(prefix="tally-softhsm-")
    atexit.register(shutil.rmtree, directory, True)
    token_dir = os.path.join(directory, "tokens")
    os.makedirs(token_dir)
    config_path = os.path.join(directory, "softhsm2.conf")
    with open(config_path, "w") as file:
        file.write(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ[CONFIG_ENVIRONMENT] = config_path
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN,
                    "--so-pin", SO_PIN], check=True, capture_output=True, text=True)
    pin_file = os.path.join(directory, "pin")
    descriptor = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(USER_PIN + "\n")
    return TokenConfig(module, TOKEN_LABEL, "tally-master", pin_file)


def token_flags(config: TokenConfig) -> tuple[str, ...]:
    """The server's flags for the master key in `config`'s token."""
    return ("--pkcs11-module", config.module, "--pkcs11-token-label", config.token_label,
            "--pkcs11-key-label", config.key_label, "--pkcs11-pin-file", config.pin_file)


def cli_flags(config: TokenConfig) -> tuple[str, ...]:
    """The same for `python -m core.admin`."""
    return ("--pkcs11-module", config.module, "--token-label", config.token_label, "--key-label", config.key_label,
            "--pin-file", config.pin_file)
