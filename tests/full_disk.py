"""A real full disk for tests: a small tmpfs the test mounts (root only) and a file that
fills it. Used by the journal's and the queue manager's full-disk tests."""
from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator:
    """A 2 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                              check=False, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here: cannot make a small filesystem to fill")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        # Lazy: a test that failed with a journal still open there leaves the mount busy; it
        # must not stay mounted (and pile up under pytest's temporary directories) for that.
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill_disk(path) -> None:
    """Write zeros to `path` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
