"""The publisher: submissions go through the durable outbox to the broker (DESIGN.md, 'Delivery guarantees').

Threads and who owns what:

* the asyncio loop thread calls `submit()`: it owns the per-topic `seq` counters and stamps `seq` and
  `ts` there, so the order of submission is the order of delivery;
* the worker thread (named `icu-edge-publisher`, a daemon thread so it can never keep a dying process
  alive) owns the `Outbox` (its SQLite connection), the `Spill`, the map of paho message ids to outbox
  row ids, and every counter in `stats()`; it encodes JSON, stores in batches through the disk cap
  (`Outbox.store`), hands rows to paho, and deletes them on PUBACK;
* paho's network thread runs the callbacks, which enqueue events for the worker. Four callbacks do a
  little more, for a reason: `on_pre_connect` registers the Will of the coming connection attempt;
  `on_connect` hands the birth to paho and then subscribes to the status topic, the command filter and
  the central station's topic (non-blocking enqueues into paho's own packet queue; nothing waits);
  `on_disconnect` sets paho's next reconnect delay (`_ConnectionPolicy`); `on_message` hands an inbound
  message straight to the asyncio loop (`call_soon_threadsafe`), where `on_inbound` runs. The birth
  has to be handed there because paho re-sends its unacknowledged QoS 1 messages right after
  `on_connect` returns, inside its CONNACK handling; handing it from the worker would put it behind
  them. The delay has to be set there because paho starts that wait as soon as the callback returns.
  State shared with that thread: the status topic's sequence numbers and what the birth reports
  (`_StatusMessages`, behind one lock; the loop thread sets the birth's content) and the inbound
  counters (behind their own lock, shared with the loop thread); `_ConnectionPolicy` and the map of
  SUBSCRIBE ids to filters are touched by that thread only.

Lanes: a worker step first encodes what was submitted on every topic but bulk state (vitals, events,
alarms, command results, clears), then at most `BULK_STEP_ROWS` bulk rows (twin, forecast and device
status topics, `Topics.is_bulk_state`) within `BULK_STEP_S`, and commits all of them, with the
deletes of the rows acknowledged since the last step, in ONE transaction (`Outbox.store_and_delete`).
The bulk rows wait in memory (`_bulk`, in submission order) until the step that takes them; while
connected a step takes them only when every stored row has been handed and the in-flight window has
room for them behind the step's other rows, so a burst of twins and forecasts never sits in the
outbox ahead of a vitals message submitted after it: a vitals message waits at most for one bounded
step's bulk rows. Offline, or past `BULK_BACKLOG_MAX` waiting, bulk rows are stored
`BULK_STEP_ROWS` a step whatever the window says (memory stays bounded, nothing is held back from
the disk for long); at stop every waiting row is stored. The lane is a function of the topic alone,
so two messages of one topic never change order; rows of different topics may.

In-flight and reconnect policy: at most `IN_FLIGHT_WINDOW` rows (less when the broker's Receive
Maximum says so) are handed to paho at a time, in id order; a row is deleted from the outbox only on a
successful PUBACK. When the connection drops, the
rows paho holds stay with paho: paho re-sends them (DUP set) in the order they were published, right
after the next CONNACK (see `Client._handle_connack` and `_messages_reconnect_reset_out` in paho-mqtt
2.x), and the worker never hands them again. New rows follow from the highest id handed so far. So
after a reconnect the wire order is: birth, the re-sent in-flight rows, the remaining rows, all in id
order; the only duplicates are rows whose PUBACK was lost with the connection (at-least-once). After a
daemon restart the outbox rows of the previous session go first, unchanged, with their old session
and seq.

Disk cap and full disk: `Outbox.store` sheds the least precious rows before the files pass the cap
in force (see edge/outbox.py). A disk that fills anyway (another writer) is not fatal: the rows it
refuses wait in the bounded in-memory `Spill` (the newest retained state per topic is always kept),
every later row queues behind them, the worker retries the disk every `DISK_RETRY_S`, and when the
broker is connected the spilled rows are sent from memory after the stored ones. Every drop is counted
and reported (`_flush_loss_reports`): one WARNING line and one `outbox_dropped` event per bed at once,
then at most every `LOSS_REPORT_INTERVAL_S`. Any other outbox error is fatal: the worker stops its
heartbeat and sets `fatal_error`, and the daemon stops with exit status 69.

The status topic: the retained status and a subscriber that orders the status messages by seq must
both end on the truth, in every order in which the broker may see old and new connections. Every
connection attempt whose CONNECT may have left gets a fresh pair of seqs, birth `n` and Will `n + 1`,
higher than any before; only an attempt that failed before its CONNECT was sent (TCP or TLS refused:
`on_connect_fail`) hands its pair on to the next one, since its Will never reached the broker. So no
two connections share a Will seq, and an old connection's Will always has a lower seq than the
current birth: ordered by seq, the last message is the current birth unless the current connection
itself was dropped (then its Will is right, and the next birth follows). Three more rules keep the
retained copy right:

* Mosquitto (like MQTT v5 with Will Delay 0 and session expiry 0, which we use) publishes the Will of
  a connection it takes over (same client id) before it answers the new CONNECT, so an old
  connection that is still alive at the broker is ended, with its Will, before the new birth.
* After a keepalive timeout the old connection may still be alive at the broker (a stalled link,
  unlike a reset or an end-of-stream from the broker). The next attempt then waits until the broker
  must have dropped it: 1.5 x keepalive (MQTT's server-side limit) after the last byte we could have
  sent, plus `HOLD_MARGIN_S` for the broker's timer granularity. The wait is paho's reconnect delay,
  which `stop()` cuts short (paho checks for a disconnect every second).
* Bytes held by a middlebox can still deliver an abandoned attempt's CONNECT after the live one; the
  broker then takes the live connection over (its Will, seq above the birth, is right: paho
  reconnects with a new birth) and publishes the abandoned attempt's Will (a lower seq) when that
  connection ends, possibly after our birth. Like a Sparkplug host, the publisher watches its own
  status topic: an `offline` of this appliance with a lower (session, seq) than the current birth,
  arriving on the current connection, means the retained state is wrong, and a clean reconnect
  (DISCONNECT without Will, then a new birth with a fresh pair) puts the truth back.

The birth carries the present: the active alarms per bed and the central station's state, as the
daemon set them last (`set_birth_state`); it is encoded when paho connects. The Will and the `offline`
message carry neither.

Inbound messages: when `on_inbound` is given, every connection subscribes (QoS 1) to the commands of
all beds (`R/bed/+/cmd/+`) and, when `central_station_topic` is given, to that topic; the broker sends
their retained copies on subscribing (`InboundMessage.retained`). paho's thread only counts, bounds and
hands each message to the asyncio loop: a payload over `INBOUND_MAX_BYTES`, or a message arriving while
`INBOUND_MAX_PENDING` handed ones wait for the loop, is dropped, counted (`inbound_dropped`) and logged
once per reason. Validating and acting on a command is the caller's work, on the loop. A subscription
the broker refuses (ACL) is logged once, as an ERROR naming the filter.

Clearing a retained topic: `submit_clear` stores a zero-length retained QoS 1 message in the same
outbox queue as everything else, so it lands after every state submitted before it and deletes the
broker's retained copy (MQTT 3.3.1.3): an ended alarm's topic `R/bed/{bed}/alarm/{id}` holds nothing.

History: a row of alarm priority or above (`DeliveryPriority.ALARM`, `LOSS_REPORT`) that already waited
in the outbox, or in the full-disk spill, when the worker took the current connection's `_LinkUp` (rows
of earlier sessions included) is sent with `"history": true` (event/2 and alarm/1 have that field;
payloads without it, and empty ones, go unchanged). The central station shows such a row in the log and
never starts an alarm signal from it; the birth and the fresh messages carry the present. The outbox
row itself stays as stored: it is rewritten when handed to paho (`_fill_window`, rows up to the highest
id stored before the `_LinkUp`); spilled rows are rewritten in memory at the `_LinkUp`, since they get
their ids only when the disk takes them. Rows submitted in the same worker pass as the `_LinkUp` count
as live (they are at most one pass old). Rows that paho itself re-sends after CONNACK were handed while
an earlier connection was up and go as they were then: live. After recording the boundary the worker
calls `on_link_up` on the loop, so what the daemon republishes then (fresh retained state) lands after
the replayed rows, as live.

A birth whose PUBACK was lost with its connection is re-sent by paho after the next birth (QoS 1,
at-least-once, like every in-flight row): it says `online` too, with a lower seq, so neither the
retained state nor the seq order changes meaning. A graceful stop publishes `offline`/`shutdown` (a
clean DISCONNECT suppresses the Will).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import queue
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from edge.config import MqttConfig, StoreConfig, TlsConfig, read_secret
from edge.contract import Topics, encode_document, encode_message
from edge.model import (
    AlarmSummary,
    ApplianceState,
    ApplianceStatusBody,
    ApplianceStatusMessage,
    Body,
    EventBody,
    EventKind,
    WaveBody,
    format_rfc3339_ms,
    utc_now,
)
from edge.outbox import DeliveryPriority, DropReport, NewRow, Outbox, OutboxError, Spill, is_disk_full

LOGGER = logging.getLogger(__name__)

IN_FLIGHT_WINDOW = 256
"""Rows handed to paho and not yet acknowledged, at most (was 64: a 64-bed forecast tick filled it)."""
STATUS_IN_FLIGHT = 8
"""paho's in-flight limit is the window plus this, for the birth and `offline` (not outbox rows)."""
BULK_STEP_ROWS = 16
"""Bulk rows (twins, forecasts, device status) encoded and stored per worker step, at most."""
BULK_STEP_S = 0.005
"""...and the time a step spends encoding them, at most (at least one row a step is encoded)."""
BULK_BACKLOG_MAX = 1024
"""Bulk rows waiting in memory past which they are stored whether or not the window has room."""
WAKE_INTERVAL_S = 0.2
"""The worker loops at least this often, so `last_progress_s` moves even when nothing happens."""
BATCH_MAX = 500
"""Events handled per worker iteration, at most (one outbox transaction per batch)."""
OFFLINE_ACK_TIMEOUT_S = 2.0
"""How long `stop` waits for the PUBACK of the `offline` status message."""
START_TIMEOUT_S = 30.0
"""How long `start` waits for the worker to open the outbox."""
HOLD_MARGIN_S = 1.0
"""Added to 1.5 x keepalive before a new attempt after a keepalive timeout (the broker's timer ticks)."""
LOSS_REPORT_INTERVAL_S = 10.0
"""Outbox drops are reported (one event per bed, one log line) at once, then at most this often."""
WAVE_QUEUE_MAX = 256
"""Wave windows waiting for the worker; past this the oldest is dropped (and counted)."""
WAVE_BURST = 32
"""Wave windows sent per worker step while nothing else waits; then the worker looks at its queue again."""
SPILL_MAX_BYTES = 4 * 1024 * 1024
"""Rows a full disk refused are kept in memory up to this many bytes (see `Spill`)."""
DISK_RETRY_S = 1.0
"""While the disk is full, the worker tries to store the spilled rows and delete acked ones this often."""
INBOUND_MAX_BYTES = 16 * 1024
"""Inbound messages (commands, the central station's state) longer than this are dropped and counted."""
INBOUND_MAX_PENDING = 1000
"""Inbound messages handed to the event loop and not yet taken by it, at most; past this they are dropped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublisherStats:
    """A snapshot of the publisher's state for the daemon, the watchdog and diagnostics."""

    connected: bool
    session: int
    pending: int
    """Rows in the outbox (in flight included)."""
    in_flight: int
    submitted: int
    acked: int
    dropped: Mapping[DeliveryPriority, int]
    """Messages lost on purpose: disk cap, QoS 0 while offline, rejected by the broker, after stop."""
    spilled: int
    """Rows a full disk refused, held in memory until stored or sent."""
    outbox_disk_bytes: int
    """What the outbox's files occupy on disk (database, WAL, journal, shm)."""
    outbox_cap_bytes: int
    """The cap in force: `max_bytes`, or less when the filesystem is short of room."""
    errors: int
    """Exceptions caught in the worker and the callbacks (each logged with its traceback)."""
    waves_sent: int = 0
    waves_dropped: int = 0
    """Wave windows not sent: queue full (the worker was busy with what matters more), or offline."""
    inbound_received: int = 0
    """Messages that arrived on the command and central-station subscriptions (dropped ones included)."""
    inbound_dropped: int = 0
    """Inbound messages not handed on: over `INBOUND_MAX_BYTES`, over `INBOUND_MAX_PENDING`, no loop."""
    last_progress_s: float
    """Monotonic time of the worker's last loop: it loops whether or not the broker is reachable."""
    last_error: str | None
    fatal_error: str | None
    """Set when the outbox failed: the worker stops making progress so the watchdog notices."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundMessage:
    """A message the broker delivered on a subscription other than the status topic."""

    topic: str
    payload: bytes
    retained: bool
    """The broker's retained copy (sent on subscribing), not a live publish."""
    received_mono_s: float
    """The publisher's monotonic clock when paho handed it over."""


