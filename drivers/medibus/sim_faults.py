"""Line faults the simulator's pty runner can inject, sans-I/O: bit flips and a power cut mid-frame.

For fault tests and field demonstrations only; every fault is off by default and seeded, so a run is
repeatable. A bit flip inverts one random bit of a byte, in either direction, with probability
`bit_flip_rate` per byte. A power cut sends the first half of the next frame to the host, then the
device is dead (it reads and drops what the host sends, sends nothing) for `power_off_s`; it comes back
as a freshly powered device that waits for the host's ICC.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

LOGGER = logging.getLogger(__name__)

_FRAME_END = b"\r"


@dataclass(frozen=True, slots=True, kw_only=True)
class LineFaults:
    """Which faults to inject (all off by default)."""

    bit_flip_rate: float = 0.0
    """Probability, per byte on the line, that one of its bits is inverted."""
    seed: int = 0
    power_off_after_s: float | None = None
    """Cut the power this long after the start, in the middle of the next frame to the host."""
    power_off_s: float = 5.0
    """How long the device stays dead."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.bit_flip_rate <= 1.0:
            raise ValueError(f"bit_flip_rate must be within [0, 1], got {self.bit_flip_rate!r}")
        if self.power_off_after_s is not None and not self.power_off_after_s >= 0:
            raise ValueError(f"power_off_after_s must be >= 0, got {self.power_off_after_s!r}")
        if not (math.isfinite(self.power_off_s) and self.power_off_s > 0):
            raise ValueError(f"power_off_s must be a positive number of seconds, got {self.power_off_s!r}")


class FaultyLine:
    """Applies `LineFaults` to the bytes crossing the line; the caller passes the monotonic time."""

    def __init__(self, *, faults: LineFaults, start_s: float) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)  # noqa: S311 - repeatable line noise, not secrecy
        self._cut_due_s = math.inf if faults.power_off_after_s is None else start_s + faults.power_off_after_s
        self._power_on_s: float | None = None

    def powered(self, *, now_s: float) -> bool:
        """Return whether the device has power at now_s."""
        return self._power_on_s is None or now_s >= self._power_on_s

    def power_returned(self, *, now_s: float) -> bool:
        """Return True once, at the first call after the power came back (the device restarts then)."""
        if self._power_on_s is not None and now_s >= self._power_on_s:
            self._power_on_s = None
            LOGGER.info("simulator: power back on")
            return True
        return False

    def from_host(self, data: bytes) -> bytes:
        """Return the host's bytes as the device receives them."""
        return self._flip(data)

    def to_host(self, data: bytes, *, now_s: float) -> bytes:
        """Return the device's bytes as the host receives them; the power cut happens here."""
        if data and now_s >= self._cut_due_s:
            self._cut_due_s = math.inf
            end = data.find(_FRAME_END)
            cut = (end + 1) // 2 if end > 0 else len(data) // 2
            self._power_on_s = now_s + self.faults.power_off_s
            LOGGER.info(
                "simulator: power off mid-frame after %d of %d bytes, for %.1f s",
                cut,
                len(data),
                self.faults.power_off_s,
            )
            data = data[:cut]
        return self._flip(data)

    def _flip(self, data: bytes) -> bytes:
        rate = self.faults.bit_flip_rate
        if rate <= 0.0 or not data:
            return data
        out = bytearray(data)
        for index in range(len(out)):
            if self._rng.random() < rate:
                out[index] ^= 1 << self._rng.randrange(8)
        return bytes(out)
