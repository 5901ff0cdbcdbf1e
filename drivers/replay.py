"""`icu-edge sim replay FILE --pty LINK`: play a recording's device side back on a new pty.

The device's bytes (`device` records of a `drivers.recording` file) are written to the pty at their
recorded pace divided by `--speed`; whatever the host writes is read, counted and otherwise ignored.
The clock starts when the host first writes, and lines up with the recorded host's first write: device
bytes recorded before it (sent while nobody listened) are skipped and counted. A recording without host
bytes plays from the start at once. When the host has read the last chunk (or after `DRAIN_S`), the
replay ends and removes LINK.

A request-response protocol (MEDIBUS) replays well only while the daemon asks the same things in the
same rhythm as the recorded host: the replay answers the recorded questions, not the ones asked now.
With the same driver options and `--speed 1`, tests/integration/test_record_replay.py shows the daemon
publishing the recorded vitals batches, same values, same order. Faster is for byte-level work, not
for twin values: at `--speed 4` (measured 2026-12-01, steady and deteriorating recordings of 8 batches)
the daemon read every byte, but published only 2 batches, because it takes only the answers to a
request it has outstanding.

Threads: one (select on the pty master until the next chunk is due).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import struct
import sys
import termios
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.pty_link import remove_symlink, replace_symlink, stop_on_signals, write_available
from drivers.recording import Recording, RecordingError, read_recording

LOGGER = logging.getLogger(__name__)

EX_UNAVAILABLE = 69
SELECT_MAX_S = 0.05
DRAIN_S = 2.0
_READ_CHUNK_BYTES = 4096


@dataclass(slots=True)
class ReplayCounts:
    """What the replay did: device bytes written and skipped, host bytes read (and ignored)."""

    device_bytes: int = 0
    device_chunks: int = 0
    skipped_bytes: int = 0
    host_bytes: int = 0


def replay(
    *, recording: Recording, link_path: str, stop: threading.Event, speed: float = 1.0
) -> ReplayCounts:
    """Play the device side of recording on a new pty linked at link_path until done or stopped."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    counts = ReplayCounts()
    host_offsets = [chunk.offset_s for chunk in recording.chunks if chunk.direction == "host"]
    origin_s = min(host_offsets) if host_offsets else None
    device = [chunk for chunk in recording.chunks if chunk.direction == "device"]
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        os.set_blocking(master_fd, False)
        slave_path = os.ttyname(slave_fd)
        replace_symlink(link_path=link_path, target=slave_path)
        LOGGER.info("replaying %d device chunks on %s -> %s", len(device), link_path, slave_path)
        try:
            start_s = None if origin_s is not None else time.monotonic()
            base_s = origin_s if origin_s is not None else 0.0
            index = 0
            while not stop.is_set() and index < len(device):
                now_s = time.monotonic()
                due_s = None if start_s is None else start_s + (device[index].offset_s - base_s) / speed
                wait_s = SELECT_MAX_S if due_s is None else min(SELECT_MAX_S, max(0.0, due_s - now_s))
                readable, _, _ = select.select([master_fd], [], [], wait_s)
                if readable and _read_host(master_fd, counts) and start_s is None:
                    start_s = time.monotonic()
                    LOGGER.info("replay: the host wrote, the clock starts")
                if start_s is None:
                    continue
                while index < len(device):
                    chunk = device[index]
                    if chunk.offset_s < base_s:
                        counts.skipped_bytes += len(chunk.data)
                    elif start_s + (chunk.offset_s - base_s) / speed <= time.monotonic():
                        write_available(master_fd, chunk.data)
                        counts.device_bytes += len(chunk.data)
                        counts.device_chunks += 1
                    else:
                        break
                    index += 1
            _drain(master_fd=master_fd, slave_fd=slave_fd, counts=counts, stop=stop)
        finally:
            remove_symlink(link_path=link_path, target=slave_path)
    finally:
        os.close(master_fd)
        os.close(slave_fd)
    return counts


def _drain(*, master_fd: int, slave_fd: int, counts: ReplayCounts, stop: threading.Event) -> None:
    """Wait (at most DRAIN_S) until the host has read the last chunk: closing the pty would discard it."""
    deadline_s = time.monotonic() + DRAIN_S
    while not stop.is_set() and time.monotonic() < deadline_s:
        # wait first: the kernel moves a write from the master to the slave's queue a moment later
        readable, _, _ = select.select([master_fd], [], [], SELECT_MAX_S)
        if readable:
            _read_host(master_fd, counts)
        if _unread_bytes(slave_fd) == 0:
            return


def _unread_bytes(slave_fd: int) -> int:
    """Return how many bytes wait on the pty for the host to read."""
    waiting = fcntl.ioctl(slave_fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", waiting)[0])


def _read_host(master_fd: int, counts: ReplayCounts) -> bool:
    """Read and count what the host wrote; return whether it wrote anything."""
    try:
        data = os.read(master_fd, _READ_CHUNK_BYTES)
    except (BlockingIOError, InterruptedError):
        return False
    counts.host_bytes += len(data)
    return bool(data)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sim replay FILE --pty LINK [--speed X]`."""
    parser = argparse.ArgumentParser(prog="icu-edge sim replay", description=__doc__.splitlines()[0])
    parser.add_argument("file", metavar="FILE", help="a recording made by `icu-edge record`")
    parser.add_argument("--pty", required=True, metavar="LINK", help="symlink to create for the pty slave")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="recorded seconds per wall-clock second (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.speed > 0:
        parser.error("--speed must be positive")
    try:
        with open(args.file, encoding="ascii", errors="replace") as source:
            recording = read_recording(source)
    except OSError as exc:
        print(f"icu-edge sim replay: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except RecordingError as exc:
        print(f"icu-edge sim replay: {args.file}: {exc}", file=sys.stderr)
        return 2
    if recording.skipped_lines:
        LOGGER.warning("%s: %d unreadable line(s) skipped", args.file, recording.skipped_lines)
    stop = threading.Event()
    restore_signals = stop_on_signals(stop, who="replay")
    try:
        counts = replay(recording=recording, link_path=args.pty, stop=stop, speed=args.speed)
    finally:
        restore_signals()
    print(
        f"replayed {args.file}: device->host {counts.device_bytes} bytes in {counts.device_chunks} chunks "
        f"({counts.skipped_bytes} bytes from before the host's first write skipped); "
        f"host wrote {counts.host_bytes} bytes (ignored)"
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