# ---- events for the worker ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Submission:
    topic: str
    bed: str | None
    body: Body
    qos: int
    retain: bool
    priority: DeliveryPriority
    seq: int
    ts: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class _Clear:
    """A zero-length retained message: deletes the broker's retained copy of `topic`."""

    topic: str
    priority: DeliveryPriority
    ts: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class _Acked:
    mid: int
    failure: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _LinkUp:
    session_present: bool
    birth_seq: int
    receive_maximum: int | None = None
    """The broker's MQTT v5 Receive Maximum (None: not given, 65535)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _LinkDown:
    reason: str
    hold_s: float | None
    """Set when the next attempt waits for the broker to drop the old connection (keepalive timeout)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _LinkRefused:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _ConnectFailed:
    reason: str
    tls: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class _StatusSeen:
    """A message on the appliance's own status topic, and the birth seq of the connection it came on."""

    payload: bytes
    birth_seq: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _WatchRefused:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _SubscriptionRefused:
    topic_filter: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _CallbackFailed:
    where: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _StopRequest:
    flush_timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _WavesWaiting:
    """Wakes the worker for the wave lane (the waves themselves wait in `Publisher._waves`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Wave:
    topic: str
    bed: str
    body: WaveBody
    seq: int
    ts: datetime


_Event = (
    _Submission
    | _Clear
    | _Acked
    | _LinkUp
    | _LinkDown
    | _LinkRefused
    | _ConnectFailed
    | _StatusSeen
    | _WatchRefused
    | _SubscriptionRefused
    | _CallbackFailed
    | _StopRequest
    | _WavesWaiting
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _WorkerSnapshot:
    connected: bool = False
    pending: int = 0
    in_flight: int = 0
    acked: int = 0
    dropped: Mapping[DeliveryPriority, int] = field(default_factory=dict)
    spilled: int = 0
    outbox_disk_bytes: int = 0
    outbox_cap_bytes: int = 0
    errors: int = 0
    waves_sent: int = 0
    waves_dropped: int = 0
    last_progress_s: float = 0.0
    last_error: str | None = None
    fatal_error: str | None = None


class _LossTally:
    """Outbox drops not yet reported (worker thread)."""

    def __init__(self) -> None:
        self.by_priority: Counter[DeliveryPriority] = Counter()
        self.by_topic: Counter[str] = Counter()
        self.passes = 0
        self.cap_bytes = 0
        """The cap in force at the last drop; 0 when only the full-disk memory bound dropped rows."""

    def add(self, report: DropReport) -> None:
        self.by_priority.update(report.by_priority)
        self.by_topic.update(report.by_topic)
        self.passes += 1
        if report.cap_bytes:
            self.cap_bytes = report.cap_bytes


class _DemotePahoNoSocketError(logging.Filter):
    """paho 2.2 logs 'Client is not connected' at ERROR whenever its loop runs without a socket
    (between connection attempts, after disconnect); the publisher logs the connection state itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("Client is not connected"):
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
        return True


