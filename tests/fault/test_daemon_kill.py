"""The daemon SIGKILLed at random moments while it publishes, 20 times, then restarted each time.

Each restart must say READY=1 to a real notify socket within 2 s of the process start, open a new
session (a number greater than every earlier one, on every payload it publishes), and refresh the
retained twin, device and appliance status in that session. After each kill the test reads the outbox
(what was committed and not yet acknowledged); every one of those messages must reach the central
station, a subscriber with a persistent session on `R/#`, and after de-duplication every topic carries
seqs 0, 1, 2, ... per session in arrival order: a kill loses at most what was never committed, which
can only be the tail of a session.

The kill moments come from a seeded random generator; the seed is printed, and
`ICU_EDGE_FAULT_SEED=<seed>` replays a schedule. Before about half of the kills the broker is frozen
(SIGSTOP) until the outbox holds a row and then for the wait, so that the daemon dies holding
committed, unacknowledged rows (the broker acknowledges a few beds' traffic in well under a
millisecond, so an unfrozen kill rarely finds any); it is thawed (SIGCONT) before the restart.

Fresh ptys for each restart: on this kernel (Linux 6.18) tcsetattr() fails with EINVAL when none of the
requested changes can be applied, and a pty forces CS8 and no parity. So once a daemon has set a
simulator's pty to 19200 8E1 (the pty keeps 19200 8N1), every later open with the MEDIBUS line asks
for nothing but PARENB and is refused (`termios.error: (22, 'Invalid argument')`), whether the first
holder died or closed the port cleanly. The harness therefore restarts the simulators (new ptys) with
each daemon; `test_pty_that_already_holds_the_line_reopens` pins the transport defect.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Received, Subscriber, wait_for
from delivery_check import Key, check_delivery, outbox_keys
from ward import ROOT, STATUS_TOPIC, NotifySocket, Ward, WardLayout, bed_topic

from drivers.medibus.session import DRIVER as MEDIBUS
from drivers.transport import open_transport
from tools.local_broker import LocalMosquitto

pytestmark = [pytest.mark.integration]

KILLS = 20
BEDS = 4
READY_WITHIN_S = 2.0
KILL_DELAY_MAX_S = 1.5
"""A kill lands at a uniformly random moment this long after the new session's state was refreshed."""
FREEZE_SHARE = 0.5
RETAINED_TOPICS = ("twin", "device/vent-1")


@pytest.fixture
def ward(tmp_path: Path, persistent_broker: LocalMosquitto) -> Iterator[Ward]:
    persistent_broker.start()
    instance = Ward(workdir=tmp_path, broker=persistent_broker, layout=WardLayout(beds=BEDS))
    try:
        yield instance
    finally:
        instance.close()


def _session_of(message: Received) -> int:
    return int(json.loads(message.payload)["session"])


def _birth_session(messages: list[Received], *, after: int) -> int | None:
    """Return the session of an `online` status newer than session `after`."""
    for message in messages:
        if message.topic == STATUS_TOPIC and message.payload:
            document = json.loads(message.payload)
            if document["state"] == "online" and document["session"] > after:
                return int(document["session"])
    return None


def _refreshed(messages: list[Received], *, ward: Ward, session: int) -> bool:
    """Whether every bed's retained twin and device status arrived from `session`."""
    seen = {(m.topic, _session_of(m)) for m in messages if m.payload and "/bed/" in m.topic}
    return all((f"{bed_topic(bed)}/{kind}", session) in seen for bed in ward.beds for kind in RETAINED_TOPICS)


def _fresh_ptys(ward: Ward) -> None:
    """Give each bed a new simulator on a new pty (see the module docstring: a used pty refuses 8E1)."""
    for bed in ward.beds:
        ward.kill_simulator(bed)
        ward.start_simulator(bed)


