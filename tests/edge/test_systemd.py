"""sd_notify over real AF_UNIX datagram sockets, the watchdog gate, and the watchdog task."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.systemd import LOOP_COMPONENT, SystemdNotifier, WatchdogGate, run_watchdog

RECEIVE_TIMEOUT_S = 2.0


def _receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(RECEIVE_TIMEOUT_S)
    return messages


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """Bind a datagram socket where systemd's would be and point NOTIFY_SOCKET at it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECEIVE_TIMEOUT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_notifier_sends_each_message_as_one_datagram(notify_socket: socket.socket) -> None:
    notifier = SystemdNotifier()
    try:
        assert notifier.enabled
        notifier.ready(status="3 beds, 5 devices")
        assert _receive(notify_socket) == "READY=1\nSTATUS=3 beds, 5 devices"
        notifier.status("bed-07 vent-1 reconnecting")
        assert _receive(notify_socket) == "STATUS=bed-07 vent-1 reconnecting"
        notifier.watchdog()
        assert _receive(notify_socket) == "WATCHDOG=1"
        notifier.stopping(status="draining outbox")
        assert _receive(notify_socket) == "STOPPING=1\nSTATUS=draining outbox"
        assert notifier.failures == 0
    finally:
        notifier.close()


def test_status_text_is_kept_on_one_line(notify_socket: socket.socket) -> None:
    notifier = SystemdNotifier()
    try:
        notifier.status("line one\nREADY=1")
        assert _receive(notify_socket) == "STATUS=line one READY=1"
    finally:
        notifier.close()


def test_notifier_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"icu-edge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = SystemdNotifier()
        try:
            notifier.ready(status="up")
            assert _receive(sock) == "READY=1\nSTATUS=up"
        finally:
            notifier.close()


def test_notifier_without_notify_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready(status="up")
    notifier.watchdog()
    assert notifier.failures == 0


def test_send_failure_is_counted_and_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    notifier = SystemdNotifier()
    try:
        notifier.watchdog()
        notifier.status("still here")
    finally:
        notifier.close()
    assert notifier.failures == 2
    assert "cannot notify systemd (WATCHDOG=1" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected_s"),
    [
        ("10000000", None, 10.0),
        ("5000000", "own", 5.0),
        ("5000000", "other", None),
        (None, None, None),
        ("0", None, None),
        ("ten", None, None),
        ("5000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval_follows_sd_watchdog_enabled(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected_s: float | None
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            value = {"own": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, value)
    assert SystemdNotifier().watchdog_interval_s() == expected_s


def test_gate_blocks_on_a_stale_component_and_unblocks_on_its_beat() -> None:
    gate = WatchdogGate()
    gate.register("publisher", max_silence_s=5.0)
    gate.register("bed-07/vent-1", max_silence_s=2.0)
    assert gate.healthy(now_s=101.0) == (True, [])

    gate.beat("publisher", now_s=104.0)
    assert gate.healthy(now_s=104.5) == (False, ["bed-07/vent-1"])

    gate.beat("bed-07/vent-1", now_s=104.6)
    assert gate.healthy(now_s=104.7) == (True, [])
    assert gate.healthy(now_s=109.5) == (False, ["bed-07/vent-1", "publisher"])


def test_a_component_that_never_beats_goes_stale_after_its_grace() -> None:
    gate = WatchdogGate()
    gate.register("publisher", max_silence_s=2.0)
    assert gate.healthy(now_s=50.0) == (True, [])  # the grace period starts here
    assert gate.healthy(now_s=52.0) == (True, [])
    assert gate.healthy(now_s=52.1) == (False, ["publisher"])


def test_gate_ignores_out_of_order_and_unknown_beats() -> None:
    gate = WatchdogGate()
    gate.register("publisher", max_silence_s=1.0)
    gate.beat("publisher", now_s=12.0)
    gate.beat("publisher", now_s=11.0)  # a slower thread read the clock earlier
    gate.beat("publsher", now_s=20.0)  # misspelled: the registered name goes stale instead
    assert gate.healthy(now_s=12.9) == (True, [])
    assert gate.healthy(now_s=20.0) == (False, ["publisher"])


def test_unregistered_component_no_longer_blocks() -> None:
    gate = WatchdogGate()
    gate.register("bed-07/vent-1", max_silence_s=1.0)
    gate.healthy(now_s=0.0)
    assert gate.healthy(now_s=5.0) == (False, ["bed-07/vent-1"])
    gate.unregister("bed-07/vent-1")
    gate.unregister("bed-07/vent-1")
    assert gate.healthy(now_s=5.0) == (True, [])


def test_gate_rejects_duplicates_and_non_positive_silence() -> None:
    gate = WatchdogGate()
    gate.register("publisher", max_silence_s=1.0)
    with pytest.raises(ValueError, match="already registered"):
        gate.register("publisher", max_silence_s=1.0)
    with pytest.raises(ValueError, match="positive"):
        gate.register("other", max_silence_s=0.0)


class _FakeClock:
    """Monotonic seconds the test moves by hand; the watchdog task still sleeps for real."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


async def _next_message(sock: socket.socket) -> str:
    return await asyncio.wait_for(asyncio.to_thread(_receive, sock), RECEIVE_TIMEOUT_S)


async def test_run_watchdog_withholds_while_a_component_is_stale(
    notify_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    clock = _FakeClock()
    gate = WatchdogGate()
    gate.register("publisher", max_silence_s=3.0)
    notifier = SystemdNotifier()
    task = asyncio.create_task(run_watchdog(notifier=notifier, gate=gate, interval_s=0.02, clock=clock))
    try:
        assert await _next_message(notify_socket) == "WATCHDOG=1"
        assert await _next_message(notify_socket) == "WATCHDOG=1"

        clock.now_s += 10.0  # the publisher has not beaten for 10 s
        while (message := await _next_message(notify_socket)) == "WATCHDOG=1":
            pass
        assert message == "STATUS=watchdog withheld: no progress from publisher"
        await asyncio.sleep(0.2)  # about ten ticks
        assert _drain(notify_socket) == []
        assert caplog.text.count("withholding the watchdog: no progress from publisher") == 1

        gate.beat("publisher", now_s=clock.now_s)
        assert await _next_message(notify_socket) == "WATCHDOG=1"
        assert await _next_message(notify_socket) == "STATUS=watchdog: every component makes progress"
        assert await _next_message(notify_socket) == "WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
    assert gate.healthy(now_s=clock.now_s + 1000.0) == (False, ["publisher"])  # "loop" was removed


async def test_run_watchdog_registers_the_loop_itself(notify_socket: socket.socket) -> None:
    gate = WatchdogGate()
    notifier = SystemdNotifier()
    task = asyncio.create_task(run_watchdog(notifier=notifier, gate=gate, interval_s=0.02))
    try:
        assert await _next_message(notify_socket) == "WATCHDOG=1"
        with pytest.raises(ValueError, match="already registered"):
            gate.register(LOOP_COMPONENT, max_silence_s=1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
