"""Small real disks for the tests that fill one: a tmpfs of a given size, and a writer that fills it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(directory: Path, *, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `directory` (skip when not permitted); always unmount."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); this test needs a small real disk"
        )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write `path` until the filesystem is full (ENOSPC); return the bytes written."""
    written = 0
    with path.open("ab", buffering=0) as hog:
        for chunk in (64 * 1024, 4096, 512, 1):
            try:
                while True:
                    written += hog.write(b"\1" * chunk) or 0
            except OSError:
                continue
    return written
