"""What an installer gets: the wheel, built for real and installed outside the source tree.

The installed copy must find the shipped models through the package (`engines/models/` next to
`engines/catalog.py`), not through this checkout: the command runs from another directory, with
PYTHONPATH unset, in a fresh venv that sees only the wheel and the third-party dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from edge import appliance_version

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
"""Without PYTHONPATH: an installer's shell does not point into the source tree (nor at its egg-info)."""

_PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q")
"""This venv's pip, offline: the build uses the build backend installed here (the dev extra)."""

_NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


def _setuptools_major() -> int:
    return int(metadata.version("setuptools").split(".")[0])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel offline (the build backend from this venv) and install it into a fresh venv."""
    if _setuptools_major() < 77:
        pytest.skip("building the wheel needs setuptools>=77 (the dev extra): pip install -e '.[dev]'")
    work = tmp_path_factory.mktemp("wheel")
    # A copy without build outputs: setuptools reuses a stale build/ (a wheel of other package data).
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    dist = work / "dist"
    # What an installer runs (`python -m build --wheel`), offline: no isolated build environment, the
    # build backend of this venv.
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
        cwd=work,
        env=_ENV,
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = dist.glob("icu_edge-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=_ENV, check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    subprocess.run(
        [str(python), *_PIP[1:], "install", "--no-index", "--no-deps", str(wheel)],
        cwd=work,  # not a checkout: `-m` puts the cwd on sys.path, and an egg-info there reads as installed
        env=_ENV,
        check=True,
        timeout=300,
    )
    # Then the dependencies: this venv's site-packages added as a plain path, after the install (pip
    # must not see this checkout's editable install there). A .pth file's paths are not site dirs, so
    # their .pth files (that editable install among them) are not processed.
    (Path(purelib) / "icu_edge_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, env=_ENV, capture_output=True, text=True, timeout=120, check=False
    )


def test_installed_wheel_lists_the_shipped_default_model(installed: Path, tmp_path: Path) -> None:
    result = _run(
        installed,
        str(installed / "bin" / "python"),
        "-m",
        "tools.cli",
        "engines",
        "list",
        "--json",
        "--cache-dir",
        str(tmp_path / "plans"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    models_dir = Path(listing["models_dir"])
    assert models_dir.is_relative_to(installed), f"models found outside the installed copy: {models_dir}"
    assert listing["refused"] == []
    defaults = [m for m in listing["models"] if m["default"]]
    assert [f"{m['id']}@{m['version']}" for m in defaults] == ["nlinear-q@2.0.0"]
    assert {m["id"] for m in listing["models"]} >= {"nlinear-q", "persistence"}
    assert all(m["reference"] for m in listing["models"])


def test_installed_console_script_prints_the_version(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, str(installed / "bin" / "icu-edge"), "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"icu-edge {appliance_version()}"


def test_installed_wheel_runs_the_default_model_on_onnxruntime(installed: Path, tmp_path: Path) -> None:
    """The installed default model's files match its manifest and card, and onnxruntime reproduces it."""
    result = _run(
        installed,
        str(installed / "bin" / "icu-edge"),
        "engines",
        "verify",
        "--backend",
        "onnxruntime",
        "--cache-dir",
        str(tmp_path / "plans"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nlinear-q@2.0.0 on onnxruntime" in result.stdout, result.stdout


def test_installed_wheel_carries_the_systemd_files_provision_installs(
    installed: Path, tmp_path: Path
) -> None:
    result = _run(
        installed,
        str(installed / "bin" / "python"),
        "-c",
        "from tools.provision.install import shipped_systemd_dir; print(shipped_systemd_dir())",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder.is_relative_to(installed), f"systemd files found outside the installed copy: {folder}"
    for name in (
        "icu-edge.service",
        "icu-edge.sysusers.conf",
        "icu-edge.tmpfiles.conf",
        "icu-edge.service.d/gpu.conf",
    ):
        assert (folder / name).read_bytes() == (ROOT / "systemd" / name).read_bytes(), name
