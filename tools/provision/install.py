"""What provision installs, under a root (`/`, or `--root DIR` as `systemctl --root` takes it).

Each file is planned first (its new bytes, mode and owner against what is there), so a dry run can
show the change and a second run can see that nothing differs. A file is written to a temporary file
beside it, given its mode and owner, and renamed over the old one: a reader (the daemon, systemd)
sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import grp
import importlib
import io
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "icu-edge"
UNIT_NAME = "icu-edge.service"


def shipped_systemd_dir() -> Path | None:
    """Return the shipped systemd files (unit, sysusers, tmpfiles, drop-ins), None if absent.

    A source checkout has them in systemd/; an installed wheel in {prefix}/share/icu-edge/systemd
    (pyproject's data-files).
    """
    for folder in (
        Path(__file__).resolve().parents[2] / "systemd",
        Path(sys.prefix) / "share/icu-edge/systemd",
    ):
        if (folder / UNIT_NAME).is_file():
            return folder
    return None


def inside(root: Path, path: Path) -> Path:
    """Return where `path` (as the box sees it) lies under root."""
    return root / path.relative_to(path.anchor)


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """Who owns an installed secret-bearing file, and how it is named in messages."""

    uid: int
    gid: int
    name: str
    problem: str | None = None
    """Why the owner is not the one intended (the service group is missing), None when it is."""


def _group_in(root: Path, name: str) -> int | None:
    if root == Path("/"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None
    with contextlib.suppress(OSError):
        for line in (root / "etc/group").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
    return None


def user_exists(root: Path, name: str = SERVICE_USER) -> bool:
    """Return whether the root's user database has the user."""
    if root == Path("/"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True
    with contextlib.suppress(OSError):
        return any(
            line.split(":", 1)[0] == name
            for line in (root / "etc/passwd").read_text(encoding="utf-8").splitlines()
        )
    return False


def config_owner(root: Path) -> Owner:
    """Return root:icu-edge when run as root, else the current user and group (a test or a dry run)."""
    if os.geteuid() != 0:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        return Owner(uid=os.geteuid(), gid=os.getegid(), name=f"{user}:{group}")
    gid = _group_in(root, SERVICE_USER)
    if gid is None:
        return Owner(
            uid=0,
            gid=0,
            name="root:root",
            problem=f"group {SERVICE_USER} does not exist yet, so the daemon cannot read the config",
        )
    return Owner(uid=0, gid=gid, name=f"root:{SERVICE_USER}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FilePlan:
    """One file to install: where, the bytes, mode and owner, and what is there now."""

    target: Path
    """The path under the root."""
    shown: Path
    """The path as the box sees it (what messages name)."""
    content: bytes
    mode: int
    owner: Owner | None
    """None: whoever runs provision (root on a box) owns it."""
    old: bytes | None
    old_mode: int | None
    old_ids: tuple[int, int] | None

    @property
    def status(self) -> str:
        """`new`, `changed` (bytes, mode or owner differ) or `unchanged`."""
        if self.old is None:
            return "new"
        if self.old != self.content or self.old_mode != self.mode:
            return "changed"
        if self.owner is not None and self.old_ids != (self.owner.uid, self.owner.gid):
            return "changed"
        return "unchanged"

    def diff(self) -> list[str]:
        """Return a unified diff of the text from what is there to what would be written."""
        old = (self.old or b"").decode("utf-8", "replace").splitlines(keepends=True)
        new = self.content.decode("utf-8", "replace").splitlines(keepends=True)
        where = str(self.shown)
        lines = list(
            difflib.unified_diff(old, new, fromfile=f"{where} (now)", tofile=f"{where} (provisioned)")
        )
        if not lines and self.status == "changed":
            lines = [
                f"{where}: mode or owner changes to {self.mode:04o} {self.owner.name if self.owner else ''}"
            ]
        return [line if line.endswith("\n") else line + "\n" for line in lines]


def plan_file(*, root: Path, path: Path, content: bytes, mode: int, owner: Owner | None = None) -> FilePlan:
    """Compare what provision would write at path (as the box sees it) with what is there."""
    target = inside(root, path)
    try:
        info = target.stat()
        old: bytes | None = target.read_bytes()
        old_mode: int | None = info.st_mode & 0o7777
        old_ids: tuple[int, int] | None = (info.st_uid, info.st_gid)
    except FileNotFoundError:
        old, old_mode, old_ids = None, None, None
    return FilePlan(
        target=target,
        shown=path,
        content=content,
        mode=mode,
        owner=owner,
        old=old,
        old_mode=old_mode,
        old_ids=old_ids,
    )


def write_atomic(plan: FilePlan, *, check: Callable[[Path], list[str]] | None = None) -> list[str]:
    """Write the plan's file: a temporary file beside it, its mode and owner, `check`, rename.

    Returns check's error lines (nothing was replaced then) or an empty list when the file is in place.
    """
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=plan.target.parent, prefix=f".{plan.target.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(plan.content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, plan.mode)
        if plan.owner is not None:
            os.chown(temporary, plan.owner.uid, plan.owner.gid)
        problems = check(temporary) if check is not None else []
        if problems:
            return problems
        os.replace(temporary, plan.target)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(plan.target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return []


def run_command(argv: list[str], *, timeout_s: float = 60.0) -> tuple[int, str]:
    """Run a system command; return its exit status and its output (stdout and stderr) stripped."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return result.returncode, (result.stdout + result.stderr).strip()


def root_option(root: Path) -> list[str]:
    """Return `--root=DIR` for the systemd tools, nothing for the running system."""
    return [] if root == Path("/") else [f"--root={root}"]


GPU_NODES = ("nvidiactl", "nvidia[0-9]*", "nvidia-uvm", "nvhost-*", "nvmap", "nvgpu")
"""Device nodes of an NVIDIA GPU: the desktop driver's and the Jetson's (Tegra)."""


def gpu_usable(*, dev: Path = Path("/dev")) -> tuple[bool, str]:
    """Return whether the GPU drop-in belongs on this box: an NVIDIA device node and TensorRT importable."""
    nodes = sorted({hit for pattern in GPU_NODES for hit in glob.glob(str(dev / pattern))})
    if not nodes:
        return False, f"no NVIDIA device node ({dev}/nvidia*, {dev}/nvhost-*, {dev}/nvmap)"
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001 - a broken GPU stack fails in many ways: each is the answer
        return (
            False,
            f"{', '.join(nodes[:3])} present, but TensorRT is not importable ({type(exc).__name__}: {exc})",
        )
    return True, f"{', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''} present and TensorRT importable"


def engines_command(argv: list[str]) -> tuple[int, str]:
    """Run `icu-edge engines ARGV` in this process (the engines package, no copy); return status, output."""
    from engines.cli import main as engines_main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = engines_main(argv)
    return status, output.getvalue().strip()


def systemctl() -> str | None:
    """Return the systemctl executable, None where there is none."""
    return shutil.which("systemctl")
