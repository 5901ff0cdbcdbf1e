"""What a central station can check about delivery: per topic and session, seqs from 0, in order, no gap.

Used by the broker and daemon fault tests. Messages are de-duplicated by (topic, session, seq) (QoS 1
is at-least-once, and a resubscription replays retained copies); what remains must be, per topic and
session, the seqs 0, 1, 2, ... in arrival order. One exception by design: on the appliance status topic
each connection reserves the pair (birth n, Will n + 1), and the Will is published only when the
daemon vanishes, not when the broker does; so a missing status seq is fine right after an `online`
birth, and nowhere else. The outbox is read after a SIGKILL to know which
messages were committed but not yet acknowledged: each of them must arrive.

A broker SIGKILL is the other exception, and only for the broker's own loss: Mosquitto sends its
PUBACK before it writes the message anywhere durable (its persistence file is saved every
`autosave_interval`), so what it acknowledged and had not yet written to the station when it died is
gone, and the daemon, holding a PUBACK, rightly does not send it again. `gaps_across` names the gaps
that straddle a kill: the seq before arrived before it and the seq after arrived after it.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from broker import Received

Key = tuple[str, int, int]
"""(topic, session, seq)"""


@dataclass(slots=True)
class DeliveryReport:
    """Problems found in what arrived; empty lists mean the promise held."""

    keys: set[Key] = field(default_factory=set)
    gaps: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    duplicates: int = 0
    missing: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    """(topic, session) -> the seqs that never arrived (the same facts as `gaps`)."""
    first_arrival_s: dict[Key, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether nothing is missing and nothing arrived out of order."""
        return not self.gaps and not self.out_of_order

    def sessions(self) -> set[int]:
        """Return every session seen."""
        return {session for _, session, _ in self.keys}


def envelope_key(topic: str, payload: bytes) -> Key:
    """Return (topic, session, seq) of a contract message."""
    document = json.loads(payload)
    return (topic, int(document["session"]), int(document["seq"]))


def check_delivery(messages: list[Received]) -> DeliveryReport:
    """De-duplicate by (topic, session, seq) and check each (topic, session) runs 0, 1, 2, ... in order."""
    report = DeliveryReport()
    first_arrivals: dict[tuple[str, int], list[int]] = defaultdict(list)
    unused_wills: set[Key] = set()
    for message in messages:
        if not message.payload:
            continue  # a retained message being cleared
        key = envelope_key(message.topic, message.payload)
        if key in report.keys:
            report.duplicates += 1
            continue
        report.keys.add(key)
        report.first_arrival_s[key] = message.received_wall_s
        first_arrivals[key[:2]].append(key[2])
        if "/appliance/" in message.topic and json.loads(message.payload).get("state") == "online":
            unused_wills.add((key[0], key[1], key[2] + 1))
    for (topic, session), seqs in sorted(first_arrivals.items()):
        if seqs != sorted(seqs):
            report.out_of_order.append(f"{topic} session {session}: arrival order {seqs}")
        expected = set(range(max(seqs) + 1))
        missing = sorted(seq for seq in expected - set(seqs) if (topic, session, seq) not in unused_wills)
        if missing:
            report.missing[(topic, session)] = missing
            report.gaps.append(f"{topic} session {session}: missing seqs {missing[:20]} of 0..{max(seqs)}")
    return report


def gaps_across(report: DeliveryReport, kills: list[tuple[float, float]]) -> tuple[list[Key], list[Key]]:
    """Split the missing messages into (lost in a broker kill, unexplained).

    `kills` holds (wall time just before the SIGKILL, wall time the broker was started again). A missing
    seq is the broker's loss when the nearest seqs around it that did arrive first arrived one before a
    kill and one after it; anything else is unexplained.
    """
    lost: list[Key] = []
    unexplained: list[Key] = []
    for (topic, session), seqs in sorted(report.missing.items()):
        for seq in seqs:
            before = max((s for s in range(seq) if (topic, session, s) in report.keys), default=None)
            after = min(s for t, n, s in report.keys if (t, n) == (topic, session) and s > seq)
            before_s = report.first_arrival_s[(topic, session, before)] if before is not None else None
            after_s = report.first_arrival_s[(topic, session, after)]
            straddles = any(
                (before_s is None or before_s <= killed_s) and after_s >= restarted_s
                for killed_s, restarted_s in kills
            )
            (lost if straddles else unexplained).append((topic, session, seq))
    return lost, unexplained


def outbox_keys(path: Path) -> set[Key]:
    """Return (topic, session, seq) of every message committed to the outbox and not yet acknowledged."""
    if not path.exists():
        return set()
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("SELECT topic, payload FROM messages").fetchall()
    except sqlite3.OperationalError:
        return set()  # killed before it created its table: nothing committed
    finally:
        db.close()
    return {envelope_key(topic, bytes(payload)) for topic, payload in rows}
