"""The fake GPU stack (tests/fake_gpu_stack) inside the test process, removed again afterwards."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

FAKE_GPU_STACK = Path(__file__).resolve().parent.parent / "fake_gpu_stack"


def _forget_fakes() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in ("tensorrt", "pycuda")]:
        del sys.modules[name]


@pytest.fixture
def fake_gpu_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Return `use(mode)`: put the fake tensorrt + pycuda first on sys.path, failing as `mode` says.

    Teardown lets hung fake builds return and forgets the fake modules, so later tests see the real
    machine again.
    """
    if "tensorrt" in sys.modules or "pycuda" in sys.modules:
        pytest.skip("a real tensorrt or pycuda is loaded in this process")

    def use(mode: str) -> None:
        monkeypatch.setenv("FAKE_GPU_STACK", mode)
        if str(FAKE_GPU_STACK) not in sys.path:
            monkeypatch.syspath_prepend(str(FAKE_GPU_STACK))
        _forget_fakes()

    try:
        yield use
    finally:
        fake: Any = sys.modules.get("tensorrt")
        if fake is not None:
            fake.release_hung_builds()
        for thread in threading.enumerate():
            if thread.name.startswith(("tensorrt-", "engines-load")):
                thread.join(timeout=10)
        _forget_fakes()
