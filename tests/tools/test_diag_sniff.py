"""`icu-edge diag sniff`: frames of a recording and of a live port, with checksum verdicts.

Unit part (sans-I/O `FrameTap`): on any bytes, in any chunking, it never raises; every frame it
reports valid is one its driver's decoder counted; a stream of valid frames is all `ok` however it is
split; ok, bad and resynced are told apart.
Integration part: a MEDIBUS simulator on a pty, `icu-edge record` between it and `diag sniff --port`
(which talks to the simulator as the daemon would); then `diag sniff FILE` decodes that recording,
and a corrupted copy of it, with the verdicts counted.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pty_rig import PtyRig, json_lines, run_cli

from drivers.base import SerialSettings
from drivers.datex.records import phdb_request
from drivers.intellivue.framing import encode_frame
from drivers.medibus.codec import Command, MedibusDecoder, Response
from drivers.recording import read_recording
from drivers.transport import open_transport
from tools.diag.sniff import PROTOCOLS, FrameTap

_CHUNKS = st.lists(st.binary(max_size=64), max_size=40)


@settings(max_examples=200, deadline=None)
@given(chunks=_CHUNKS, driver=st.sampled_from(PROTOCOLS))
def test_a_tap_never_raises_and_reports_exactly_the_decoders_frames(chunks: list[bytes], driver: str) -> None:
    tap = FrameTap(driver=driver, direction="device")
    reported = []
    for index, chunk in enumerate(chunks):
        reported += tap.feed(chunk, offset_s=float(index))
    assert tap.verdicts["ok"] + tap.verdicts["resynced"] == tap.counters.frames_in
    assert len(reported) == sum(tap.verdicts.values())
    assert sum(frame.size for frame in reported) <= sum(len(chunk) for chunk in chunks)


_MEDIBUS_DATA = st.binary(max_size=40).map(lambda b: bytes(0x20 + byte % 0x5F for byte in b))


@settings(max_examples=100, deadline=None)
@given(
    payloads=st.lists(_MEDIBUS_DATA, min_size=1, max_size=12), cuts=st.lists(st.integers(0, 600), max_size=20)
)
def test_valid_medibus_frames_are_all_ok_however_split(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(
        (Response(code=0x24, data=p) if i % 2 else Command(code=0x24, args=p)).to_bytes()
        for i, p in enumerate(payloads)
    )
    tap = FrameTap(driver="medibus", direction="device")
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, end in itertools.pairwise(bounds):
        tap.feed(stream[start:end], offset_s=0.0)
    assert tap.verdicts == {"ok": len(payloads), "resynced": 0, "bad": 0}


def _corrupt_medibus(frame: bytes) -> bytes:
    return frame[:2] + bytes([frame[2] ^ 0x01]) + frame[3:]


@pytest.mark.parametrize(
    ("driver", "good", "bad"),
    [
        (
            "medibus",
            Response(code=0x24, data=b"7D22.3").to_bytes(),
            _corrupt_medibus(Response(code=0x24, data=b"7D22.3").to_bytes()),
        ),
        (
            "intellivue",
            encode_frame(b"\xe1\x00\x00\x02" + bytes(12)),
            encode_frame(b"\xe1\x00\x00\x02" + bytes(12))[:-3] + b"\x00\x00\xc1",
        ),
        (
            "datex",
            phdb_request(interval_s=5).to_frame(),
            phdb_request(interval_s=5).to_frame()[:-2] + b"\x00\x7e",
        ),
    ],
)
def test_a_tap_tells_ok_bad_and_resynced_apart(driver: str, good: bytes, bad: bytes) -> None:
    tap = FrameTap(driver=driver, direction="device")
    verdicts = []
    for offset_s, chunk in enumerate((good, bad, good, b"noise", good)):
        verdicts += [frame.verdict for frame in tap.feed(chunk, offset_s=float(offset_s))]
    assert verdicts == ["ok", "bad", "ok", "resynced"]


# ---- integration -------------------------------------------------------------------------------------

LIVE_S = 4


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PtyRig]:
    rig = PtyRig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def sniffed(rig: PtyRig) -> tuple[list[dict[str, Any]], Path]:
    """Live-sniff a MEDIBUS simulator through a recorder; return the live JSON lines and the recording."""
    device = rig.simulator("medibus")
    host_link, recording = rig.recorder(device=device)
    done = run_cli(
        "diag", "sniff", "--port", str(host_link), "--protocol", "medibus", "--seconds", str(LIVE_S), "--json"
    )
    assert done.returncode == 0, done.stderr
    assert rig.stop("recorder") == 0, rig.log("recorder")
    return json_lines(done.stdout), recording


def _summary(lines: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    summaries = [line for line in lines if line["type"] == "summary"]
    assert len(summaries) == 1, lines[-3:]
    counts: dict[str, dict[str, int]] = summaries[0]["counts"]
    return counts


@pytest.mark.integration
def test_live_sniff_polls_like_the_daemon_and_prints_both_directions(
    sniffed: tuple[list[dict[str, Any]], Path],
) -> None:
    lines, _ = sniffed
    links = [line for line in lines if line["type"] == "link"]
    assert links[0]["state"] == "up"
    assert links[0]["detail"] == "MEDIBUS SimVent XL 01.00 06.00"
    frames = [line for line in lines if line["type"] == "frame"]
    assert "MEDIBUS command 0x51 ICC" in frames[0]["summary"]
    assert frames[0]["direction"] == "host"
    assert any("MEASURED_CP1" in f["summary"] and f["direction"] == "device" for f in frames)
    counts = _summary(lines)
    assert counts["device"]["ok"] >= LIVE_S  # one poll cycle of several answers a second
    assert counts["device"]["bad"] == counts["host"]["bad"] == 0


@pytest.mark.integration
def test_sniff_decodes_a_recording_with_every_checksum_ok(sniffed: tuple[list[dict[str, Any]], Path]) -> None:
    _, recording = sniffed
    done = run_cli("diag", "sniff", str(recording), "--json")
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    with recording.open(encoding="ascii") as source:
        chunks = read_recording(source).chunks
    expected = {
        direction: len(MedibusDecoder().feed(b"".join(c.data for c in chunks if c.direction == direction)))
        for direction in ("device", "host")
    }
    counts = _summary(lines)
    assert {d: counts[d]["ok"] for d in counts} == expected
    assert counts["device"]["bad"] == counts["host"]["bad"] == 0
    frames = [line for line in lines if line["type"] == "frame"]
    for direction in ("device", "host"):
        times = [f["offset_s"] for f in frames if f["direction"] == direction]
        assert times == sorted(times)
    text = run_cli("diag", "sniff", str(recording)).stdout
    assert f"summary (medibus): device: {expected['device']} ok, 0 resynced, 0 bad" in text


def _corrupted(recording: Path, out: Path) -> tuple[int, int]:
    """Copy recording with one data byte changed in some device frames, noise before one frame, and a
    torn last line; return (frames corrupted, noise runs inserted)."""
    lines = recording.read_text(encoding="ascii").splitlines(keepends=True)
    kept, corrupted, noise, protect = [lines[0]], 0, 0, False
    candidates = itertools.count()
    for number, line in enumerate(lines[1:]):
        chunk = json.loads(line)
        data = base64.b64decode(chunk["b"])
        if chunk["dir"] != "device":
            pass
        elif data[:1] == b"\x01" and noise == 0 and number > 10:
            garbage = {"t": chunk["t"], "dir": "device", "b": base64.b64encode(b"noise").decode()}
            kept.append(json.dumps(garbage) + "\n")
            noise, protect = 1, True  # the frame after the noise must stay valid to show as resynced
        elif data.endswith(b"\r") and len(data) >= 4:
            index = len(data) - 4  # the last byte before the checksum (or the command byte)
            changed = data[index] ^ 0x01
            if not protect and next(candidates) % 2 and 0x20 <= changed < 0x7F:
                chunk["b"] = base64.b64encode(data[:index] + bytes([changed]) + data[index + 1 :]).decode()
                corrupted += 1
                line = json.dumps(chunk) + "\n"
            protect = False
        kept.append(line)
    kept.append('{"t": 99.0, "dir": "dev')
    out.write_text("".join(kept), encoding="ascii")
    return corrupted, noise


@pytest.mark.integration
def test_sniff_counts_the_bad_frames_of_a_corrupted_recording(
    sniffed: tuple[list[dict[str, Any]], Path], tmp_path: Path
) -> None:
    _, recording = sniffed
    clean = _summary(json_lines(run_cli("diag", "sniff", str(recording), "--json").stdout))
    broken = tmp_path / "broken.rec"
    corrupted, noise = _corrupted(recording, broken)
    assert corrupted >= 3
    assert noise == 1
    done = run_cli("diag", "sniff", str(broken), "--json")
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    counts = _summary(lines)
    assert counts["device"]["bad"] == corrupted
    assert counts["device"]["resynced"] == noise
    assert counts["device"]["ok"] + counts["device"]["resynced"] == clean["device"]["ok"] - corrupted
    assert counts["host"] == clean["host"]
    assert lines[-1]["note"] == "1 unreadable recording line(s) skipped"


def test_sniff_of_a_file_that_is_no_recording_says_so(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.rec"
    bogus.write_text("hello\n", encoding="ascii")
    done = run_cli("diag", "sniff", str(bogus))
    assert done.returncode == 65
    assert "is not a recording" in done.stderr
    assert run_cli("diag", "sniff", str(tmp_path / "missing.rec")).returncode == 65
    assert run_cli("diag", "sniff").returncode == 2


@pytest.mark.integration
def test_live_sniff_refuses_a_port_the_daemon_holds(rig: PtyRig) -> None:
    served = rig.served_pty(spew=False)
    daemon_side = open_transport(str(served.link), line=SerialSettings(baud=19200))
    try:
        done = run_cli("diag", "sniff", "--port", str(served.link), "--protocol", "medibus", "--seconds", "1")
    finally:
        daemon_side.close()
    assert done.returncode == 69, done.stdout + done.stderr
    assert "port busy" in done.stderr
    assert served.received == b""
