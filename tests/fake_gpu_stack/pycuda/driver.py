"""Fake pycuda.driver: device 0 is a fake Orin; contexts can be retained, pushed, popped, detached."""

from __future__ import annotations


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
