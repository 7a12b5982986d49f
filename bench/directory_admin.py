"""A data directory's administration while no server has it open, as
`python -m core.admin` does it: for the benches that register stations,
terminals or users before they start a server.

Owns: directory_admin.
Used by: bench/e2e.py (--terminal-auth), bench/console.py,
bench/login_flood.py (--beside login-flood-known).
"""

import contextlib


@contextlib.contextmanager
def directory_admin(data_dir: str, master_key=None):
    """(Admin over data_dir's store, the command line's actor); the store is
    closed afterwards. master_key: for registering terminals."""
    from core.admin import Admin
    from core.admin.access import cli_actor
    from core.store import MAP_SIZE_BYTES_DEFAULT, open_store

    store = open_store(data_dir, MAP_SIZE_BYTES_DEFAULT)
    try:
        yield Admin(store, master_key), cli_actor()
    finally:
        store.close()