class _StatusMessages:
    """Seqs and payloads on the appliance status topic, shared by paho's thread, the worker and the loop.

    The loop thread sets what the birth reports (`set_birth_state`); the birth is encoded when paho
    connects, so it carries the state set last.
    """

    def __init__(
        self,
        *,
        appliance_id: str,
        version: str,
        beds: list[str],
        wall_clock: Callable[[], datetime],
    ) -> None:
        self._appliance_id = appliance_id
        self._session = 0
        self._version = version
        self._beds = list(beds)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._next_seq = 0
        self._pair_seq = 0
        self._will: bytes | None = None
        self._pair_unused = False
        self._birth_seq: int | None = None
        self._alarms: Mapping[str, tuple[AlarmSummary, ...]] = {}
        self._central_station: str | None = None

    def begin(self, session: int) -> None:
        """Set the outbox session the messages carry (before the first connection attempt)."""
        with self._lock:
            self._session = session

    def set_birth_state(
        self, *, alarms: Mapping[str, tuple[AlarmSummary, ...]], central_station: str | None
    ) -> None:
        """Replace what every later birth reports (an immutable snapshot)."""
        with self._lock:
            self._alarms = alarms
            self._central_station = central_station

    def _encode(self, *, state: ApplianceState, reason: str | None, seq: int, birth: bool = False) -> bytes:
        body = ApplianceStatusBody(
            state=state,
            version=self._version,
            beds=self._beds,
            reason=reason,
            alarms={bed: list(summaries) for bed, summaries in self._alarms.items()} if birth else {},
            central_station=self._central_station if birth else None,
        )
        return encode_message(
            body,
            appliance=self._appliance_id,
            bed=None,
            session=self._session,
            seq=seq,
            ts=self._wall_clock(),
        )

    def will_for_next_connection(self) -> bytes:
        """Reserve a fresh (birth, Will) pair for the coming connection attempt and return its Will.

        The previous pair is reused only when its attempt failed before the CONNECT was sent.
        """
        with self._lock:
            if not self._pair_unused or self._will is None:
                seq = self._next_seq
                self._next_seq += 2
                self._pair_seq = seq
                self._will = self._encode(state=ApplianceState.OFFLINE, reason="lost", seq=seq + 1)
            self._pair_unused = False
            return self._will

    def connect_failed(self) -> None:
        """Note that the current attempt failed before its CONNECT (and Will) left: reuse its pair."""
        with self._lock:
            self._pair_unused = True

    def birth(self) -> tuple[bytes, int]:
        """Return the birth reserved for the connection just made (the state set last), and its seq."""
        with self._lock:
            if self._will is None:
                raise RuntimeError("birth requested before a Will was registered")
            self._birth_seq = self._pair_seq
            birth = self._encode(state=ApplianceState.ONLINE, reason=None, seq=self._pair_seq, birth=True)
            return birth, self._pair_seq

    def current_birth_seq(self) -> int | None:
        """Return the seq of the last birth handed to paho (None before the first connection)."""
        with self._lock:
            return self._birth_seq

    def offline(self) -> bytes:
        """Return the `offline`/`shutdown` message with the next seq."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            return self._encode(state=ApplianceState.OFFLINE, reason="shutdown", seq=seq)


def _as_history(payload: bytes) -> bytes:
    """Return the payload with `"history": true` when it has a `history` field, else unchanged."""
    if not payload:
        return payload
    try:
        document = json.loads(payload)
        if not isinstance(document, dict) or "history" not in document or document["history"] is True:
            return payload
        document["history"] = True
        return encode_document(document)
    except (ValueError, RecursionError):
        return payload


def _clear_row(event: _Clear) -> NewRow:
    """Return the outbox row of a clear: zero-length, retained, QoS 1."""
    return NewRow(
        topic=event.topic,
        payload=b"",
        qos=1,
        retain=True,
        priority=event.priority,
        created_wall=format_rfc3339_ms(event.ts),
    )


def _as_history_row(row: NewRow) -> NewRow:
    """Return a spilled row marked as history (alarm priority and above; others unchanged)."""
    if row.priority < DeliveryPriority.ALARM:
        return row
    return dataclasses.replace(row, payload=_as_history(row.payload))


class _ConnectionPolicy:
    """paho's reconnect delay: the configured backoff, or a hold after a keepalive timeout.

    Owned by paho's network thread (`on_connect`, `on_disconnect`, `on_pre_connect`).
    """

    def __init__(self, *, keepalive_s: float, min_delay_s: float, max_delay_s: float) -> None:
        self._keepalive_s = keepalive_s
        self._configured_keepalive_s = keepalive_s
        self._min_delay_s = min_delay_s
        self._max_delay_s = max_delay_s
        self._holding = False

    def connected(self, *, server_keepalive_s: float | None) -> None:
        """Use the keepalive the broker granted (MQTT v5 Server Keep Alive) for the next hold."""
        self._keepalive_s = server_keepalive_s or self._configured_keepalive_s

    def lost(self, client: Client, *, keepalive_timeout: bool) -> float | None:
        """After a loss: return the hold in seconds (and set it as paho's next delay) when needed."""
        if not keepalive_timeout:
            return None
        hold_s = 1.5 * self._keepalive_s + HOLD_MARGIN_S
        client.reconnect_delay_set(
            min_delay=hold_s,  # type: ignore[arg-type]  # paho annotates int, uses float
            max_delay=max(hold_s, self._max_delay_s),  # type: ignore[arg-type]
        )
        self._holding = True
        return hold_s

    def attempting(self, client: Client) -> None:
        """A new attempt starts: back to the configured backoff if a hold was set."""
        if self._holding:
            client.reconnect_delay_set(
                min_delay=self._min_delay_s,  # type: ignore[arg-type]
                max_delay=self._max_delay_s,  # type: ignore[arg-type]
            )
            self._holding = False


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails (paho-mqtt 2.2 leaves it open)."""

    def do_handshake(self, block: bool = False) -> None:
        """Shake hands; on failure close the socket and re-raise."""
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except BaseException:
            self.close()
            raise


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Return the client's TLS context: TLS 1.2 or newer, the broker's certificate and name verified.

    The one context of every client of the appliance's broker (the daemon, `provision`, `diag mqtt`),
    so a tool's verdict on the TLS material is the daemon's.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.sslsocket_class = _ClosingSSLSocket
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(tls.ca))
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    context.check_hostname = not tls.insecure_skip_hostname_check
    return context


def _describe_connect_error(exc: BaseException | None) -> str:
    """Say why a connection attempt failed, in words that stay the same from one retry to the next."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or repr(exc)
    return "no reason given"


class Publisher:
    """Durable, ordered, at-least-once delivery of the appliance's messages to the ward broker."""

    def __init__(
        self,
        *,
        mqtt: MqttConfig,
        store: StoreConfig,
        topics: Topics,
        appliance_id: str,
        beds: list[str],
        version: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utc_now,
        on_inbound: Callable[[InboundMessage], None] | None = None,
        central_station_topic: str | None = None,
        on_link_up: Callable[[], None] | None = None,
    ) -> None:
        """`on_inbound` gets the commands (and the central station's state, on `central_station_topic`)
        and `on_link_up` is told of every new connection; both are called on the asyncio loop."""
        if central_station_topic is not None and on_inbound is None:
            raise ValueError("central_station_topic needs on_inbound to receive its messages")
        if central_station_topic is not None and (
            not central_station_topic or "+" in central_station_topic or "#" in central_station_topic
        ):
            raise ValueError(f"not a single topic: {central_station_topic!r}")
        self._on_inbound = on_inbound
        self._central_station_topic = central_station_topic
        self._on_link_up = on_link_up
        self._mqtt_config = mqtt
        self._store_config = store
        self._topics = topics
        self._appliance_id = appliance_id
        self._beds = list(beds)
        self._version = version
        self._clock = clock
        self._wall_clock = wall_clock
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        # owned by the submitting (asyncio loop) thread
        self._seq: dict[str, int] = {}
        self._submitted = 0
        self._refused: Counter[DeliveryPriority] = Counter()
        self._waves_overflowed = 0
        self._waves: deque[_Wave] = deque()
        """The wave lane: filled by the loop thread, emptied by the worker (deque ends are thread-safe)."""
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session = 0
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._status = _StatusMessages(
            appliance_id=appliance_id, version=version, beds=self._beds, wall_clock=wall_clock
        )
        # inbound messages: counted by paho's thread, `_inbound_taken` by the loop thread (one lock)
        self._inbound_lock = threading.Lock()
        self._inbound_received = 0
        self._inbound_dropped = 0
        self._inbound_handed = 0
        self._inbound_taken = 0
        self._inbound_drop_logged: set[str] = set()
        self._callback_errors = 0
        """Exceptions raised by `on_inbound` and `on_link_up` (loop thread)."""
        # owned by the worker thread (read by others only through `_snapshot`)
        self._outbox: Outbox | None = None
        self._worker_session = 0
        self._client: Client | None = None
        self._link_up = False
        self._in_flight: dict[int, tuple[int | None, DeliveryPriority]] = {}
        """paho mid -> (outbox row id, or None for a row sent from the spill; priority)."""
        self._window = IN_FLIGHT_WINDOW
        """The in-flight window of the current connection (the broker's Receive Maximum may narrow it)."""
        self._bulk: deque[_Submission | _Clear] = deque()
        """The bulk lane: submissions on bulk state topics not yet encoded and stored, in order."""
        self._cursor = 0
        self._last_stored_id = 0
        """The highest outbox row id stored so far (this session or an earlier one)."""
        self._history_max_id = 0
        """Alarm rows up to this id were stored before the current connection came up: sent as history."""
        self._pending = 0
        self._acked = 0
        self._dropped: Counter[DeliveryPriority] = Counter()
        self._spill = Spill(max_bytes=SPILL_MAX_BYTES)
        self._undeleted: list[int] = []
        """Acked row ids a full disk kept us from deleting (never re-sent: the cursor is past them)."""
        self._disk_retry_s = 0.0
        self._disk_full_logged = False
        self._losses = _LossTally()
        self._next_loss_report_s = 0.0
        self._outbox_disk_bytes = 0
        self._outbox_cap_bytes = 0
        self._errors = 0
        self._waves_sent = 0
        self._waves_dropped = 0
        self._last_error: str | None = None
        self._fatal_error: str | None = None
        self._stop_request: _StopRequest | None = None
        self._sending = True
        self._offline_mid: int | None = None
        self._offline_acked = False
        self._connect_failures = 0
        self._connect_reasons_logged: set[str] = set()
        self._link_birth_seq: int | None = None
        self._reconnecting = False
        self._watch_refused_logged = False
        self._refused_filters_logged: set[str] = set()
        # owned by paho's network thread
        self._policy = _ConnectionPolicy(
            keepalive_s=mqtt.keepalive, min_delay_s=mqtt.reconnect_min_s, max_delay_s=mqtt.reconnect_max_s
        )
        self._subscriptions: dict[int, str] = {}
        """paho mid of a SUBSCRIBE -> its filter, until the SUBACK."""
        self._snapshot = _WorkerSnapshot()

    # ---- public API (asyncio loop thread) -------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the worker has a live broker connection (its birth was handed to paho)."""
        return self._snapshot.connected

    @property
    def session(self) -> int:
        """The session number of this run (valid after `start`)."""
        if self._session == 0:
            raise RuntimeError("the publisher has not started")
        return self._session

    async def start(self) -> None:
        """Open the outbox on the worker thread and start connecting; return once both are under way.

        A broker that is down does not delay or fail this: the worker buffers and paho keeps trying.
        Raise OutboxError when the outbox cannot be opened.
        """
        if self._thread is not None:
            raise RuntimeError("the publisher was already started")
        self._loop = asyncio.get_running_loop()
        # A daemon thread: whatever goes wrong on the loop side, the worker never keeps a dying process.
        self._thread = threading.Thread(target=self._run, name="icu-edge-publisher", daemon=True)
        self._thread.start()
        try:
            self._session = await asyncio.wait_for(asyncio.wrap_future(self._started), START_TIMEOUT_S)
        except BaseException:
            await asyncio.wrap_future(self._done)
            await asyncio.to_thread(self._thread.join)
            raise
        self._accepting = True

    def submit(
        self,
        *,
        topic: str,
        bed: str | None,
        body: Body,
        qos: int = 1,
        retain: bool = False,
        priority: DeliveryPriority,
    ) -> None:
        """Stamp `seq` and `ts` on a message and hand it to the worker; never blocks.

        QoS 1 messages go through the outbox; QoS 0 messages are published directly when connected
        and counted as dropped when not.
        """
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        self._check_topic(topic)
        if not self._accepting:
            self._refused[priority] += 1
            LOGGER.warning(
                "publisher not accepting (not started or stopping): dropped a %s message on %s",
                priority.name.lower(),
                topic,
            )
            return
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        self._submitted += 1
        self._events.put(
            _Submission(
                topic=topic,
                bed=bed,
                body=body,
                qos=qos,
                retain=retain,
                priority=priority,
                seq=seq,
                ts=self._wall_clock(),
            )
        )

    def submit_clear(
        self, *, topic: str, bed: str | None, priority: DeliveryPriority = DeliveryPriority.ALARM
    ) -> None:
        """Delete the broker's retained copy of `topic` (a zero-length retained QoS 1 message); never blocks.

        It goes through the outbox behind everything submitted before it, so it lands after the last
        state of an ended alarm. No envelope, no seq. `bed` names the bed it belongs to (for the log).
        """
        self._check_topic(topic)
        if not self._accepting:
            self._refused[priority] += 1
            LOGGER.warning(
                "publisher not accepting (not started or stopping): dropped the clear of %s (bed %s)",
                topic,
                bed,
            )
            return
        self._submitted += 1
        self._events.put(_Clear(topic=topic, priority=priority, ts=self._wall_clock()))

    def set_birth_state(
        self, *, alarms: Mapping[str, Sequence[AlarmSummary]], central_station: str | None
    ) -> None:
        """Set what every birth from now on reports: active alarms per bed, the central station's state.

        A station that (re)connects re-syncs from the retained birth; the Will and the offline message
        carry neither.
        """
        snapshot = {bed: tuple(summaries) for bed, summaries in alarms.items()}
        self._status.set_birth_state(alarms=snapshot, central_station=central_station)

    def _check_topic(self, topic: str) -> None:
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"not a topic one can publish on: {topic!r}")
        if topic == self._topics.appliance_status():
            raise ValueError(f"{topic} is reserved for the publisher's birth and Will")

    def submit_wave(self, *, topic: str, bed: str, body: WaveBody) -> None:
        """Queue a wave window on its own lane (QoS 0, never stored); never blocks.

        The worker sends waves only when nothing else waits for it, so a burst of waves never delays
        an observation, an alarm or a state; when waves pile up past `WAVE_QUEUE_MAX` (the worker is
        busy, the broker slow) the oldest are dropped and counted.
        """
        if not self._accepting:
            self._waves_overflowed += 1
            return
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        was_empty = not self._waves
        if len(self._waves) >= WAVE_QUEUE_MAX:
            with contextlib.suppress(IndexError):
                self._waves.popleft()
                self._waves_overflowed += 1
        self._waves.append(_Wave(topic=topic, bed=bed, body=body, seq=seq, ts=self._wall_clock()))
        if was_empty:
            self._events.put(_WavesWaiting())

    async def stop(self, *, flush_timeout_s: float) -> None:
        """Stop accepting, flush for up to `flush_timeout_s`, publish `offline`, disconnect, close.

        Rows not acknowledged by then stay in the outbox for the next start.
        """
        if self._thread is None:
            return
        self._accepting = False
        if not self._done.done():
            self._events.put(_StopRequest(flush_timeout_s=flush_timeout_s))
        await asyncio.wrap_future(self._done)
        await asyncio.to_thread(self._thread.join)

    def stats(self) -> PublisherStats:
        """Return a snapshot of counters and state."""
        snapshot = self._snapshot
        dropped = Counter(snapshot.dropped)
        dropped.update(self._refused)
        with self._inbound_lock:
            inbound_received = self._inbound_received
            inbound_dropped = self._inbound_dropped
        return PublisherStats(
            connected=snapshot.connected,
            session=self._session,
            pending=snapshot.pending,
            in_flight=snapshot.in_flight,
            submitted=self._submitted,
            acked=snapshot.acked,
            dropped=dict(dropped),
            spilled=snapshot.spilled,
            outbox_disk_bytes=snapshot.outbox_disk_bytes,
            outbox_cap_bytes=snapshot.outbox_cap_bytes,
            errors=snapshot.errors + self._callback_errors,
            waves_sent=snapshot.waves_sent,
            waves_dropped=snapshot.waves_dropped + self._waves_overflowed,
            inbound_received=inbound_received,
            inbound_dropped=inbound_dropped,
            last_progress_s=snapshot.last_progress_s,
            last_error=snapshot.last_error,
            fatal_error=snapshot.fatal_error,
        )

    # ---- worker thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            session = self._open()
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            self._started.set_exception(exc)
            self._done.set_result(None)
            return
        self._started.set_result(session)
        try:
            self._serve()
        finally:
            self._done.set_result(None)

    def _open(self) -> int:
        outbox = Outbox(
            path=self._store_config.path,
            max_bytes=self._store_config.max_bytes,
            synchronous=self._store_config.synchronous,
        )
        outbox.open()
        try:
            session = outbox.start_session()
            self._worker_session = session
            try:
                self._pending = outbox.count()
                self._last_stored_id = outbox.last_id()
                self._outbox_disk_bytes = outbox.disk_usage().total_bytes
                self._outbox_cap_bytes = outbox.effective_cap_bytes()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {outbox.path}: cannot use the database: {exc}") from exc
            self._status.begin(session)
            self._client = self._make_client()
            config = self._mqtt_config
            self._client.connect_async(config.host, config.port, keepalive=config.keepalive)
            self._client.loop_start()
        except BaseException:
            outbox.close()
            raise
        self._outbox = outbox
        LOGGER.info(
            "publisher session %d started: %d rows waiting in the outbox; connecting to %s:%d",
            session,
            self._pending,
            config.host,
            config.port,
        )
        # Opening the outbox is progress: a watchdog check before the first worker pass must not read the
        # initial 0.0 as a beat from long ago.
        self._publish_snapshot(last_progress_s=self._clock())
        return session

    def _make_client(self) -> Client:
        config = self._mqtt_config
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"icu-edge-{self._appliance_id}",
            protocol=MQTTv5,
        )
        paho_logger = logging.getLogger(f"{__name__}.paho")
        if not any(isinstance(f, _DemotePahoNoSocketError) for f in paho_logger.filters):
            paho_logger.addFilter(_DemotePahoNoSocketError())
        client.enable_logger(paho_logger)
        if config.username is not None:
            password = read_secret(config.password_file) if config.password_file is not None else None
            client.username_pw_set(config.username, password)
        if config.tls is not None:
            client.tls_set_context(tls_context(config.tls))
            client.tls_insecure_set(config.tls.insecure_skip_hostname_check)
            if config.tls.insecure_skip_hostname_check:
                LOGGER.warning(
                    "INSECURE: the broker's certificate is not checked against the name %r "
                    "(tls.insecure_skip_hostname_check = true): any certificate of the CA can impersonate it",
                    config.host,
                )
        else:
            LOGGER.warning(
                "INSECURE: plaintext MQTT to %s:%d (insecure = true): patient data and credentials cross "
                "the network unencrypted and the broker is not authenticated",
                config.host,
                config.port,
            )
        client.reconnect_delay_set(
            min_delay=config.reconnect_min_s,  # type: ignore[arg-type]  # paho annotates int, uses float
            max_delay=config.reconnect_max_s,  # type: ignore[arg-type]
        )
        client.max_inflight_messages_set(IN_FLIGHT_WINDOW + STATUS_IN_FLIGHT)
        # the Will is set in on_pre_connect, before every attempt (the first one included)
        client.on_pre_connect = self._on_pre_connect
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _serve(self) -> None:
        while self._stop_request is None:
            try:
                busy = self._waves or self._bulk_limit(fast_rows=0) > 0
                self._step(wait_s=0.0 if busy else WAKE_INTERVAL_S)
            except (sqlite3.Error, OutboxError) as exc:
                if not is_disk_full(exc):
                    self._fail(exc)
                    break
                self._note_disk_full(exc)
            except Exception as exc:
                LOGGER.exception("publisher: worker iteration failed")
                self._count_error("worker iteration", exc)
            self._beat()
        if self._fatal_error is not None:
            self._wait_for_stop_after_failure()
        self._shutdown()

    def _beat(self) -> None:
        self._publish_snapshot(last_progress_s=self._clock())

    def _publish_snapshot(self, *, last_progress_s: float | None = None) -> None:
        self._snapshot = _WorkerSnapshot(
            connected=self._link_up,
            pending=self._pending + len(self._bulk),
            in_flight=len(self._in_flight),
            acked=self._acked,
            dropped=dict(self._dropped),
            spilled=len(self._spill),
            outbox_disk_bytes=self._outbox_disk_bytes,
            outbox_cap_bytes=self._outbox_cap_bytes,
            errors=self._errors,
            waves_sent=self._waves_sent,
            waves_dropped=self._waves_dropped,
            last_progress_s=self._snapshot.last_progress_s if last_progress_s is None else last_progress_s,
            last_error=self._last_error,
            fatal_error=self._fatal_error,
        )

    def _count_error(self, where: str, exc: BaseException) -> None:
        """Count an exception the caller has logged with its traceback."""
        self._errors += 1
        self._last_error = f"{where}: {exc!r}"

    def _note_disk_full(self, exc: BaseException) -> None:
        """A write found the disk full: not fatal (rows wait in memory); logged once per episode."""
        self._count_error("outbox write", exc)
        if not self._disk_full_logged:
            self._disk_full_logged = True
            LOGGER.error(
                "outbox %s: the disk is full (%s); keeping up to %d bytes of the newest rows in memory and"
                " retrying every %.0f s",
                self._store_config.path,
                exc,
                SPILL_MAX_BYTES,
                DISK_RETRY_S,
            )

    def _fail(self, exc: BaseException) -> None:
        self._dropped.update(Counter(event.priority for event in self._bulk))
        self._bulk.clear()
        self._errors += 1
        self._fatal_error = f"outbox failed: {exc}"
        self._last_error = self._fatal_error
        LOGGER.critical("publisher: the outbox failed; stopping delivery", exc_info=exc)
        if self._outbox is not None:
            self._outbox.close()
        self._publish_snapshot()

    def _wait_for_stop_after_failure(self) -> None:
        """After a fatal outbox error: no heartbeat, no delivery; wait for `stop`."""
        while self._stop_request is None:
            event = self._events.get()
            if isinstance(event, _StopRequest):
                self._stop_request = event
            elif isinstance(event, _Submission | _Clear):
                self._dropped[event.priority] += 1
            elif isinstance(event, _LinkUp | _LinkDown):
                self._link_up = isinstance(event, _LinkUp)
            self._publish_snapshot()

    def _drain(self, *, wait_s: float) -> list[_Event]:
        events: list[_Event] = []
        try:
            events.append(self._events.get(timeout=wait_s))
            while len(events) < BATCH_MAX:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        return events

    def _step(self, *, wait_s: float) -> None:
        outbox = self._outbox
        assert outbox is not None
        new_rows: list[NewRow] = []
        acked_ids: list[int] = []
        link_ups = 0
        for event in self._drain(wait_s=wait_s):
            match event:
                case _Submission() | _Clear() if self._topics.is_bulk_state(event.topic):
                    self._bulk.append(event)
                case _Submission():
                    self._take_submission(event, new_rows)
                case _Clear():
                    new_rows.append(_clear_row(event))
                case _Acked(mid=mid, failure=failure):
                    self._take_ack(mid=mid, failure=failure, acked_ids=acked_ids)
                case _LinkUp() | _LinkDown() | _LinkRefused() | _ConnectFailed():
                    self._take_link_event(event)
                    if isinstance(event, _LinkUp):
                        link_ups += 1
                case _StatusSeen():
                    self._take_status(event)
                case _WatchRefused(reason=reason):
                    if not self._watch_refused_logged:
                        self._watch_refused_logged = True
                        LOGGER.warning(
                            "the broker refused our subscription to %s (%s): a stale Will landing after "
                            "the birth would not be corrected (grant the appliance read access to it)",
                            self._topics.appliance_status(),
                            reason,
                        )
                case _SubscriptionRefused(topic_filter=topic_filter, reason=reason):
                    self._last_error = f"broker refused the subscription to {topic_filter}: {reason}"
                    if topic_filter not in self._refused_filters_logged:
                        self._refused_filters_logged.add(topic_filter)
                        LOGGER.error(
                            "the broker refused our subscription to %s (%s): nothing published there reaches "
                            "the appliance (grant the appliance read access to it)",
                            topic_filter,
                            reason,
                        )
                case _CallbackFailed(where=where, error=error):
                    self._errors += 1
                    self._last_error = f"{where}: {error}"
                case _StopRequest():
                    self._stop_request = event
                case _WavesWaiting():
                    pass
        disk_waiting = len(self._spill) > 0 or len(self._undeleted) > 0
        disk_retry = disk_waiting and self._clock() >= self._disk_retry_s
        if link_ups:
            # before this pass's rows are stored: they were submitted at most one pass ago, so are live
            self._mark_history_boundary()
            for _ in range(link_ups):
                self._notify_link_up()
        self._take_bulk(new_rows)
        if not self._commit_step(outbox, new_rows, acked_ids, disk_retry=disk_retry):
            if new_rows or disk_retry:
                self._store(outbox, new_rows, retry=disk_retry)
            if acked_ids or disk_retry:
                self._delete(outbox, acked_ids)
        if self._link_up and self._sending:
            self._fill_window(outbox)
        self._flush_loss_reports()
        self._send_waves()

    def _bulk_limit(self, *, fast_rows: int) -> int:
        """How many waiting bulk rows this step may encode and store (module docstring, 'Lanes')."""
        if not self._bulk:
            return 0
        if self._stop_request is not None:
            return len(self._bulk)
        connected = self._link_up and self._sending and not len(self._spill)
        if not connected or len(self._bulk) > BULK_BACKLOG_MAX:
            return min(len(self._bulk), BULK_STEP_ROWS)
        if self._cursor < self._last_stored_id:
            return 0  # stored rows still wait for the window: the bulk rows would queue behind them
        return max(0, min(len(self._bulk), BULK_STEP_ROWS, self._window - len(self._in_flight) - fast_rows))

    def _take_bulk(self, new_rows: list[NewRow]) -> None:
        """Encode bulk rows after the step's other rows: at most `_bulk_limit`, within `BULK_STEP_S`."""
        limit = self._bulk_limit(fast_rows=len(new_rows))
        if limit <= 0:
            return
        stopping = self._stop_request is not None
        deadline_s = self._clock() + BULK_STEP_S
        for taken in range(limit):
            if taken and not stopping and self._clock() >= deadline_s:
                return
            event = self._bulk.popleft()
            if isinstance(event, _Clear):
                new_rows.append(_clear_row(event))
            else:
                self._take_submission(event, new_rows)

    def _commit_step(
        self, outbox: Outbox, new_rows: list[NewRow], acked_ids: list[int], *, disk_retry: bool
    ) -> bool:
        """Store the step's rows and delete its acked rows in one transaction; False: take the careful path.

        The careful path (`_store`, `_delete`) handles the spill, a full disk and the cap; it runs when
        the disk was full lately or the outbox's size budget is spent (see edge/outbox.py).
        """
        if not (new_rows or acked_ids):
            return not disk_retry
        if disk_retry or len(self._spill) or self._undeleted or self._disk_full_logged:
            return False
        done = outbox.store_and_delete(new_rows, acked_ids)
        if done is None:
            return False
        ids, deleted = done
        if ids:
            self._last_stored_id = max(self._last_stored_id, ids[-1])
        self._pending += len(ids) - deleted
        return True

    def _mark_history_boundary(self) -> None:
        """A connection came up: the alarm rows waiting now (outbox and spill) are sent as history.

        Outbox rows are rewritten when handed to paho (`_fill_window`, by id); spilled rows are rewritten
        in memory now, since they get their ids only when the disk takes them.
        """
        self._history_max_id = self._last_stored_id
        if len(self._spill):
            self._report_drop(self._spill.add([_as_history_row(row) for row in self._spill.take()]))

    def _notify_link_up(self) -> None:
        """Tell the loop a connection came up (after the history boundary is recorded)."""
        loop = self._loop
        if self._on_link_up is None or self._stop_request is not None or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._call_link_up)
        except RuntimeError as exc:
            LOGGER.exception("publisher: cannot tell the event loop about the new connection")
            self._count_error("calling on_link_up", exc)

    def _call_link_up(self) -> None:
        """Run `on_link_up` (loop thread)."""
        assert self._on_link_up is not None
        try:
            self._on_link_up()
        except Exception:
            LOGGER.exception("publisher: on_link_up failed")
            self._callback_errors += 1

    def _send_waves(self) -> None:
        """Send queued wave windows while nothing else waits for the worker, at most `WAVE_BURST` a step."""
        sent = 0
        while self._waves and sent < WAVE_BURST and self._events.empty():
            wave = self._waves.popleft()
            sent += 1
            if not (self._link_up and self._sending) or self._client is None:
                self._waves_dropped += 1
                continue
            try:
                payload = encode_message(
                    wave.body,
                    appliance=self._appliance_id,
                    bed=wave.bed,
                    session=self._worker_session,
                    seq=wave.seq,
                    ts=wave.ts,
                )
            except Exception as exc:
                LOGGER.exception("publisher: cannot encode a wave for %s; dropped it", wave.topic)
                self._waves_dropped += 1
                self._count_error(f"encoding a wave for {wave.topic}", exc)
                continue
            info = self._client.publish(wave.topic, payload, qos=0, retain=False)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._waves_sent += 1
            else:
                self._waves_dropped += 1

    def _store(self, outbox: Outbox, new_rows: list[NewRow], *, retry: bool) -> None:
        """Store new rows behind any spilled ones; what a full disk refuses waits in the spill."""
        if len(self._spill) and not retry:
            self._report_drop(self._spill.add(new_rows))
            return
        result = outbox.store([*self._spill.take(), *new_rows])
        if result.ids:
            self._last_stored_id = max(self._last_stored_id, max(result.ids))
        if result.dropped.total:
            self._pending = outbox.count()
            self._report_drop(result.dropped)
        else:
            self._pending += len(result.ids)
        if result.unstored:
            self._note_disk_full(OutboxError(f"outbox {outbox.path}: database or disk is full"))
            self._report_drop(self._spill.add(result.unstored))
            self._disk_retry_s = self._clock() + DISK_RETRY_S
        elif self._disk_full_logged and not self._undeleted:
            self._disk_full_logged = False
            LOGGER.warning("outbox %s: the disk takes rows again", outbox.path)
        self._outbox_disk_bytes = result.dropped.size_after_bytes
        self._outbox_cap_bytes = result.dropped.cap_bytes

    def _delete(self, outbox: Outbox, acked_ids: list[int]) -> None:
        """Delete acked rows; on a full disk keep their ids for a later try (they are not re-sent)."""
        ids = [*self._undeleted, *acked_ids]
        if not ids:
            return
        try:
            self._pending -= outbox.delete(ids)
            self._undeleted = []
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._undeleted = ids
            self._disk_retry_s = self._clock() + DISK_RETRY_S
            self._note_disk_full(exc)

    def _take_link_event(self, event: _LinkUp | _LinkDown | _LinkRefused | _ConnectFailed) -> None:
        config = self._mqtt_config
        match event:
            case _LinkUp(session_present=session_present, birth_seq=birth_seq):
                self._link_up = True
                receive_maximum = event.receive_maximum or IN_FLIGHT_WINDOW + STATUS_IN_FLIGHT
                self._window = max(1, min(IN_FLIGHT_WINDOW, receive_maximum - STATUS_IN_FLIGHT))
                self._link_birth_seq = birth_seq
                self._connect_failures = 0
                self._connect_reasons_logged.clear()
                LOGGER.info(
                    "connected to %s:%d (session present: %s); birth %d sent, %d rows waiting",
                    config.host,
                    config.port,
                    session_present,
                    birth_seq,
                    self._pending,
                )
            case _LinkDown(reason=reason, hold_s=hold_s):
                if self._link_up:
                    LOGGER.warning(
                        "disconnected from the broker (%s); %d rows in flight stay with paho, "
                        "%d in the outbox",
                        reason,
                        len(self._in_flight),
                        self._pending,
                    )
                if hold_s is not None:
                    LOGGER.log(
                        logging.WARNING if self._link_up else logging.DEBUG,
                        "no answer from the broker within the keepalive: waiting %.1f s before the next "
                        "attempt, until the broker must have dropped the old connection",
                        hold_s,
                    )
                self._link_up = False
                self._link_birth_seq = None
                if self._reconnecting and self._stop_request is None:
                    self._restart_connection()
            case _LinkRefused(reason=reason):
                self._last_error = f"broker refused the connection: {reason}"
                self._log_connect_problem(reason=self._last_error, level=logging.ERROR)
            case _ConnectFailed(reason=reason, tls=tls):
                self._last_error = f"cannot reach the broker: {reason}"
                self._log_connect_problem(reason=reason, level=logging.ERROR if tls else logging.WARNING)

    def _log_connect_problem(self, *, reason: str, level: int) -> None:
        """Log a failed attempt: once per distinct reason until a connection succeeds, then at DEBUG."""
        self._connect_failures += 1
        first = reason not in self._connect_reasons_logged
        self._connect_reasons_logged.add(reason)
        LOGGER.log(
            level if first else logging.DEBUG,
            "cannot connect to the broker at %s:%d: %s (attempt %d); messages are buffered in the outbox",
            self._mqtt_config.host,
            self._mqtt_config.port,
            reason,
            self._connect_failures,
        )

    def _take_status(self, event: _StatusSeen) -> None:
        """Reconnect when an older `offline` of this appliance landed after the current birth."""
        try:
            status = ApplianceStatusMessage.model_validate_json(event.payload)
        except ValidationError:
            LOGGER.debug("ignored a message on %s: not a status message", self._topics.appliance_status())
            return
        birth_seq = self._link_birth_seq
        if (
            status.state != ApplianceState.OFFLINE
            or status.appliance != self._appliance_id
            or birth_seq is None
            or event.birth_seq != birth_seq
            or (status.session, status.seq) >= (self._worker_session, birth_seq)
            or self._reconnecting
            or self._stop_request is not None
        ):
            return
        LOGGER.warning(
            "the broker published an old offline status (session %d, seq %d) after our birth (seq %d): "
            "reconnecting so that the retained status says online again",
            status.session,
            status.seq,
            birth_seq,
        )
        assert self._client is not None
        if self._client.is_connected():
            self._reconnecting = True
            self._client.disconnect()

    def _restart_connection(self) -> None:
        """After our own clean DISCONNECT paho's thread has ended: start a new connection."""
        client = self._client
        assert client is not None
        client.loop_stop()
        # loop_start() makes a new wake-up socket pair without closing the old one (paho-mqtt 2.2)
        client._reset_sockets(sockpair_only=True)
        config = self._mqtt_config
        client.connect_async(config.host, config.port, keepalive=config.keepalive)
        client.loop_start()
        self._reconnecting = False

    def _take_submission(self, event: _Submission, new_rows: list[NewRow]) -> None:
        try:
            payload = encode_message(
                event.body,
                appliance=self._appliance_id,
                bed=event.bed,
                session=self._worker_session,
                seq=event.seq,
                ts=event.ts,
            )
        except Exception as exc:
            LOGGER.exception("publisher: cannot encode a message for %s; dropped it", event.topic)
            self._dropped[event.priority] += 1
            self._count_error(f"encoding a message for {event.topic}", exc)
            return
        if event.qos == 0:
            self._publish_qos0(event, payload)
            return
        new_rows.append(
            NewRow(
                topic=event.topic,
                payload=payload,
                qos=event.qos,
                retain=event.retain,
                priority=event.priority,
                created_wall=format_rfc3339_ms(event.ts),
            )
        )

    def _publish_qos0(self, event: _Submission, payload: bytes) -> None:
        assert self._client is not None
        if not self._link_up:
            self._dropped[event.priority] += 1
            return
        info = self._client.publish(event.topic, payload, qos=0, retain=event.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._dropped[event.priority] += 1

    def _take_ack(self, *, mid: int, failure: str | None, acked_ids: list[int]) -> None:
        entry = self._in_flight.pop(mid, None)
        if entry is not None:
            row_id, priority = entry
            if row_id is not None:
                acked_ids.append(row_id)
            if failure is None:
                self._acked += 1
            else:
                # Re-sending a message the broker rejected would block every row behind it.
                self._dropped[priority] += 1
                self._last_error = f"broker rejected outbox row {row_id}: {failure}"
                LOGGER.error("the broker rejected outbox row %d (%s); dropped it", row_id, failure)
        elif mid == self._offline_mid:
            self._offline_acked = True

    def _fill_window(self, outbox: Outbox) -> None:
        client = self._client
        assert client is not None
        room = self._window - len(self._in_flight)
        if room <= 0:
            return
        rows = outbox.pending(after_id=self._cursor, limit=room)
        for row in rows:
            self._cursor = row.id
            payload = row.payload
            if row.id <= self._history_max_id and row.priority >= DeliveryPriority.ALARM:
                payload = _as_history(payload)
            try:
                info = client.publish(row.topic, payload, qos=row.qos, retain=row.retain)
            except ValueError as exc:
                LOGGER.exception("publisher: paho refused outbox row %d on %r; dropped it", row.id, row.topic)
                self._count_error(f"publishing outbox row {row.id} on {row.topic!r}", exc)
                self._dropped[row.priority] += 1
                self._pending -= outbox.delete([row.id])
                continue
            # MQTT_ERR_NO_CONN: paho keeps the message and sends it after the next CONNACK.
            self._in_flight[info.mid] = (row.id, row.priority)
        if len(rows) < room:
            # Every stored row is handed (ids up to the last stored one that the answer lacks were shed).
            self._cursor = max(self._cursor, self._last_stored_id)
        if len(rows) < room and len(self._spill):
            # Every stored row is handed: the spilled rows (newer than all of them) follow, from memory,
            # after the stored ones of this pass, so each topic keeps its order.
            for spilled in self._spill.take(room - len(rows)):
                info = client.publish(spilled.topic, spilled.payload, qos=spilled.qos, retain=spilled.retain)
                self._in_flight[info.mid] = (None, spilled.priority)

    def _report_drop(self, report: DropReport) -> None:
        """Count a drop (cap, full disk, spill bound); `_flush_loss_reports` tells the station."""
        if report.total:
            self._dropped.update(report.by_priority)
            self._losses.add(report)

    def _flush_loss_reports(self, *, final: bool = False) -> None:
        """Report the drops since the last report: one WARNING line and one event per bed.

        The first drop is reported at once, later ones at most every `LOSS_REPORT_INTERVAL_S`, each
        with the counts since the previous report, so a long outage cannot flood log or outbox. The
        events carry `LOSS_REPORT` priority: only a full outbox of loss reports can shed one. At stop
        (`final`) nothing can be submitted any more: the remainder is logged.
        """
        losses = self._losses
        now_s = self._clock()
        if not losses.by_topic or (now_s < self._next_loss_report_s and not final):
            return
        self._next_loss_report_s = now_s + LOSS_REPORT_INTERVAL_S
        self._losses = _LossTally()
        counts = ", ".join(f"{p.name.lower()}={n}" for p, n in sorted(losses.by_priority.items()))
        cause = (
            f"outbox above its cap of {losses.cap_bytes} bytes"
            f" (max_bytes {self._store_config.max_bytes}, less when the disk is short)"
            if losses.cap_bytes
            else "disk full, memory bound reached"
        )
        LOGGER.warning(
            "%s: dropped %d messages (%s) in %d passes since the last report%s",
            cause,
            sum(losses.by_priority.values()),
            counts,
            losses.passes,
            "; reported on the beds' events topics" if not final else "; not reported (stopping)",
        )
        if final:
            return
        prefix = f"{self._topics.root}/bed/"
        per_bed: dict[str, Counter[str]] = {}
        for topic, count in losses.by_topic.items():
            if topic.startswith(prefix):
                per_bed.setdefault(topic[len(prefix) :].split("/", 1)[0], Counter())[topic] += count
        loop = self._loop
        for bed, topics in per_bed.items():
            detail = f"{cause}: dropped {counts}; " + ", ".join(
                f"{topic}: {n}" for topic, n in sorted(topics.items())
            )
            if loop is None or loop.is_closed():
                LOGGER.warning("cannot report the outbox drop on bed %s: no event loop (%s)", bed, detail)
                continue
            try:
                loop.call_soon_threadsafe(self._submit_drop_event, bed, detail)
            except RuntimeError as exc:
                LOGGER.exception("publisher: cannot report the outbox drop on bed %s", bed)
                self._count_error(f"reporting the outbox drop on bed {bed}", exc)

    def _submit_drop_event(self, bed: str, detail: str) -> None:
        """Submit an OUTBOX_DROPPED event (runs on the asyncio loop thread, owner of the seqs)."""
        self.submit(
            topic=self._topics.events(bed),
            bed=bed,
            body=EventBody(kind=EventKind.OUTBOX_DROPPED, detail=detail, at=self._wall_clock()),
            priority=DeliveryPriority.LOSS_REPORT,
        )

    def _shutdown(self) -> None:
        client = self._client
        status = self._status
        assert client is not None
        assert self._stop_request is not None
        if self._fatal_error is None:
            deadline = self._clock() + self._stop_request.flush_timeout_s
            while (self._pending or self._bulk) and self._link_up and self._clock() < deadline:
                self._safe_step()
                if self._fatal_error is not None:
                    break
                self._beat()
        self._sending = False
        if self._link_up:
            info = client.publish(self._topics.appliance_status(), status.offline(), qos=1, retain=True)
            self._offline_mid = info.mid
            deadline = self._clock() + OFFLINE_ACK_TIMEOUT_S
            while not self._offline_acked and self._link_up and self._clock() < deadline:
                self._safe_step()
                self._beat()
            if not self._offline_acked:
                LOGGER.warning("no PUBACK for the offline status within %.1f s", OFFLINE_ACK_TIMEOUT_S)
        client.disconnect()
        client.loop_stop()
        self._link_up = False
        if self._outbox is not None:
            try:
                self._step_events_only()
            finally:
                self._outbox.close()
        if len(self._spill):
            lost = self._spill.take()
            self._dropped.update(Counter(row.priority for row in lost))
            LOGGER.warning("%d rows held in memory (the disk was full) are lost with this stop", len(lost))
        self._flush_loss_reports(final=True)
        LOGGER.info(
            "publisher session %d stopped: %d rows stay in the outbox for the next start",
            self._worker_session,
            self._pending,
        )
        self._publish_snapshot()

    def _safe_step(self) -> None:
        try:
            self._step(wait_s=0.05)
        except (sqlite3.Error, OutboxError) as exc:
            self._fail(exc)
        except Exception as exc:
            LOGGER.exception("publisher: worker iteration failed")
            self._count_error("worker iteration", exc)

    def _step_events_only(self) -> None:
        """Store what was queued before stop and delete what was acked; send nothing more."""
        if self._fatal_error is None:
            self._safe_step()

    # ---- paho callbacks (network thread): enqueue, with the three documented exceptions --------

    def _on_pre_connect(self, client: Client, userdata: Any) -> None:
        try:
            self._policy.attempting(client)
            client.will_set(
                self._topics.appliance_status(), self._status.will_for_next_connection(), qos=1, retain=True
            )
        except Exception as exc:
            LOGGER.exception("on_pre_connect failed")
            self._events.put(_CallbackFailed(where="on_pre_connect", error=repr(exc)))

    @staticmethod
    def _on_socket_open(client: Client, userdata: Any, sock: Any) -> None:
        """Send each MQTT packet at once (TCP_NODELAY); Nagle held a small observation behind a wave.

        paho writes whole packets, so coalescing buys nothing; with Nagle on, an observation written
        after a multi-segment wave window waited for the broker's delayed ACK (about 40 ms on Linux;
        measured: vitals p99 49.7 ms at 4 beds with waves on, 5.6 ms with waves off).
        """
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._events.put(_LinkRefused(reason=str(reason_code)))
                return
            birth, birth_seq = self._status.birth()
            client.publish(self._topics.appliance_status(), birth, qos=1, retain=True)
            # after the birth: the broker answers with the retained copy of the birth or of a later one
            self._subscriptions.clear()
            self._subscribe(client, self._topics.appliance_status())
            if self._on_inbound is not None:
                # Retain As Published: a command someone published retained is flagged as such even
                # when it arrives live, so the daemon refuses it every time, not only after a reconnect
                self._subscribe(client, self._topics.commands(), retain_as_published=True)
            if self._central_station_topic is not None:
                self._subscribe(client, self._central_station_topic)
            server_keepalive = getattr(properties, "ServerKeepAlive", None)
            self._policy.connected(server_keepalive_s=server_keepalive)
            receive_maximum = getattr(properties, "ReceiveMaximum", None)
            self._events.put(
                _LinkUp(
                    session_present=flags.session_present,
                    birth_seq=birth_seq,
                    receive_maximum=receive_maximum if isinstance(receive_maximum, int) else None,
                )
            )
        except Exception as exc:
            LOGGER.exception("on_connect failed")
            self._events.put(_CallbackFailed(where="on_connect", error=repr(exc)))

    def _subscribe(self, client: Client, topic_filter: str, *, retain_as_published: bool = False) -> None:
        _, mid = client.subscribe(
            topic_filter, options=SubscribeOptions(qos=1, retainAsPublished=retain_as_published)
        )
        if mid is not None:
            self._subscriptions[mid] = topic_filter

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        try:
            self._status.connect_failed()
            # paho calls this from its `except OSError` around the attempt: the error is the one handled
            error = sys.exception()
            self._events.put(
                _ConnectFailed(reason=_describe_connect_error(error), tls=isinstance(error, ssl.SSLError))
            )
        except Exception as exc:
            LOGGER.exception("on_connect_fail failed")
            self._events.put(_CallbackFailed(where="on_connect_fail", error=repr(exc)))

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            keepalive_timeout = not flags.is_disconnect_packet_from_server and reason_code.value == 0x8D
            hold_s = self._policy.lost(client, keepalive_timeout=keepalive_timeout)
            self._events.put(_LinkDown(reason=str(reason_code), hold_s=hold_s))
        except Exception as exc:
            LOGGER.exception("on_disconnect failed")
            self._events.put(_CallbackFailed(where="on_disconnect", error=repr(exc)))
            self._events.put(_LinkDown(reason=str(reason_code), hold_s=None))

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        try:
            if message.topic == self._topics.appliance_status():
                birth_seq = self._status.current_birth_seq()
                self._events.put(_StatusSeen(payload=bytes(message.payload), birth_seq=birth_seq))
            else:
                self._hand_inbound(message)
        except Exception as exc:
            LOGGER.exception("on_message failed")
            self._events.put(_CallbackFailed(where="on_message", error=repr(exc)))

    def _hand_inbound(self, message: MQTTMessage) -> None:
        """Hand a command or the central station's state to the loop, within the bounds (paho's thread)."""
        topic = message.topic
        loop = self._loop
        reason: str | None = None
        with self._inbound_lock:
            self._inbound_received += 1
            if self._on_inbound is None or loop is None:
                reason = "no receiver"
            elif topic != self._central_station_topic and self._topics.parse_command(topic) is None:
                reason = "not a topic the appliance subscribed to"
            elif len(message.payload) > INBOUND_MAX_BYTES:
                reason = f"longer than {INBOUND_MAX_BYTES} bytes"
            elif self._inbound_handed - self._inbound_taken >= INBOUND_MAX_PENDING:
                reason = f"{INBOUND_MAX_PENDING} messages already wait for the event loop"
            else:
                self._inbound_handed += 1
        if reason is None:
            assert loop is not None
            inbound = InboundMessage(
                topic=topic,
                payload=bytes(message.payload),
                retained=message.retain,
                received_mono_s=self._clock(),
            )
            try:
                loop.call_soon_threadsafe(self._deliver_inbound, inbound)
                return
            except RuntimeError:
                reason = "the event loop is closed"
                with self._inbound_lock:
                    self._inbound_handed -= 1
        with self._inbound_lock:
            self._inbound_dropped += 1
            first = reason not in self._inbound_drop_logged
            self._inbound_drop_logged.add(reason)
        if first:
            LOGGER.warning(
                "dropped an inbound message on %r: %s (logged once per reason, counted in inbound_dropped)",
                topic,
                reason,
            )

    def _deliver_inbound(self, message: InboundMessage) -> None:
        """Run `on_inbound` (loop thread)."""
        with self._inbound_lock:
            self._inbound_taken += 1
        assert self._on_inbound is not None
        try:
            self._on_inbound(message)
        except Exception:
            LOGGER.exception("publisher: on_inbound failed for a message on %r", message.topic)
            self._callback_errors += 1

    def _on_subscribe(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        topic_filter = self._subscriptions.pop(mid, None)
        refused = [str(code) for code in reason_codes if code.is_failure]
        if not refused:
            return
        if topic_filter is None or topic_filter == self._topics.appliance_status():
            self._events.put(_WatchRefused(reason=", ".join(refused)))
        else:
            self._events.put(_SubscriptionRefused(topic_filter=topic_filter, reason=", ".join(refused)))

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._events.put(_Acked(mid=mid, failure=str(reason_code) if reason_code.is_failure else None))
