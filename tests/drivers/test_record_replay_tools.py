"""`icu-edge record` and `icu-edge sim replay` on real ptys, in process: relay, record, replay, errors."""

from __future__ import annotations

import io
import os
import select
import threading
import time
import tty
from pathlib import Path

import pytest

from drivers import record as record_tool
from drivers import replay as replay_tool
from drivers.base import SerialSettings
from drivers.recording import Chunk, RecordingHeader, chunk_line, header_line, read_recording
from drivers.transport import open_transport
from tools.mqtt_collector import wait_for

HEADER = RecordingHeader(created="2026-12-01T04:00:00+00:00", port="/dev/ttyS0", baud=19200)


def _read_some(fd: int, *, want: int, timeout_s: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < want and time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.05)
        if readable:
            data += os.read(fd, 4096)
    return data


def test_the_recorder_relays_both_ways_and_records_each_direction(tmp_path: Path) -> None:
    device_master, device_slave = os.openpty()
    tty.setraw(device_slave)
    link = tmp_path / "link"
    out = io.StringIO()
    stop = threading.Event()
    device = open_transport(os.ttyname(device_slave), line=SerialSettings(baud=19200), read_timeout_s=0.01)
    result: list[tuple[record_tool.RecordCounts, str | None]] = []
    worker = threading.Thread(
        target=lambda: result.append(
            record_tool.record(device=device, link_path=str(link), out=out, header=HEADER, stop=stop)
        )
    )
    worker.start()
    try:
        assert wait_for(link.exists, timeout_s=5)
        host = os.open(link, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(host)
        os.write(device_master, b"\x1b\x06from-device")
        assert _read_some(host, want=13) == b"\x1b\x06from-device"
        os.write(host, b"\x1bQfrom-host")
        assert _read_some(device_master, want=11) == b"\x1bQfrom-host"
        os.close(host)
    finally:
        stop.set()
        worker.join(timeout=5)
        device.close()
        os.close(device_master)
        os.close(device_slave)
    counts, failure = result[0]
    assert failure is None
    assert not link.exists()
    recording = read_recording(out.getvalue().splitlines(keepends=True))
    assert recording.header == HEADER
    assert b"".join(c.data for c in recording.chunks if c.direction == "device") == b"\x1b\x06from-device"
    assert b"".join(c.data for c in recording.chunks if c.direction == "host") == b"\x1bQfrom-host"
    assert counts.bytes == {"device": 13, "host": 11}
    offsets = [c.offset_s for c in recording.chunks]
    assert offsets == sorted(offsets)


def test_the_replay_starts_at_the_hosts_first_write_and_plays_the_device_side(tmp_path: Path) -> None:
    chunks = [
        Chunk(offset_s=0.0, direction="device", data=b"before anyone listened"),
        Chunk(offset_s=1.0, direction="host", data=b"ICC"),
        Chunk(offset_s=1.1, direction="device", data=b"answer-1"),
        Chunk(offset_s=1.3, direction="host", data=b"REQ"),
        Chunk(offset_s=1.4, direction="device", data=b"answer-2"),
    ]
    recording = read_recording(
        (header_line(HEADER) + "".join(chunk_line(c) for c in chunks)).splitlines(keepends=True)
    )
    link = tmp_path / "link"
    stop = threading.Event()
    result: list[replay_tool.ReplayCounts] = []
    worker = threading.Thread(
        target=lambda: result.append(replay_tool.replay(recording=recording, link_path=str(link), stop=stop))
    )
    worker.start()
    try:
        assert wait_for(link.exists, timeout_s=5)
        host = os.open(link, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(host)
        assert _read_some(host, want=1, timeout_s=0.5) == b"", "nothing plays before the host writes"
        os.write(host, b"ICC")
        assert _read_some(host, want=16) == b"answer-1answer-2"
        os.close(host)
        worker.join(timeout=5)
    finally:
        stop.set()
        worker.join(timeout=5)
    counts = result[0]
    assert (counts.device_bytes, counts.device_chunks, counts.skipped_bytes) == (16, 2, 22)
    assert counts.host_bytes == 3
    assert not link.exists()


def test_replay_of_a_file_that_is_no_recording_is_a_clear_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "capture.bin"
    bad.write_bytes(b"\x1b\x06\x00\xff not a recording\n")
    assert replay_tool.main([str(bad), "--pty", str(tmp_path / "link")]) == 2
    assert "is not a recording header" in capsys.readouterr().err
    assert replay_tool.main([str(tmp_path / "missing.rec"), "--pty", str(tmp_path / "link")]) == 69


def test_record_from_a_port_that_is_not_there_exits_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = record_tool.main(
        [
            "--device",
            str(tmp_path / "no-such-tty"),
            "--pty",
            str(tmp_path / "link"),
            "--out",
            str(tmp_path / "f"),
        ]
    )
    assert status == 69
    assert "cannot open" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_record_stops_after_seconds_and_says_what_it_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device_master, device_slave = os.openpty()
    tty.setraw(device_slave)
    out = tmp_path / "vent.rec"
    port = os.ttyname(device_slave)
    # the device speaks once the recorder has the port open (opening a port drops what waited on it)
    speaks = threading.Timer(0.2, lambda: os.write(device_master, b"\x1b\x06hello"))
    speaks.start()
    try:
        status = record_tool.main(
            [
                *("--device", port, "--pty", str(tmp_path / "link"), "--out", str(out)),
                *("--seconds", "0.5", "--parity", "N", "--note", "bed 7 ventilator"),
            ]
        )
    finally:
        speaks.join()
        os.close(device_master)
        os.close(device_slave)
    assert status == 0
    printed = capsys.readouterr().out
    assert "device->host 7 bytes in " in printed
    assert "host->device 0 bytes in 0 chunks" in printed
    with out.open(encoding="ascii") as source:
        recording = read_recording(source)
    assert (recording.header.port, recording.header.parity, recording.header.note) == (
        port,
        "N",
        "bed 7 ventilator",
    )
    assert b"".join(c.data for c in recording.chunks) == b"\x1b\x06hello"
