"""A private Mosquitto on a free loopback port, for the demo, the test suite and the benchmarks.

Never touches the system's broker: its own config, port, log and persistence in a directory of the
caller's. Restartable on the same port, so a broker outage can be staged. Optionally the listener
demands client certificates and an ACL file (`ListenerSecurity`, the shape `systemd/README.md` asks
of a ward broker), and the broker bridges to another one (`Bridge`, the ward-to-hospital hop of
`docs/hospital-tier.md`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class BrokerUnavailable(RuntimeError):
    """Mosquitto is not installed or would not start."""


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files of a CA and the broker's server certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerSecurity:
    """Who may connect to the TLS listener and what each identity may do (mutual TLS and ACLs)."""

    require_certificate: bool = True
    """refuse a client that presents no certificate signed by the listener's CA"""
    use_identity_as_username: bool = True
    """the certificate's CN becomes the username the ACL sees; a CONNECT username/password is ignored"""
    use_username_as_clientid: bool = False
    """the username (the CN) replaces the client id, so no client can take over another's session"""
    tls_version: str | None = "tlsv1.2"
    """the lowest TLS version the listener accepts (`tlsv1.2`, `tlsv1.3`)"""
    acl_file: Path | None = None
    allow_anonymous: bool = False

    def config_lines(self) -> list[str]:
        """Return the mosquitto.conf lines (listener options first, then the global ones)."""
        lines = [
            f"require_certificate {str(self.require_certificate).lower()}",
            f"use_identity_as_username {str(self.use_identity_as_username).lower()}",
            f"use_username_as_clientid {str(self.use_username_as_clientid).lower()}",
        ]
        if self.tls_version is not None:
            lines.append(f"tls_version {self.tls_version}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return lines


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeTopic:
    """One `topic` line of a bridge: which topics cross, which way, at which QoS, remapped how."""

    pattern: str = "#"
    direction: Literal["out", "in", "both"] = "out"
    qos: int = 1
    local_prefix: str = ""
    """prefix of the topics on this broker (empty: none)"""
    remote_prefix: str = ""
    """what replaces `local_prefix` on the remote broker (empty: none)"""

    def config_line(self) -> str:
        """Return the `topic` line; an empty prefix is written as mosquitto's `""` marker."""
        local = self.local_prefix or '""'
        remote = self.remote_prefix or '""'
        return f"topic {self.pattern} {self.direction} {self.qos} {local} {remote}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Bridge:
    """A bridge from the broker it is given to (local) to another broker (remote).

    The defaults are a durable bridge: a persistent session on both sides (`cleansession false`), so
    a QoS 1 message queued while the remote is away crosses once it is back.
    """

    name: str
    """the connection name, and the bridge's client id on the remote broker"""
    host: str
    port: int
    topics: Sequence[BridgeTopic] = (BridgeTopic(),)
    cleansession: bool = False
    protocol_version: Literal["mqttv311", "mqttv50"] = "mqttv311"
    restart_timeout_s: int = 1
    keepalive_s: int = 5
    cafile: Path | None = None
    """TLS to the remote: the CA that signed its certificate (its name is verified against `host`)"""
    certfile: Path | None = None
    keyfile: Path | None = None
    tls_version: str = "tlsv1.2"
    notifications: bool = False

    def config_lines(self) -> list[str]:
        """Return the `connection` block of mosquitto.conf."""
        lines = [
            f"connection {self.name}",
            f"address {self.host}:{self.port}",
            f"remote_clientid {self.name}",
            f"cleansession {str(self.cleansession).lower()}",
            f"bridge_protocol_version {self.protocol_version}",
            f"restart_timeout {self.restart_timeout_s}",
            f"keepalive_interval {self.keepalive_s}",
            f"notifications {str(self.notifications).lower()}",
            "try_private true",
            *(topic.config_line() for topic in self.topics),
        ]
        if self.cafile is not None:
            lines += [f"bridge_cafile {self.cafile}", f"bridge_tls_version {self.tls_version}"]
        if self.certfile is not None and self.keyfile is not None:
            lines += [f"bridge_certfile {self.certfile}", f"bridge_keyfile {self.keyfile}"]
        return lines


class LocalMosquitto:
    """Start, stop and restart (on the same port) a loopback-only Mosquitto."""

    def __init__(
        self,
        *,
        directory: Path,
        port: int | None = None,
        persistence: bool = False,
        tls_files: TlsFiles | None = None,
        autosave_interval_s: int | None = None,
        security: ListenerSecurity | None = None,
        bridges: Sequence[Bridge] = (),
    ) -> None:
        if security is not None and tls_files is None:
            raise ValueError("client certificates and ACLs need a TLS listener (tls_files)")
        binary = find_mosquitto()
        if binary is None:
            raise BrokerUnavailable("mosquitto is not installed (apt-get install mosquitto)")
        self._binary = binary
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_loopback_port()
        self.log_path = directory / "mosquitto.log"
        self.conf_path = directory / "mosquitto.conf"
        self.tls_files = tls_files
        self.security = security
        self.bridges = tuple(bridges)
        allow_anonymous = security.allow_anonymous if security is not None else True
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {str(allow_anonymous).lower()}",
            "persistence true" if persistence else "persistence false",
            f"persistence_location {directory}/",
            # without it the in-memory state is written only on a clean stop, so a SIGKILL loses it
            *([f"autosave_interval {autosave_interval_s}"] if autosave_interval_s is not None else []),
            f"log_dest file {self.log_path}",
            "log_type all",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
            # as the ward broker should (systemd/README.md): a small message never waits behind a big one
            "set_tcp_nodelay true",
            # as root, mosquitto would switch to the `mosquitto` user, which cannot read our files
            *(["user root"] if os.geteuid() == 0 else []),
        ]
        if tls_files is not None:
            lines += [f"cafile {tls_files.ca}", f"certfile {tls_files.cert}", f"keyfile {tls_files.key}"]
        if security is not None:
            lines += security.config_lines()
        for bridge in self.bridges:
            lines += bridge.config_lines()
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return `mqtt://host:port` (or `mqtts://` with TLS)."""
        scheme = "mqtts" if self.tls_files else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (to pause it with SIGSTOP, say), else None."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections; raise with the log tail if not."""
        if self.running:
            raise RuntimeError("broker already running")
        self._process = subprocess.Popen(
            [self._binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerUnavailable(f"mosquitto exited with {code}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerUnavailable(
                        f"mosquitto did not listen on {self.port} within {timeout_s} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.02)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM the broker and wait for it (SIGKILL after timeout_s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no clean save of its persistence file) and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, *, lines: int = 30) -> str:
        """Return the end of the broker's log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