@pytest.mark.timeout(300)
def test_daemon_sigkilled_20_times_while_publishing(
    ward: Ward, persistent_broker: LocalMosquitto, tmp_path: Path
) -> None:
    seed = int(os.environ.get("ICU_EDGE_FAULT_SEED", secrets.randbelow(2**32)))
    print(f"kill schedule seed {seed} (ICU_EDGE_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    station = Subscriber(
        host=persistent_broker.host,
        port=persistent_broker.port,
        topic_filter=f"{ROOT}/#",
        client_id="station",
        persistent=True,
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    committed: set[Key] = set()
    sessions: list[int] = []
    ready_after_s: list[float] = []
    unacked_at_kill: list[int] = []
    try:
        station.wait_subscribed(timeout_s=10)
        ward.start_simulators()
        for start in range(KILLS + 1):
            if start:
                _fresh_ptys(ward)
            notify.drain()
            started = time.monotonic()
            ward.start_daemon(env={"NOTIFY_SOCKET": str(notify.path)})
            ready_at = notify.wait_ready(timeout_s=20)
            assert ready_at is not None, f"start {start}: no READY=1\n{ward.log('daemon')[-3000:]}"
            ready_after_s.append(ready_at - started)
            previous = sessions[-1] if sessions else 0
            station.wait_for(lambda ms, p=previous: _birth_session(ms, after=p) is not None, timeout_s=15)
            session = _birth_session(station.messages, after=previous)
            assert session is not None
            assert session > previous
            sessions.append(session)
            assert wait_for(
                lambda s=session: _refreshed(station.messages, ward=ward, session=s), timeout_s=15
            ), f"start {start}: not refreshed in session {session}\n{ward.log('daemon')[-2000:]}"
            if start == KILLS:
                break
            frozen = rng.random() < FREEZE_SHARE
            broker_pid = persistent_broker.pid
            assert broker_pid is not None
            if frozen:
                os.kill(broker_pid, signal.SIGSTOP)
            try:
                if frozen:
                    assert wait_for(lambda: outbox_keys(ward.outbox), timeout_s=10), "rows wait for a PUBACK"
                time.sleep(rng.uniform(0.0, KILL_DELAY_MAX_S))
                ward.kill_daemon()
                unacked = outbox_keys(ward.outbox)
            finally:
                if frozen:
                    os.kill(broker_pid, signal.SIGCONT)
            committed |= unacked
            unacked_at_kill.append(len(unacked))
        assert wait_for(lambda: committed <= check_delivery(station.messages).keys, timeout_s=20), sorted(
            committed - check_delivery(station.messages).keys
        )[:20]
        assert ward.stop_daemon() == 0, ward.log("daemon")[-3000:]
        report = check_delivery(station.messages)
        assert report.ok, "\n".join([*report.gaps, *report.out_of_order])
        assert report.sessions() == set(sessions), (
            "every payload carries the session of the process that sent it"
        )
        assert sessions == sorted(set(sessions)), f"sessions only grow: {sessions}"
        assert committed, f"no kill found committed, unacknowledged rows: {unacked_at_kill}"
        slow = [(i, round(s, 2)) for i, s in enumerate(ready_after_s) if s >= READY_WITHIN_S]
        assert not slow, f"READY=1 later than {READY_WITHIN_S} s after the process start: {slow}"
        print(
            f"{KILLS} kills, sessions {sessions[0]}..{sessions[-1]}, committed-unacked rows at the kills"
            f" {unacked_at_kill} all arrived, {len(report.keys)} distinct messages,"
            f" READY after {min(ready_after_s):.2f}..{max(ready_after_s):.2f} s"
        )
    finally:
        notify.close()
        station.close()


def test_pty_that_already_holds_the_line_reopens() -> None:
    """A pty refuses parity once it holds 8N1 (EINVAL): a link must still reopen it, again and again."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        path = os.ttyname(slave)
        open_transport(path, line=MEDIBUS.default_line).close()
        open_transport(path, line=MEDIBUS.default_line).close()
    finally:
        os.close(master)
        os.close(slave)
