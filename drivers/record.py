"""`icu-edge record`: sit between a device and the daemon on a pty and record both directions.

The recorder opens the real device port (a device path or socket://host:port, opened and locked as the
daemon would open it) and a new pty whose slave it links at `--pty LINK`; the daemon's config names
LINK as the device's port while recording. Every chunk that crosses, either way, is relayed at once
and written to the recording (`drivers.recording`) with its direction and its time since the start.
It stops on SIGINT / SIGTERM, after `--seconds`, or when the device port fails, and then prints how
many bytes went each way.

Threads: one. The loop waits at most `POLL_S` for the device, then drains what the host wrote, so a
chunk's time is accurate to about `POLL_S`; the recording file belongs to this loop alone.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import select
import sys
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from drivers.base import SerialSettings
from drivers.pty_link import remove_symlink, replace_symlink, stop_on_signals, write_available
from drivers.recording import Chunk, Direction, RecordingHeader, chunk_line, header_line
from drivers.transport import Transport, TransportError, open_transport, port_problem

LOGGER = logging.getLogger(__name__)

EX_UNAVAILABLE = 69
POLL_S = 0.01
_READ_CHUNK_BYTES = 4096


@dataclass(slots=True)
class RecordCounts:
    """Bytes and chunks recorded per direction."""

    bytes: dict[Direction, int] = field(default_factory=lambda: {"device": 0, "host": 0})
    chunks: dict[Direction, int] = field(default_factory=lambda: {"device": 0, "host": 0})


class _Writer:
    """Appends chunks to the recording, stamped with the time since the recording began."""

    def __init__(self, *, out: TextIO, start_s: float) -> None:
        self._out = out
        self._start_s = start_s
        self.counts = RecordCounts()

    def add(self, direction: Direction, data: bytes, *, now_s: float) -> None:
        self._out.write(chunk_line(Chunk(offset_s=now_s - self._start_s, direction=direction, data=data)))
        self.counts.bytes[direction] += len(data)
        self.counts.chunks[direction] += 1


def record(
    *,
    device: Transport,
    link_path: str,
    out: TextIO,
    header: RecordingHeader,
    stop: threading.Event,
    duration_s: float | None = None,
) -> tuple[RecordCounts, str | None]:
    """Relay device <-> pty at link_path and record both ways; return the counts and why it ended early."""
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        os.set_blocking(master_fd, False)
        slave_path = os.ttyname(slave_fd)
        out.write(header_line(header))
        start_s = time.monotonic()
        writer = _Writer(out=out, start_s=start_s)
        replace_symlink(link_path=link_path, target=slave_path)
        LOGGER.info("recording %s <-> %s -> %s", device.url, link_path, slave_path)
        try:
            failure = _relay(
                device=device,
                master_fd=master_fd,
                writer=writer,
                stop=stop,
                end_s=None if duration_s is None else start_s + duration_s,
            )
        finally:
            remove_symlink(link_path=link_path, target=slave_path)
    finally:
        os.close(master_fd)
        os.close(slave_fd)
    return writer.counts, failure


def _relay(
    *, device: Transport, master_fd: int, writer: _Writer, stop: threading.Event, end_s: float | None
) -> str | None:
    while not stop.is_set():
        try:
            from_device = device.read(max_bytes=_READ_CHUNK_BYTES)
        except TransportError as exc:
            return str(exc)
        now_s = time.monotonic()
        if from_device:
            write_available(master_fd, from_device)
            writer.add("device", from_device, now_s=now_s)
        readable, _, _ = select.select([master_fd], [], [], 0)
        if readable:
            try:
                from_host = os.read(master_fd, _READ_CHUNK_BYTES)
            except (BlockingIOError, InterruptedError):
                from_host = b""
            if from_host:
                writer.add("host", from_host, now_s=time.monotonic())
                try:
                    device.write(from_host)
                except TransportError as exc:
                    return str(exc)
        if end_s is not None and now_s >= end_s:
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `record --device PORT --pty LINK --out FILE [--seconds N] [line settings]`."""
    parser = argparse.ArgumentParser(prog="icu-edge record", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", required=True, metavar="PORT", help="the real device port (path or socket://)"
    )
    parser.add_argument(
        "--pty", required=True, metavar="LINK", help="symlink to create; point the config at it"
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="recording to write (JSON Lines)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--baud", type=int, default=19200, help="device line speed (default: %(default)s)")
    parser.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    parser.add_argument(
        "--parity", choices=["N", "E", "O"], default="E", help="parity (default: %(default)s, MEDIBUS)"
    )
    parser.add_argument("--stopbits", type=float, choices=[1, 2], default=1)
    parser.add_argument("--rtscts", action="store_true", help="RTS/CTS flow control (Datex S/5)")
    parser.add_argument("--note", default="", help="free text kept in the recording's header")
    args = parser.parse_args(argv)
    problem = port_problem(args.device)
    if problem is not None:
        parser.error(f"--device {args.device}: {problem}")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    line = SerialSettings(
        baud=args.baud, bytesize=args.bytesize, parity=args.parity, stopbits=args.stopbits, rtscts=args.rtscts
    )
    try:
        device = open_transport(args.device, line=line, read_timeout_s=POLL_S)
    except TransportError as exc:
        print(f"icu-edge record: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    header = RecordingHeader(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        port=args.device,
        baud=line.baud,
        bytesize=line.bytesize,
        parity=line.parity,
        stopbits=line.stopbits,
        note=args.note,
    )
    stop = threading.Event()
    restore_signals = stop_on_signals(stop, who="recorder")
    try:
        with open(args.out, "w", encoding="ascii", buffering=1) as out:
            counts, failure = record(
                device=device, link_path=args.pty, out=out, header=header, stop=stop, duration_s=args.seconds
            )
    except OSError as exc:
        print(f"icu-edge record: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    finally:
        device.close()
        restore_signals()
    print(
        f"recorded to {args.out}: device->host {counts.bytes['device']} bytes in {counts.chunks['device']} "
        f"chunks, host->device {counts.bytes['host']} bytes in {counts.chunks['host']} chunks"
    )
    if failure is not None:
        print(f"icu-edge record: stopped early: {failure}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
