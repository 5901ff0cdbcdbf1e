"""A seeded mutation fuzzer: deterministic for a seed, no native dependency, fast enough for 10^6 runs.

Each run takes an input from the corpus (the target's seeds at first), stacks 1-8 mutations on it
(bit flips, interesting bytes, inserts, deletes, duplicated ranges, splices with another corpus entry,
the target's tokens) and runs the target. An input whose returned signature was not seen before joins
the corpus (a cheap stand-in for coverage feedback). An exception is a crash: the input is written to
the crash folder as `<target>-<sha1>` with the traceback next to it (`.txt`), and fuzzing goes on;
crashes with the same exception type and innermost frame count once.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools.fuzz.targets import Target

LOGGER = logging.getLogger(__name__)

CORPUS_LIMIT = 2048
_INTERESTING = (
    0x00,
    0x01,
    0x03,
    0x09,
    0x0A,
    0x0D,
    0x11,
    0x13,
    0x1B,
    0x20,
    0x22,
    0x27,
    0x2B,
    0x2D,
    0x2E,
    0x30,
    0x39,
    0x3A,
    0x5C,
    0x7F,
    0x80,
    0xC3,
    0xFF,
)


@dataclass(slots=True, kw_only=True)
class CampaignResult:
    """What one campaign did: inputs run, time taken, distinct crashes and where they were saved."""

    target: str
    runs: int = 0
    duration_s: float = 0.0
    corpus_size: int = 0
    crashes: dict[str, Path] = field(default_factory=dict)
    """Distinct crash signature -> saved input."""

    @property
    def inputs_per_s(self) -> float:
        """Return the measured throughput."""
        return self.runs / self.duration_s if self.duration_s > 0 else 0.0


class Mutator:
    """Stacked byte-level mutations driven by one `random.Random`."""

    def __init__(self, *, rng: random.Random, tokens: tuple[bytes, ...], max_len: int) -> None:
        self._rng = rng
        self._max_len = max_len
        self._tokens = tokens
        self._ops: tuple[Callable[[bytearray, bytes], None], ...] = (
            self._flip_bit,
            self._set_byte,
            self._set_interesting,
            self._insert_random,
            self._delete_range,
            self._duplicate_range,
            self._splice,
            self._insert_token,
            self._insert_token,
            self._truncate,
        )

    def mutate(self, data: bytes, *, other: bytes) -> bytes:
        """Return data with 1-8 stacked mutations (`other` is a second corpus entry for splicing)."""
        buffer = bytearray(data)
        for _ in range(self._rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
            self._rng.choice(self._ops)(buffer, other)
        return bytes(buffer[: self._max_len])

    def _pos(self, buffer: bytearray, *, inclusive: bool = False) -> int:
        return (
            self._rng.randrange(len(buffer) + 1)
            if inclusive or not buffer
            else self._rng.randrange(len(buffer))
        )

    def _flip_bit(self, buffer: bytearray, _other: bytes) -> None:
        if buffer:
            buffer[self._pos(buffer)] ^= 1 << self._rng.randrange(8)

    def _set_byte(self, buffer: bytearray, _other: bytes) -> None:
        if buffer:
            buffer[self._pos(buffer)] = self._rng.randrange(256)

    def _set_interesting(self, buffer: bytearray, _other: bytes) -> None:
        if buffer:
            buffer[self._pos(buffer)] = self._rng.choice(_INTERESTING)

    def _insert_random(self, buffer: bytearray, _other: bytes) -> None:
        at = self._pos(buffer, inclusive=True)
        buffer[at:at] = self._rng.randbytes(self._rng.choice((1, 1, 2, 4, 8, 32)))

    def _delete_range(self, buffer: bytearray, _other: bytes) -> None:
        if buffer:
            start = self._pos(buffer)
            del buffer[start : start + self._rng.choice((1, 1, 2, 4, 16, 64))]

    def _duplicate_range(self, buffer: bytearray, _other: bytes) -> None:
        if buffer:
            start = self._pos(buffer)
            piece = buffer[start : start + self._rng.choice((1, 4, 16, 64))]
            at = self._pos(buffer, inclusive=True)
            buffer[at:at] = piece * self._rng.choice((1, 1, 2, 8))

    def _splice(self, buffer: bytearray, other: bytes) -> None:
        if other:
            start = self._rng.randrange(len(other))
            piece = other[start : start + self._rng.randrange(1, 256)]
            at = self._pos(buffer, inclusive=True)
            buffer[at:at] = piece

    def _insert_token(self, buffer: bytearray, _other: bytes) -> None:
        if self._tokens:
            at = self._pos(buffer, inclusive=True)
            token = self._rng.choice(self._tokens)
            if self._rng.random() < 0.5:
                buffer[at:at] = token
            else:
                buffer[at : at + len(token)] = token

    def _truncate(self, buffer: bytearray, _other: bytes) -> None:
        if buffer:
            del buffer[self._pos(buffer) :]


def crash_signature(error: BaseException) -> str:
    """Return `ExceptionType@file:line` of the innermost frame (what makes two crashes the same)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(error).__name__}@{where}"


def save_crash(*, target: str, data: bytes, error: BaseException, crash_dir: Path) -> Path:
    """Write the crashing input and its traceback; return the input's path."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"{target}-{hashlib.sha1(data).hexdigest()[:16]}"  # noqa: S324 - a name, not a hash of trust
    path.write_bytes(data)
    text = "".join(traceback.format_exception(error))
    path.with_suffix(".txt").write_text(f"{crash_signature(error)}\n{text}", encoding="utf-8")
    return path


def fuzz(
    target: Target,
    *,
    runs: int,
    seed: int,
    crash_dir: Path,
    progress: Callable[[CampaignResult], None] | None = None,
    progress_every: int = 100_000,
) -> CampaignResult:
    """Run `runs` inputs against `target` (seeds first, then mutations) and return the figures."""
    rng = random.Random(seed)  # noqa: S311 - reproducible mutations, not secrets
    mutator = Mutator(rng=rng, tokens=target.tokens, max_len=target.max_len)
    corpus = [seed_input[: target.max_len] for seed_input in target.seeds()] or [b""]
    seed_count = len(corpus)
    seen: set[object] = set()
    result = CampaignResult(target=target.name)
    started = time.monotonic()
    for index in range(runs):
        if index < seed_count:
            data = corpus[index]
        else:
            data = mutator.mutate(rng.choice(corpus), other=rng.choice(corpus))
        try:
            signature = target.run(data)
        except Exception as error:  # noqa: BLE001 - every exception from a target is a finding
            key = crash_signature(error)
            if key not in result.crashes:
                result.crashes[key] = save_crash(
                    target=target.name, data=data, error=error, crash_dir=crash_dir
                )
                LOGGER.error("%s: crash %s saved to %s", target.name, key, result.crashes[key])
        else:
            if signature not in seen:
                seen.add(signature)
                if len(corpus) < CORPUS_LIMIT:
                    corpus.append(data)
                else:
                    corpus[rng.randrange(len(corpus))] = data
        result.runs = index + 1
        if progress is not None and result.runs % progress_every == 0:
            result.duration_s = time.monotonic() - started
            result.corpus_size = len(corpus)
            progress(result)
    result.duration_s = time.monotonic() - started
    result.corpus_size = len(corpus)
    return result
