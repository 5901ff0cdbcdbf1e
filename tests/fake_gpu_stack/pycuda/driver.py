"""Fake pycuda.driver: device 0 is a fake Orin; "device memory" is numpy arrays looked up by address."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


class Error(Exception):
    """pycuda's base error."""


class device_attribute:  # pycuda spells it so
    MULTIPROCESSOR_COUNT = "MULTIPROCESSOR_COUNT"


def init() -> None:
    """Initialize nothing."""


_current: list[_Context] = []
"""The context stack of the calling threads (the backend uses one thread)."""


class _Context:
    def push(self) -> None:
        _current.append(self)

    def pop(self) -> None:
        _current.remove(self)

    def detach(self) -> None:
        pass


class Device:
    def __init__(self, ordinal: int) -> None:
        if ordinal != 0:
            raise Error(f"invalid device ordinal {ordinal}")

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return "Fake Orin (tests)"

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def get_attribute(self, attribute: str) -> int:
        return 16

    def retain_primary_context(self) -> _Context:
        return _Context()


_addresses = itertools.count(0x7000_0000, 0x1000)
allocations: dict[int, DeviceAllocation] = {}
"""Address -> allocation, for the fake TensorRT's execution context."""


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.address = next(_addresses)
        self.data: Any = None
        allocations[self.address] = self

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        allocations.pop(self.address, None)


fail_next_stream = False
"""Set by a test: the next `Stream()` fails as cuStreamCreate does when the GPU is out of memory."""


class Stream:
    handle = 0

    def __init__(self) -> None:
        global fail_next_stream
        if fail_next_stream:
            fail_next_stream = False
            raise Error("cuStreamCreate failed: out of memory (tests)")

    def synchronize(self) -> None:
        pass


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


freed_without_context: list[str] = []
"""Page-locked buffers freed with no context current (real pycuda: cuMemFreeHost fails or frees in
the wrong context): explicitly, or by the garbage collector."""
host_allocations: list[HostAllocation] = []


class HostAllocation(bytearray):
    """Page-locked host memory; as in pycuda, the `base` of the array `pagelocked_empty` returns."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(nbytes)
        self.freed = False
        host_allocations.append(self)

    def free(self) -> None:
        if not _current:
            freed_without_context.append("free() with no context current")
        self.freed = True

    def __del__(self) -> None:
        if not self.freed and not _current:
            freed_without_context.append("garbage-collected with no context current")


def pagelocked_empty(shape: tuple[int, ...], dtype: Any) -> Any:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.ndarray(shape, dtype, buffer=HostAllocation(nbytes))


def memcpy_htod_async(dest: DeviceAllocation, src: Any, stream: Stream) -> None:
    dest.data = np.array(src)


def memcpy_dtoh_async(dest: Any, src: DeviceAllocation, stream: Stream) -> None:
    dest[...] = src.data
