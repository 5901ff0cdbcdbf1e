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


class _Context:
    def push(self) -> None:
        pass

    def pop(self) -> None:
        pass

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


class Stream:
    handle = 0

    def synchronize(self) -> None:
        pass


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


def pagelocked_empty(shape: tuple[int, ...], dtype: Any) -> Any:
    return np.empty(shape, dtype)


def memcpy_htod_async(dest: DeviceAllocation, src: Any, stream: Stream) -> None:
    dest.data = np.array(src)


def memcpy_dtoh_async(dest: Any, src: DeviceAllocation, stream: Stream) -> None:
    dest[...] = src.data
