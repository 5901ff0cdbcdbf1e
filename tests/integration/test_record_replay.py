"""Record and replay a ventilator's serial line, with real processes, real ptys and a real Mosquitto.

Run 1 (record): MEDIBUS simulator on pty A <- `icu-edge record --device A --pty B` -> daemon on B.
Run 2 (replay): `icu-edge sim replay FILE --pty C` -> a second daemon on C, same config otherwise.

What is compared, and why it is fair: the sequence of valid (key, value) pairs of the ventilator's
vitals batches, in order, as a central station receives them. The daemon publishes one batch per decoded
measured-data response, so the same sequence means the replayed bytes reached the daemon and decoded to
the same readings in the same order. With the steady patient every batch is the same, so the steady run
only shows the replay answers at all; the deteriorating patient at scenario speed 20 changes its values
from batch to batch (its wobble and its ramp), so there a matching sequence can only come from the
recorded bytes, not from a coincidence. The batch count may differ at the end (a daemon stopped sooner
or later by a fraction of a poll), so run 2's sequence is compared with the same-length prefix of run 1's.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Received, Subscriber, wait_for
from ward import Ward, WardLayout, bed_topic

from drivers.medibus.codec import MedibusDecoder, Response
from drivers.medibus.codes import CommandCode
from drivers.recording import read_recording
from edge.model import VitalsMessage

pytestmark = pytest.mark.integration

BED = "bed-01"
MIN_BATCHES = 8


@pytest.fixture
def wards(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[Ward, Ward]]:
    (tmp_path / "record").mkdir()
    (tmp_path / "replay").mkdir()
    recorded = Ward(workdir=tmp_path / "record", broker=broker, layout=WardLayout())
    replayed = Ward(workdir=tmp_path / "replay", broker=broker, layout=WardLayout())
    try:
        yield recorded, replayed
    finally:
        recorded.close()
        replayed.close()


def _batches(messages: list[Received]) -> list[tuple[tuple[str, float | None], ...]]:
    """Return each vitals batch of the ventilator as its valid (key, value) pairs, in arrival order."""
    batches = []
    for message in messages:
        if message.topic != f"{bed_topic(BED)}/vitals":
            continue
        vitals = VitalsMessage.model_validate_json(message.payload)
        pairs = tuple(sorted((o.key, o.value) for o in vitals.observations if o.valid))
        if pairs:
            batches.append(pairs)
    return batches


def _link_up(link: Path) -> bool:
    return link.exists() and os.path.exists(os.path.realpath(link))


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


@pytest.mark.parametrize(("scenario", "speed"), [("steady", "1"), ("deteriorating", "20")])
def test_a_replayed_recording_gives_the_daemon_the_recorded_values(
    wards: tuple[Ward, Ward], subscribe: Callable[..., Subscriber], scenario: str, speed: str
) -> None:
    recorded, replayed = wards
    device_link = recorded.workdir / "device-A"
    daemon_link = recorded.links[BED]
    recording = recorded.workdir / "vent.rec"

    # run 1: simulator on A, recorder between A and B, daemon on B
    station = subscribe(f"{bed_topic(BED)}/#")
    simulator = recorded.spawn(
        "simulator",
        ["tools.cli", "sim", "medibus", "--pty", str(device_link), "--scenario", scenario, "--speed", speed],
    )
    recorded.simulators[BED] = simulator
    assert wait_for(lambda: _link_up(device_link), timeout_s=15), recorded.log("simulator")
    recorder = recorded.spawn(
        "recorder",
        [
            "tools.cli",
            "record",
            "--device",
            str(device_link),
            "--pty",
            str(daemon_link),
            "--out",
            str(recording),
        ],
    )
    recorded.monitors["recorder"] = recorder
    assert wait_for(lambda: _link_up(daemon_link), timeout_s=15), recorded.log("recorder")
    recorded.start_daemon()
    assert wait_for(lambda: len(_batches(station.messages)) >= MIN_BATCHES, timeout_s=60), recorded.log(
        "daemon"
    )
    assert recorded.stop_daemon() == 0, recorded.log("daemon")
    assert _stop(recorder) == 0, recorded.log("recorder")
    first = _batches(station.messages)

    # the recording holds both directions, and its device bytes hold every frame the daemon decoded
    with recording.open(encoding="ascii") as source:
        taken = read_recording(source)
    assert taken.skipped_lines == 0
    assert taken.bytes_in("device") > 0
    assert taken.bytes_in("host") > 0
    decoder = MedibusDecoder()
    frames = []
    for chunk in taken.chunks:
        if chunk.direction == "device":
            frames.extend(decoder.feed(chunk.data))
    measured = [f for f in frames if isinstance(f, Response) and f.code == CommandCode.MEASURED_CP1]
    # one vitals batch per measured-data response; the recorder, stopped after the daemon, may hold
    # one more (the answer to a request the daemon sent just before it stopped)
    assert len(first) <= len(measured) <= len(first) + 1, (len(first), len(measured))
    assert f"device->host {taken.bytes_in('device')} bytes" in recorded.log("recorder")

    # run 2: replay of the recording on C, a fresh daemon on C
    station = subscribe(f"{bed_topic(BED)}/#")
    replay_link = replayed.links[BED]
    player = replayed.spawn(
        "replay", ["tools.cli", "sim", "replay", str(recording), "--pty", str(replay_link)]
    )
    replayed.simulators[BED] = player
    assert wait_for(lambda: _link_up(replay_link), timeout_s=15), replayed.log("replay")
    replayed.start_daemon()
    assert player.wait(timeout=120) == 0, replayed.log("replay")
    assert wait_for(lambda: len(_batches(station.messages)) >= len(first) - 1, timeout_s=20), replayed.log(
        "daemon"
    )
    assert replayed.stop_daemon() == 0, replayed.log("daemon")
    second = _batches(station.messages)
    print(f"batches recorded {len(first)}, replayed {len(second)}, distinct {len(set(first))}")

    assert len(second) >= len(first) - 1, (first, second)
    assert second[: len(first)] == first[: len(second)]
    if scenario == "deteriorating":
        assert len(set(first)) > 1, "the deteriorating run must show changing values"
