"""A broken GPU stack or a tampered model must not take the vitals down (issue 6, defect 10; integrity).

The daemon runs as a real process against a real Mosquitto and a ventilator simulator on a pty, with a
fake `tensorrt` + `pycuda` first on its PYTHONPATH (tests/fake_gpu_stack: what cannot exist without a
GPU) that fails the way a broken install does: the import raises RuntimeError, the builder returns no
plan, or the build hangs. In every case systemd hears READY=1, the vitals reach the broker, the
watchdog keeps being fed, and forecasts come from onnxruntime with the reason in the log and in the
systemd status line. A model whose files differ from its SHA256SUMS is refused, named in the log, and
the daemon runs without forecasts until the files are intact again (SIGHUP looks again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Received, Subscriber, wait_for
from ward import REPO_ROOT, NotifySocket, Ward, WardLayout, bed_topic

from engines.testing import build_test_model

pytestmark = [pytest.mark.integration]

FAKE_GPU_STACK = REPO_ROOT / "tests" / "fake_gpu_stack"
BED = "bed-01"


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[NotifySocket]:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        yield notify
    finally:
        notify.close()


def _ward(tmp_path: Path, broker: MosquittoBroker, *, extra_engines_toml: str = "") -> Ward:
    engines = f'[engines]\nbackend = "auto"\ncache_dir = "{tmp_path / "engines"}"\n{extra_engines_toml}'
    return Ward(workdir=tmp_path, broker=broker, layout=WardLayout(beds=1, engines_toml=engines))


def _start(ward: Ward, systemd: NotifySocket, *, mode: str) -> None:
    ward.start_simulators()
    ward.start_daemon(
        env={
            "PYTHONPATH": f"{FAKE_GPU_STACK}:{REPO_ROOT}",
            "FAKE_GPU_STACK": mode,
            "NOTIFY_SOCKET": str(systemd.path),
            "WATCHDOG_USEC": "2000000",
        }
    )


def _forecast_backends(messages: list[Received]) -> list[str]:
    return [json.loads(m.payload)["model"]["backend"] for m in messages if m.payload]


def _assert_vitals_and_ready(ward: Ward, systemd: NotifySocket, vitals: Subscriber) -> None:
    assert systemd.wait(lambda lines: "READY=1" in lines, timeout_s=30), ward.log("daemon")
    vitals.wait_for(lambda ms: len(ms) >= 3, timeout_s=30)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("import-error", "RuntimeError: CUDA initialization failure with error: 35"),
        ("build-fails", "fake: out of device memory while building"),
    ],
)
def test_a_broken_tensorrt_falls_back_to_onnxruntime_after_ready(
    tmp_path: Path,
    broker: MosquittoBroker,
    subscribe: Callable[..., Subscriber],
    systemd: NotifySocket,
    mode: str,
    reason: str,
) -> None:
    vitals = subscribe(f"{bed_topic(BED)}/vitals")
    forecasts = subscribe(f"{bed_topic(BED)}/forecast")
    ward = _ward(tmp_path, broker)
    try:
        _start(ward, systemd, mode=mode)
        _assert_vitals_and_ready(ward, systemd, vitals)
        forecasts.wait_for(lambda ms: len(_forecast_backends(ms)) >= 1, timeout_s=60)
        assert set(_forecast_backends(forecasts.messages)) == {"onnxruntime"}
        choices = [line for line in ward.log("daemon").splitlines() if "onnxruntime because" in line]
        assert len(choices) == 1, "the choice is logged once, not per retry or per tick"
        assert reason in choices[0]
        assert systemd.wait(
            lambda lines: any(line.startswith("STATUS=") and reason in line for line in lines), timeout_s=5
        ), systemd.lines
        assert systemd.wait(lambda lines: lines.count("WATCHDOG=1") >= 3, timeout_s=10), systemd.lines
        assert ward.stop_daemon() == 0
        listing = subprocess.run(
            [sys.executable, "-m", "tools.cli", "engines", "list", "--cache-dir", str(tmp_path / "engines")],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": f"{FAKE_GPU_STACK}:{REPO_ROOT}", "FAKE_GPU_STACK": mode},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert reason in listing, listing
    finally:
        ward.close()


def test_a_hanging_tensorrt_build_neither_stops_the_vitals_nor_trips_the_watchdog(
    tmp_path: Path,
    broker: MosquittoBroker,
    subscribe: Callable[..., Subscriber],
    systemd: NotifySocket,
) -> None:
    """The build never returns: past the engines' watchdog silence (10 s) the daemon still feeds systemd,
    and after `load_timeout_s` it abandons TensorRT and forecasts on onnxruntime."""
    vitals = subscribe(f"{bed_topic(BED)}/vitals")
    forecasts = subscribe(f"{bed_topic(BED)}/forecast")
    ward = _ward(tmp_path, broker, extra_engines_toml="load_timeout_s = 15")
    try:
        _start(ward, systemd, mode="build-hangs")
        _assert_vitals_and_ready(ward, systemd, vitals)
        systemd.lines.clear()
        received_vitals = len(vitals.messages)
        # Longer than ENGINES_MIN_SILENCE_S, while the build hangs (load_timeout_s is 15 s).
        systemd.wait(lambda lines: False, timeout_s=12)
        assert forecasts.messages == [], "nothing forecast while the only engine is still loading"
        assert len(vitals.messages) > received_vitals + 5, "the vitals flow on"
        assert systemd.lines.count("WATCHDOG=1") >= 10, (systemd.lines, ward.log("daemon"))
        assert not any("watchdog withheld" in line for line in systemd.lines), systemd.lines
        assert any(line.startswith("STATUS=") and "forecasts: loading" in line for line in systemd.lines)
        forecasts.wait_for(lambda ms: len(_forecast_backends(ms)) >= 1, timeout_s=60)
        assert set(_forecast_backends(forecasts.messages)) == {"onnxruntime"}
        log = ward.log("daemon")
        assert "did not finish within 15 s" in log, log
        assert systemd.wait(lambda lines: lines.count("WATCHDOG=1") >= 3, timeout_s=10), systemd.lines
        assert ward.stop_daemon() == 0, "a hung build thread does not keep the process from exiting"
    finally:
        ward.close()


def test_a_tampered_model_is_refused_and_the_vitals_run_on(
    tmp_path: Path,
    broker: MosquittoBroker,
    subscribe: Callable[..., Subscriber],
    systemd: NotifySocket,
) -> None:
    models = tmp_path / "models"
    model = build_test_model(models, model_id="site-model", default=False)
    card_md = model.onnx_path.parent / "card.md"
    card_md.write_text("# site-model\nApproved for use.\n")  # a file the manifest does not list
    vitals = subscribe(f"{bed_topic(BED)}/vitals")
    forecasts = subscribe(f"{bed_topic(BED)}/forecast")
    ward = _ward(
        tmp_path,
        broker,
        extra_engines_toml=f'model = "site-model"\nmodels_dir = "{models}"\nreload_check_s = 3600',
    )
    try:
        ward.start_simulators()
        ward.start_daemon(env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"})
        _assert_vitals_and_ready(ward, systemd, vitals)
        refusal = f"refusing model: {card_md}: not listed in SHA256SUMS: refusing the model"
        assert systemd.wait(
            lambda lines: any("forecasts: unavailable: no model 'site-model'" in line for line in lines),
            timeout_s=10,
        ), (systemd.lines, ward.log("daemon"))
        assert ward.log("daemon").count(refusal) == 1, ward.log("daemon")
        assert forecasts.messages == []
        assert systemd.wait(lambda lines: lines.count("WATCHDOG=1") >= 3, timeout_s=10), systemd.lines
        card_md.unlink()  # the installer removes what it did not check
        assert ward.daemon is not None
        ward.daemon.send_signal(signal.SIGHUP)
        forecasts.wait_for(lambda ms: len(_forecast_backends(ms)) >= 1, timeout_s=30)
        assert ward.log("daemon").count(refusal) == 1, "named once, not at every look"
        assert ward.stop_daemon() == 0
    finally:
        ward.close()


def test_a_stop_while_tensorrt_hangs_exits_cleanly(
    tmp_path: Path, broker: MosquittoBroker, subscribe: Callable[..., Subscriber], systemd: NotifySocket
) -> None:
    """SIGTERM during a hung build: the daemon flushes and exits 0; the hung thread does not hold it."""
    vitals = subscribe(f"{bed_topic(BED)}/vitals")
    ward = _ward(tmp_path, broker)
    try:
        _start(ward, systemd, mode="build-hangs")
        _assert_vitals_and_ready(ward, systemd, vitals)
        assert systemd.wait(lambda lines: any("forecasts: loading" in line for line in lines), timeout_s=5)
        assert ward.stop_daemon(timeout_s=30) == 0, ward.log("daemon")
        assert systemd.wait(lambda lines: "STOPPING=1" in lines, timeout_s=5), systemd.lines
    finally:
        ward.close()


def test_a_hot_reload_whose_build_hangs_keeps_the_ticks_and_the_watchdog(
    tmp_path: Path,
    broker: MosquittoBroker,
    subscribe: Callable[..., Subscriber],
    systemd: NotifySocket,
) -> None:
    """SIGHUP finds a new version whose TensorRT build hangs: the running model forecasts on meanwhile."""
    models = tmp_path / "models"
    build_test_model(models, model_id="site-model", version="1.0.0", default=False)
    hang_file = tmp_path / "hang-builds"
    forecasts = subscribe(f"{bed_topic(BED)}/forecast")
    vitals = subscribe(f"{bed_topic(BED)}/vitals")
    ward = _ward(
        tmp_path,
        broker,
        extra_engines_toml=(
            f'model = "site-model"\nmodels_dir = "{models}"\nreload_check_s = 3600\nload_timeout_s = 15'
        ),
    )

    def versions(messages: list[Received]) -> list[tuple[str, str]]:
        bodies = [json.loads(m.payload) for m in messages if m.payload]
        return [(b["model"]["version"], b["model"]["backend"]) for b in bodies]

    try:
        ward.start_simulators()
        ward.start_daemon(
            env={
                "PYTHONPATH": f"{FAKE_GPU_STACK}:{REPO_ROOT}",
                "FAKE_GPU_STACK": "works",
                "FAKE_GPU_STACK_HANG_FILE": str(hang_file),
                "NOTIFY_SOCKET": str(systemd.path),
                "WATCHDOG_USEC": "2000000",
            }
        )
        _assert_vitals_and_ready(ward, systemd, vitals)
        forecasts.wait_for(lambda ms: ("1.0.0", "tensorrt") in versions(ms), timeout_s=60)
        hang_file.touch()
        build_test_model(models, model_id="site-model", version="1.1.0", default=False)
        assert ward.daemon is not None
        ward.daemon.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "building site-model@1.1.0" in ward.log("daemon"), timeout_s=10)
        systemd.lines.clear()
        before = len(forecasts.messages)
        systemd.wait(lambda lines: False, timeout_s=12)  # past ENGINES_MIN_SILENCE_S, the build hangs
        during = versions(forecasts.messages[before:])
        assert len(during) >= 8, "a forecast every tick while the new version builds"
        assert set(during) == {("1.0.0", "tensorrt")}
        assert systemd.lines.count("WATCHDOG=1") >= 10, (systemd.lines, ward.log("daemon"))
        assert not any("watchdog withheld" in line for line in systemd.lines), systemd.lines
        forecasts.wait_for(lambda ms: ("1.1.0", "onnxruntime") in versions(ms), timeout_s=30)
        assert "TensorRT load of site-model@1.1.0 did not finish within 15 s; abandoned" in ward.log("daemon")
        assert ward.stop_daemon() == 0
    finally:
        ward.close()
