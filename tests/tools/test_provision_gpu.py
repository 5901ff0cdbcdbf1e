"""`icu-edge provision` on a GPU box: the drop-in is installed and the TensorRT plans are built.

No GPU exists here, so the box is faked where it cannot be real: an NVIDIA device node in a
directory standing in for /dev, and the fake tensorrt + pycuda of tests/fake_gpu_stack in `works`
mode (the plan is the ONNX itself, run by onnxruntime). The broker, the unit files, systemctl and the
engines package are real.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker

from tools.provision import GPU_DROP_IN_PATH, Options, provision
from tools.provision.answers import parse_answers
from tools.provision.install import inside

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_GPU_STACK = REPO_ROOT / "tests" / "fake_gpu_stack"


def _forget_fakes() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in {"tensorrt", "pycuda"}]:
        del sys.modules[name]


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A working fake tensorrt + pycuda first on sys.path; forgotten afterwards."""
    if "tensorrt" in sys.modules or "pycuda" in sys.modules:
        pytest.skip("a real tensorrt or pycuda is loaded in this process")
    monkeypatch.setenv("FAKE_GPU_STACK", "works")
    monkeypatch.syspath_prepend(str(FAKE_GPU_STACK))
    try:
        yield
    finally:
        _forget_fakes()


def _options(root: Path, dev: Path) -> Options:
    return Options(root=root, dry_run=False, probe_deadline_s=1.0, broker_timeout_s=5.0, dev=dev)


def test_a_gpu_box_gets_the_drop_in_and_its_plans_and_a_rerun_changes_nothing(
    tmp_path: Path, broker: MosquittoBroker, fake_gpu: None, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()
    (dev / "nvidia0").touch()
    root = tmp_path / "root"
    answers = parse_answers(
        {
            "appliance": {"id": "edge-0001", "site": "hosp-a", "ward": "icu-3"},
            "broker": {"host": "127.0.0.1", "port": broker.port, "insecure": True},
            "paths": {"outbox": str(tmp_path / "outbox.db"), "engines_cache": "/var/lib/icu-edge/engines"},
            "bed": [{"id": "bed-01"}],
        }
    )

    assert provision(answers, options=_options(root, dev)) == 0
    first = capsys.readouterr().out

    drop_in = inside(root, GPU_DROP_IN_PATH)
    assert drop_in.read_bytes() == (REPO_ROOT / "systemd/icu-edge.service.d/gpu.conf").read_bytes()
    assert "gpu       new" in first, first
    assert "engines   changed" in first, first
    assert any((root / "var/lib/icu-edge/engines").rglob("*")), first

    assert provision(answers, options=_options(root, dev)) == 0
    second = capsys.readouterr().out
    assert "engines   unchanged" in second, second
    assert "provision: nothing changed" in second, second

    # The same box without its GPU: the drop-in is not installed again, nor silently removed.
    _forget_fakes()
    (dev / "nvidiactl").unlink()
    (dev / "nvidia0").unlink()
    assert provision(answers, options=_options(root, dev)) == 0
    third = capsys.readouterr().out
    assert "no NVIDIA device node" in third, third
    assert "left in place" in third, third
