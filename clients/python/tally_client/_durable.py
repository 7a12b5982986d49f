"""Files that survive a crash: written whole or not at all, and removed for good.

Owns: the write-then-rename-then-fsync sequence and the directory fsyncs
that make a creation, replacement or removal durable before it returns.
Used by: serials.py (the serial high-water mark), reversals.py (the queue).
"""

import os


def fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str, data: bytes) -> None:
    """After this returns, path holds data, even across a power cut; a crash
    before leaves the old content (the rename is atomic)."""
    temporary = f"{path}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path) or ".")


def remove_durably(path: str) -> None:
    """After this returns, path is gone for good (missing already is fine)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_directory(os.path.dirname(path) or ".")
