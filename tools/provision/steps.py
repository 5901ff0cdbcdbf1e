"""The steps of `icu-edge provision`, in the order it runs them; each prints its line as it ends.

Phase 1 checks and changes nothing (devices, the config through `check_config`, the broker); phase 2
installs, each file compared with what is there first (service account, config directory, config,
engines, unit and GPU drop-in, enable). A step that cannot go on raises `Stop` with its lines and
exit code.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edge.config import AppConfig, check_config
from tools.provision.answers import DEFAULT_EXECUTABLE, Answers
from tools.provision.broker import BrokerProblem, check_tls, round_trip
from tools.provision.install import (
    UNIT_NAME,
    FilePlan,
    Owner,
    config_owner,
    engines_command,
    gpu_usable,
    inside,
    plan_file,
    root_option,
    run_command,
    systemctl,
    user_exists,
    write_atomic,
)
from tools.provision.ports import port_missing, probe_device, resolve_port, serial_ports

EX_OK = 0
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CONFIG = 78

SYSUSERS_PATH = Path("/usr/lib/sysusers.d/icu-edge.conf")
TMPFILES_PATH = Path("/usr/lib/tmpfiles.d/icu-edge.conf")
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
GPU_DROP_IN_PATH = Path("/etc/systemd/system/icu-edge.service.d/gpu.conf")
CONFIG_DIR = Path("/etc/icu-edge")


class Stop(Exception):
    """Provisioning stops here: the lines say why, the exit code what kind of problem."""

    def __init__(self, lines: list[str], *, exit_code: int) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.exit_code = exit_code


@dataclass
class Progress:
    """One line per step with its outcome, printed as the step ends; counts changes and warnings."""

    dry_run: bool
    changes: int = 0
    warnings: list[str] = field(default_factory=list)

    def step(self, name: str, outcome: str, detail: str) -> None:
        """Print a step's line; `changed`/`new` count as changes, `warning` as a warning."""
        if outcome in {"changed", "new", "created"}:
            self.changes += 1
            if self.dry_run:
                outcome = f"would: {outcome}"
        if outcome == "warning":
            self.warnings.append(detail)
        print(f"{name:<9} {outcome:<16} {detail}", flush=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """How this run behaves (from the command line)."""

    root: Path
    dry_run: bool
    probe_deadline_s: float
    broker_timeout_s: float
    dev: Path = Path("/dev")


# --- phase 1: check, change nothing ---------------------------------------------------------------


def resolve_devices(
    answers: Answers, *, options: Options, progress: Progress
) -> dict[tuple[str, str], dict[str, object]]:
    """Resolve every device's port and driver (probing where asked); stop at a missing port."""
    ports = serial_ports()
    named = {
        os.path.realpath(resolve_port(device.port)): f"{bed.id}/{device.id}"
        for bed in answers.bed
        for device in bed.device
        if device.port is not None
    }
    listed = ", ".join(
        f"{Path(path).name} -> {node} ({named.get(node, 'not in the answers')})" for path, node in ports
    )
    progress.step("ports", "ok", f"{len(ports)} under /dev/serial/by-id" + (f": {listed}" if listed else ""))
    devices: dict[tuple[str, str], dict[str, object]] = {}
    for bed in answers.bed:
        for device in bed.device:
            name = f"{bed.id}/{device.id}"
            port = resolve_port(device.port) if device.port is not None else None
            if port is not None:
                missing = port_missing(port)
                if missing is not None:
                    raise Stop([f"bed {bed.id} device {device.id}: port {missing}"], exit_code=EX_UNAVAILABLE)
            found: dict[str, object] = {}
            how = f"{device.driver} (named in the answers)"
            if device.probe:
                assert port is not None  # DeviceAnswers: probe needs a port
                found, line = probe_device(port, deadline_s=options.probe_deadline_s)
                if not found:
                    raise Stop(
                        [f"bed {bed.id} device {device.id}: probe of {port}: {line}"],
                        exit_code=EX_UNAVAILABLE,
                    )
                how = f"probed: {line}"
            where = port or device.address or device.listen
            fields: dict[str, object] = {"id": device.id, "driver": device.driver or found["driver"]}
            for connection, endpoint in (
                ("port", port),
                ("address", device.address),
                ("listen", device.listen),
            ):
                if endpoint is not None:
                    fields[connection] = endpoint
            for line_setting in ("baud", "parity"):
                setting = getattr(device, line_setting)
                if setting is None:
                    setting = found.get(line_setting)
                if setting is not None:
                    fields[line_setting] = setting
            probed_options = found.get("options")
            merged = {**(probed_options if isinstance(probed_options, dict) else {}), **device.options}
            if merged:
                fields["options"] = merged
            devices[(bed.id, device.id)] = fields
            progress.step("device", "ok", f"{name} on {where}: {how}")
    return devices


def checked_config(text: str, *, progress: Progress) -> AppConfig:
    """Check the config text as the daemon will, from a temporary file; stop with its error lines."""
    with tempfile.TemporaryDirectory(prefix="icu-edge-provision-") as folder:
        path = Path(folder) / "config.toml"
        path.write_text(text, encoding="utf-8")
        checked = check_config(path)
    if checked.config is None:
        raise Stop([f"config: {line}" for line in checked.errors], exit_code=EX_CONFIG)
    for line in checked.warnings:
        progress.step("config", "warning", line)
    beds = checked.config.bed
    progress.step(
        "config", "ok", f"checked: {len(beds)} bed(s), {sum(len(b.device) for b in beds)} device(s)"
    )
    return checked.config


def check_broker(config: AppConfig, *, options: Options, progress: Progress) -> None:
    """Check the TLS handshake and a publish/subscribe round trip; stop with the broker's one line."""
    try:
        progress.step("broker", "ok", check_tls(config.mqtt, timeout_s=options.broker_timeout_s))
        progress.step("broker", "ok", round_trip(config, timeout_s=options.broker_timeout_s))
    except BrokerProblem as exc:
        raise Stop([exc.line], exit_code=exc.exit_code) from exc


def refuse_running_service(root: Path) -> None:
    """A running daemon holds the ports and the broker identity that provisioning probes and uses."""
    command = systemctl()
    if root != Path("/") or command is None:
        return
    status, _ = run_command([command, "is-active", "--quiet", UNIT_NAME])
    if status == 0:
        raise Stop(
            [f"{UNIT_NAME} is running: stop it first (systemctl stop icu-edge), then provision and start it"],
            exit_code=EX_UNAVAILABLE,
        )


# --- phase 2: install -----------------------------------------------------------------------------


def _install_file(plan: FilePlan, *, step: str, options: Options, progress: Progress) -> bool:
    """Install one file unless it is already as planned; return whether it changed (or would)."""
    status = plan.status
    progress.step(step, status, f"{plan.shown}")
    if status == "unchanged":
        return False
    if options.dry_run:
        sys.stdout.writelines(f"    {line}" for line in plan.diff())
        return True
    write_atomic(plan)
    return True


def _unit_text(shipped: Path, answers: Answers) -> bytes:
    """The shipped unit, its ExecStart pointed at this install's entry point and config."""
    text = (shipped / UNIT_NAME).read_text(encoding="utf-8")
    paths = answers.paths
    if paths.executable == DEFAULT_EXECUTABLE and paths.config == CONFIG_DIR / "config.toml":
        return text.encode()
    lines = [
        f"ExecStart={paths.executable} run --config {paths.config}" if line.startswith("ExecStart=") else line
        for line in text.splitlines()
    ]
    return ("\n".join(lines) + "\n").encode()


def install_service_account(shipped: Path, *, options: Options, progress: Progress) -> None:
    """Install the sysusers and tmpfiles snippets and apply them: user icu-edge, /etc/icu-edge."""
    plan = plan_file(
        root=options.root,
        path=SYSUSERS_PATH,
        content=(shipped / "icu-edge.sysusers.conf").read_bytes(),
        mode=0o644,
    )
    _install_file(plan, step="sysusers", options=options, progress=progress)
    root = options.root
    if user_exists(root):
        progress.step("sysusers", "ok", "user icu-edge present")
    elif os.geteuid() != 0:
        progress.step(
            "sysusers", "warning", "not root: user icu-edge not created (as root: systemd-sysusers)"
        )
    elif shutil.which("systemd-sysusers") is None:
        progress.step(
            "sysusers", "warning", "no systemd-sysusers here: create user icu-edge (in group dialout) by hand"
        )
    elif options.dry_run:
        progress.step("sysusers", "created", "user icu-edge, member of dialout")
    else:
        inside(root, Path("/etc")).mkdir(parents=True, exist_ok=True)  # sysusers writes etc/passwd there
        status, output = run_command(["systemd-sysusers", *root_option(root), SYSUSERS_PATH.name])
        if status != 0:
            raise Stop([f"systemd-sysusers failed ({status}): {output}"], exit_code=EX_SOFTWARE)
        progress.step("sysusers", "created", "user icu-edge, member of dialout")
    plan = plan_file(
        root=root, path=TMPFILES_PATH, content=(shipped / "icu-edge.tmpfiles.conf").read_bytes(), mode=0o644
    )
    _install_file(plan, step="tmpfiles", options=options, progress=progress)
    directory = inside(root, CONFIG_DIR)
    before = _mode_and_group(directory)
    if os.geteuid() != 0:
        progress.step(
            "tmpfiles",
            "warning",
            f"not root: {CONFIG_DIR} left as it is (as root: systemd-tmpfiles --create)",
        )
        return
    if shutil.which("systemd-tmpfiles") is None:
        progress.step(
            "tmpfiles", "warning", f"no systemd-tmpfiles here: create {CONFIG_DIR} 0750 root:icu-edge by hand"
        )
        return
    if options.dry_run:
        if before is None:
            progress.step("tmpfiles", "created", f"{CONFIG_DIR} 0750 root:icu-edge")
        return
    status, output = run_command(["systemd-tmpfiles", "--create", *root_option(root), TMPFILES_PATH.name])
    if status != 0:
        raise Stop([f"systemd-tmpfiles failed ({status}): {output}"], exit_code=EX_SOFTWARE)
    after = _mode_and_group(directory)
    progress.step(
        "tmpfiles", "unchanged" if before == after else "changed", f"{CONFIG_DIR} 0750 root:icu-edge"
    )


def _mode_and_group(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_mode & 0o7777, info.st_gid


def install_config(text: str, answers: Answers, *, options: Options, progress: Progress) -> None:
    """Write the config (0640, root:icu-edge) through a checked temporary file, unless it is unchanged."""
    owner = config_owner(options.root)
    if owner.problem is not None and options.dry_run and shutil.which("systemd-sysusers") is not None:
        # The sysusers step above would have created the group: show the owner the run would give.
        owner = Owner(uid=0, gid=-1, name="root:icu-edge")
    elif owner.problem is not None:
        progress.step("config", "warning", owner.problem)
    plan = plan_file(
        root=options.root, path=answers.paths.config, content=text.encode(), mode=0o640, owner=owner
    )
    status = plan.status
    progress.step("config", status, f"{answers.paths.config} (0640 {owner.name})")
    if status == "unchanged":
        return
    if options.dry_run:
        sys.stdout.writelines(f"    {line}" for line in plan.diff())
        return
    problems = write_atomic(plan, check=lambda path: list(check_config(path).errors))
    if problems:
        raise Stop([f"config: {line}" for line in problems], exit_code=EX_CONFIG)


def install_engines(answers: Answers, *, options: Options, progress: Progress) -> None:
    """Build the TensorRT plans where CUDA is usable, else check the shipped models run on onnxruntime."""
    if not answers.engines.enabled:
        progress.step("engines", "skipped", "forecasting disabled ([engines] enabled = false)")
        return
    from engines.tensorrt_backend import cuda_status

    usable, why = cuda_status()
    if not usable and answers.engines.backend == "tensorrt":
        progress.step(
            "engines", "warning", f"backend = tensorrt, but {why}: the daemon falls back to onnxruntime"
        )
    if not usable or answers.engines.backend == "onnxruntime":
        status, output = engines_command(["verify", "--backend", "onnxruntime"])
        if status == 0:
            progress.step(
                "engines", "ok", f"onnxruntime ({why}): the default model matches its reference outputs"
            )
        else:
            last = output.splitlines()[-1] if output else f"exit {status}"
            progress.step(
                "engines", "warning", f"engines verify failed: {last} (see: icu-edge engines verify)"
            )
        return
    cache = inside(options.root, answers.paths.engines_cache)
    if options.dry_run:
        progress.step("engines", "ok", f"would build the TensorRT plans into {cache} ({why})")
        return
    before = _snapshot(cache)
    status, output = engines_command(["build", "--cache-dir", str(cache)])
    last = output.splitlines()[-1] if output else f"exit {status}"
    if status == 0:
        outcome = "unchanged" if _snapshot(cache) == before else "changed"
        progress.step("engines", outcome, f"TensorRT plans in {cache}: {last}")
    else:
        progress.step(
            "engines", "warning", f"TensorRT build failed: {last}; the daemon falls back to onnxruntime"
        )


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with its size and modification time (to see whether a build wrote)."""
    if not folder.is_dir():
        return {}
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def install_units(shipped: Path, answers: Answers, *, options: Options, progress: Progress) -> bool:
    """Install the unit and, where a GPU is usable, its drop-in; return whether a unit file changed."""
    unit = plan_file(root=options.root, path=UNIT_PATH, content=_unit_text(shipped, answers), mode=0o644)
    changed = _install_file(unit, step="unit", options=options, progress=progress)
    usable, why = gpu_usable(dev=options.dev)
    drop_in = shipped / "icu-edge.service.d" / "gpu.conf"
    if usable:
        plan = plan_file(root=options.root, path=GPU_DROP_IN_PATH, content=drop_in.read_bytes(), mode=0o644)
        changed = _install_file(plan, step="gpu", options=options, progress=progress) or changed
    elif inside(options.root, GPU_DROP_IN_PATH).exists():
        progress.step("gpu", "warning", f"{GPU_DROP_IN_PATH} installed, but {why}: left in place")
    else:
        progress.step("gpu", "skipped", why)
    return changed


def enable_unit(*, unit_changed: bool, options: Options, progress: Progress) -> None:
    """Enable the unit (offline with --root), or say how to where there is no systemctl."""
    command = systemctl()
    root = options.root
    if command is None:
        progress.step(
            "enable",
            "warning",
            f"no systemctl here: could not enable; on the box run `systemctl enable {UNIT_NAME}`",
        )
        return
    if root == Path("/") and unit_changed and not options.dry_run:
        status, output = run_command([command, "daemon-reload"])
        if status != 0:
            progress.step("enable", "warning", f"systemctl daemon-reload failed: {output}")
    status, output = run_command([command, *root_option(root), "is-enabled", UNIT_NAME])
    if status == 0 and output.splitlines()[-1:] == ["enabled"]:
        progress.step("enable", "unchanged", f"{UNIT_NAME} enabled")
        return
    if options.dry_run:
        progress.step("enable", "changed", UNIT_NAME)
        return
    status, output = run_command([command, *root_option(root), "enable", UNIT_NAME])
    if status != 0:
        raise Stop(
            [
                f"could not enable {UNIT_NAME}: {output.splitlines()[-1] if output else status}; "
                f"run `systemctl {' '.join(root_option(root))} enable {UNIT_NAME}`".replace("  ", " ")
            ],
            exit_code=EX_SOFTWARE,
        )
    progress.step("enable", "changed", f"{UNIT_NAME} (start it: systemctl start icu-edge)")
