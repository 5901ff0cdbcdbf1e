"""The daemon: one asyncio process wiring device links, the twin and the publisher.

Reader threads deliver `DeviceReport`s through `call_soon_threadsafe` onto the report bus; the loop
applies them to the twin (the twin's only owner) and submits what changed to the publisher, whose own
worker thread does the JSON, the SQLite outbox and paho. systemd hears READY=1 once config, outbox and
the first broker connection attempt are set up, and WATCHDOG=1 only while the loop, every device link
and the publisher make progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from drivers.base import DeviceSession, SerialSettings, WaveformChunk
from drivers.registry import get_driver
from edge import appliance_version
from edge.alarms.store import AlarmStore, AlarmStoreError
from edge.alarms.system import AlarmSystem
from edge.bus import ReportBus
from edge.config import AppConfig, DeviceConfig
from edge.contract import Topics
from edge.device_link import DeviceLink, DeviceReport, LinkThread
from edge.diagnostics import SNAPSHOT_SCHEMA, DiagnosticsServer, socket_path
from edge.forecasting import forecast_body
from edge.history import History
from edge.listener_link import ListenerLink
from edge.model import DeviceStatusBody, EventBody, EventKind, TwinBody, TwinValue, VitalsBody, utc_now
from edge.outbox import DeliveryPriority, OutboxError
from edge.publisher import InboundMessage, Publisher
from edge.systemd import SystemdNotifier, WatchdogGate, run_watchdog
from edge.twin import DeviceIdentity, TwinDelta, TwinStore
from edge.waves import WaveWindow, WaveWindows
from engines.runtime import EnginesUnavailable, ForecastRuntime

LOGGER = logging.getLogger(__name__)

EX_OK = 0
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69
EX_CONFIG = 78

LINK_MAX_SILENCE_S = 5.0
"""A reader thread that has not looped for this long is hung: the watchdog stops being fed."""
PUBLISHER_MAX_SILENCE_S = 5.0
ENGINES_MIN_SILENCE_S = 10.0
_NOT_IN_SNAPSHOT = frozenset({"dropped", "last_progress_s"})
"""Publisher stats the diagnostics snapshot shows in another form."""
"""An inference that has not completed a tick for this long (or 3 ticks) is hung."""
FORECAST_SPREAD_S = 0.5
"""A tick's forecasts (a body each, published, shown in the twin) are spread over this long, at most
half the tick: not all beds at once into the publisher's queue, and a predictive alarm waits no more."""


class PublisherFailed(Exception):
    """The publisher's outbox became unusable while running: the daemon ends with EX_UNAVAILABLE."""


def _exit_status_of(task: asyncio.Task[None]) -> int:
    """Log a finished task's failure (with its traceback) and return the exit status it calls for."""
    if task.cancelled() or (exc := task.exception()) is None:
        return EX_OK
    if isinstance(exc, PublisherFailed):
        LOGGER.critical("the outbox is unusable (%s); stopping with exit status %d", exc, EX_UNAVAILABLE)
        return EX_UNAVAILABLE
    LOGGER.error("task %s failed; stopping with exit status %d", task.get_name(), EX_SOFTWARE, exc_info=exc)
    return EX_SOFTWARE


@dataclass(slots=True, kw_only=True)
class _BedPublishState:
    dirty: bool = True
    last_twin_mono_s: float = 0.0
    last_status_counters: dict[str, dict[str, int]] = field(default_factory=dict)


class Daemon:
    """`icu-edge run`: everything between the device ports and the broker."""

    def __init__(
        self, config: AppConfig, *, notifier: SystemdNotifier | None = None, config_path: Path | None = None
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._started_mono_s = time.monotonic()
        self._diagnostics: DiagnosticsServer | None = None
        self._notifier = notifier or SystemdNotifier()
        self._topics = Topics(
            prefix=config.mqtt.topic_prefix,
            site=config.appliance.site,
            ward=config.appliance.ward,
            appliance=config.appliance.id,
        )
        identities: list[DeviceIdentity] = []
        self._sessions: dict[tuple[str, str], DeviceSession] = {}
        self._lines: dict[tuple[str, str], SerialSettings] = {}
        self._listen_devices: dict[tuple[str, str], DeviceConfig] = {}
        """Devices that receive connections (HL7 over MLLP): a ListenerLink, one session per sender."""
        for bed in config.bed:
            for device in bed.device:
                driver = get_driver(device.driver)
                identity = DeviceIdentity(
                    bed=bed.id,
                    device=device.id,
                    driver=device.driver,
                    protocol=driver.protocol,
                    port=device.endpoint,
                    kind=driver.device_kind,
                )
                identities.append(identity)
                if device.listen is not None:
                    self._listen_devices[(bed.id, device.id)] = device
                else:
                    # The config passed check_config, which asked the driver about these options; a
                    # listening device gets one session per sender from its ListenerLink instead.
                    self._sessions[(bed.id, device.id)] = driver.create_session(device.options)
                self._lines[(bed.id, device.id)] = SerialSettings(
                    baud=device.baud or driver.default_line.baud,
                    bytesize=driver.default_line.bytesize,
                    parity=device.parity or driver.default_line.parity,
                    stopbits=driver.default_line.stopbits,
                    rtscts=driver.default_line.rtscts,
                )
        self._identities = identities
        self._twin = TwinStore(
            stale_after_s={b.id: b.stale_after_s for b in config.bed},
            devices=identities,
            sources={b.id: dict(b.sources) for b in config.bed},
        )
        self._waves = (
            WaveWindows(window_s=config.waves.window_s, signals=config.waves.signals)
            if config.waves.enabled
            else None
        )
        self._bed_state = {b.id: _BedPublishState() for b in config.bed}
        self._bus = ReportBus()
        self._gate = WatchdogGate()
        self._publisher = Publisher(
            mqtt=config.mqtt,
            store=config.store,
            topics=self._topics,
            appliance_id=config.appliance.id,
            beds=[b.id for b in config.bed],
            version=appliance_version(),
            on_inbound=self._inbound,
            central_station_topic=config.alarms.central_station_topic,
            on_link_up=self._link_up,
        )
        self._alarms: AlarmSystem | None = None
        """Created in `run` once the alarm store is open."""
        self._alarm_store: AlarmStore | None = None
        self._history = History(
            config=config.history,
            path=config.history_path,
            beds=[b.id for b in config.bed],
            outbox=config.store,
        )
        self._links: list[LinkThread] = []
        self._forecast_epoch_s = time.time() - time.monotonic()
        """Epoch seconds of monotonic 0: the engines' clock is monotonic + this, read once, so a wall
        clock step (NTP, a corrected RTC) neither reorders a bed's history nor empties its window."""
        self._stop = asyncio.Event()
        self._model_reload_requested = asyncio.Event()
        engines = config.engines
        self._forecasts: ForecastRuntime | None = (
            ForecastRuntime(
                beds=[b.id for b in config.bed],
                backend=engines.backend,
                model_ref=engines.model,
                extra_models_dir=engines.models_dir,
                cache_dir=engines.cache_dir,
                load_timeout_s=engines.load_timeout_s,
            )
            if engines.enabled
            else None
        )

    def request_stop(self) -> None:
        """Begin a graceful shutdown (SIGTERM, SIGINT)."""
        self._stop.set()

    async def run(self) -> int:
        """Run until asked to stop; return the process exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            self._alarm_store = AlarmStore(self._config.alarm_state_path)
        except AlarmStoreError as exc:
            LOGGER.error("cannot open the alarm store: %s", exc)
            return EX_UNAVAILABLE
        # before the first connection, so the first birth already lists the alarms restored from disk
        self._alarms = AlarmSystem(
            config=self._config,
            store=self._alarm_store,
            publisher=self._publisher,
            topics=self._topics,
            republish_bed=self._republish_bed,
            mark_twin_dirty=self._mark_twin_dirty,
            on_transition=self._history.alarm,
        )
        self._history.start()
        try:
            await self._publisher.start()
        except OutboxError as exc:
            LOGGER.error("cannot open the outbox: %s", exc)
            self._alarm_store.close()
            self._history.close()
            return EX_UNAVAILABLE
        for bed in self._bed_state:
            self._alarms.republish(bed)
        for identity in self._identities:
            # a device that never connects is an alarm too, after the connect grace
            self._alarms.device(
                bed=identity.bed, state=self._twin.device_state(bed=identity.bed, device=identity.device)
            )
        if self._forecasts is None:
            LOGGER.info("forecasting disabled by config ([engines] enabled = false)")

        def deliver(report: DeviceReport) -> None:
            loop.call_soon_threadsafe(self._bus.offer, report)

        for identity in self._identities:
            key = (identity.bed, identity.device)
            link: LinkThread
            if key in self._listen_devices:
                device = self._listen_devices[key]
                link = ListenerLink.for_device(identity=identity, device=device, deliver=deliver)
            else:
                link = DeviceLink(
                    identity=identity, session=self._sessions[key], line=self._lines[key], deliver=deliver
                )
            self._gate.register(link.name, max_silence_s=LINK_MAX_SILENCE_S)
            self._links.append(link)
            link.start()
        self._gate.register("publisher", max_silence_s=PUBLISHER_MAX_SILENCE_S)
        self._diagnostics = DiagnosticsServer(
            path=socket_path(self._config.store.path),
            snapshot=self._diagnostics_snapshot,
            rings={f"{link.identity.bed}/{link.identity.device}": link.raw for link in self._links},
            outbox_path=self._config.store.path,
        )
        self._notifier.ready(status=self._status_line())
        await self._diagnostics.start()
        LOGGER.info(
            "icu-edge %s running: appliance %s, session %d, %d bed(s), %d device(s)",
            appliance_version(),
            self._config.appliance.id,
            self._publisher.session,
            len(self._config.bed),
            len(self._identities),
        )
        tasks = [
            asyncio.create_task(self._consume_reports(), name="consume-reports"),
            asyncio.create_task(self._publish_periodically(), name="publish-periodically"),
            asyncio.create_task(self._watch_progress(), name="watch-progress"),
        ]
        if self._forecasts is not None:
            tasks.append(asyncio.create_task(self._forecast_every_tick(self._forecasts), name="forecast"))
            loop.add_signal_handler(signal.SIGHUP, self._request_model_reload)
        interval_s = self._notifier.watchdog_interval_s()
        if interval_s is not None:
            tasks.append(
                asyncio.create_task(
                    run_watchdog(notifier=self._notifier, gate=self._gate, interval_s=interval_s / 2),
                    name="watchdog",
                )
            )
        stop_waiter = asyncio.create_task(self._stop.wait(), name="stop")
        try:
            await asyncio.wait([*tasks, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_waiter.cancel()
        return await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> int:
        """Stop links and tasks, publish the last state and stop the publisher; return the exit status.

        A task that failed (the reason the daemon stops, or found while stopping) is logged here and
        sets the status; nothing is re-raised, and `publisher.stop()` always runs last, so a failure
        can never leave the publisher running (it once kept a dead daemon alive).
        """
        self._notifier.stopping(status="stopping: flushing the outbox")
        LOGGER.info("stopping: closing device links and flushing the outbox")
        loop = asyncio.get_running_loop()
        status = EX_OK
        try:
            if self._diagnostics is not None:
                await self._diagnostics.close()
            await asyncio.gather(*(loop.run_in_executor(None, link.stop) for link in self._links))
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            for task in tasks:
                status = max(status, _exit_status_of(task))
            while len(self._bus):
                self._handle_report(await self._bus.get())
            self._publish_twins(force=True)
            if self._forecasts is not None:
                await self._forecasts.close()
        except Exception:
            LOGGER.exception("stopping: a step failed; stopping the publisher anyway")
            status = EX_SOFTWARE
        finally:
            await self._publisher.stop(flush_timeout_s=self._config.publish.shutdown_flush_s)
            if self._alarm_store is not None:
                self._alarm_store.close()
            await loop.run_in_executor(None, self._history.close)
        return status

    async def _consume_reports(self) -> None:
        while True:
            self._handle_report(await self._bus.get())

    def _handle_report(self, report: DeviceReport) -> None:
        identity = report.identity
        bed, device = identity.bed, identity.device
        # Health first: a device status published for a link change below carries this report's
        # counters, and the change's own reason (LinkDown) is not overwritten afterwards.
        previous_error = self._twin.device_state(bed=bed, device=device).last_error
        self._twin.update_link_health(
            bed=bed,
            device=device,
            counters=report.counters,
            last_frame_at=report.last_frame_at,
            last_error=report.last_error,
        )
        if report.last_error is not None and report.last_error != previous_error:
            # A new problem on the link (port missing, read failed) is shown at once, not at the next
            # periodic status: it is what a field engineer looks for first.
            self._publish_device_status(bed=bed, device=device)
        if self._alarms is not None:
            self._alarms.device(bed=bed, state=self._twin.device_state(bed=bed, device=device))
        for event in report.events:
            if isinstance(event, WaveformChunk):
                self._publish_wave(report, event)
                continue
            delta = self._twin.apply(
                bed=bed,
                device=device,
                event=event,
                received_at=report.received_at,
                received_mono_s=report.received_mono_s,
            )
            self._publish_delta(delta, received_mono_s=report.received_mono_s)

    def _publish_wave(self, report: DeviceReport, chunk: WaveformChunk) -> None:
        """Window a wave chunk and queue the finished windows on the publisher's wave lane."""
        if self._waves is None:
            return
        for window in self._waves.add(
            bed=report.identity.bed,
            device=report.identity.device,
            chunk=chunk,
            received_at=report.received_at,
            received_mono_s=report.received_mono_s,
        ):
            self._submit_wave(window)

    def _submit_wave(self, window: WaveWindow) -> None:
        self._publisher.submit_wave(
            topic=self._topics.wave(window.bed, window.body.signal), bed=window.bed, body=window.body
        )

    def _publish_delta(self, delta: TwinDelta, *, received_mono_s: float) -> None:
        bed, device = delta.bed, delta.device
        submit = self._publisher.submit
        if delta.observations and self._forecasts is not None:
            for observation in delta.observations:
                # Only the key's source feeds its forecast: two devices' readings interleaved would
                # make one jagged series out of two sensors.
                if not self._twin.is_source(
                    bed=bed, key=observation.key, device=device, now_mono_s=received_mono_s
                ):
                    continue
                self._forecasts.observe(
                    bed=bed,
                    key=observation.key,
                    value=observation.value,
                    unit=observation.unit,
                    valid=observation.valid,
                    at_s=self._forecast_epoch_s + received_mono_s,
                )
        if delta.observations:
            coalesced = self._bus.take_coalesced(link=f"{bed}/{device}")
            submit(
                topic=self._topics.vitals(bed),
                bed=bed,
                body=VitalsBody(device=device, observations=delta.observations, coalesced=coalesced),
                priority=DeliveryPriority.OBSERVATION,
            )
        if delta.device_status_changed and delta.device_state is None:
            self._publish_device_status(bed=bed, device=device)
        if delta.device_state is not None:
            state = delta.device_state
            self._publish_device_status(bed=bed, device=device)
            kind = EventKind.DEVICE_CONNECTED if state.connected else EventKind.DEVICE_DISCONNECTED
            detail = (
                f"{device} connected ({state.model or 'model unknown'}) on {state.port}"
                if state.connected
                else f"{device} disconnected: {state.last_error or 'no reason given'}"
            )
            log = LOGGER.info if state.connected else LOGGER.warning
            log("%s", detail, extra={"bed": bed, "device": device})
            submit(
                topic=self._topics.events(bed),
                bed=bed,
                body=EventBody(kind=kind, device=device, detail=detail, at=utc_now()),
                priority=DeliveryPriority.ALARM,
            )
        alarms = self._alarms
        if alarms is not None:
            if delta.alarms_raised or delta.alarms_ended:
                alarms.device_alarms(
                    bed=bed, device=device, alarms=self._twin.device_alarms(bed=bed, device=device)
                )
            if delta.observations:
                keys = alarms.limited_keys(bed)
                alarms.observe(
                    bed=bed, values=self._twin.values(bed=bed, now_mono_s=received_mono_s, keys=keys)
                )
        if delta.text_messages is not None:
            submit(
                topic=self._topics.events(bed),
                bed=bed,
                body=EventBody(
                    kind=EventKind.DEVICE_TEXT_MESSAGES,
                    device=device,
                    at=utc_now(),
                    detail="; ".join(delta.text_messages) or "(no messages)",
                ),
                priority=DeliveryPriority.STATE,
            )
        if delta.changes_twin:
            self._bed_state[bed].dirty = True

    def _publish_device_status(self, *, bed: str, device: str) -> None:
        state = self._twin.device_state(bed=bed, device=device)
        self._bed_state[bed].last_status_counters[device] = dict(state.counters)
        self._publisher.submit(
            topic=self._topics.device(bed, device),
            bed=bed,
            body=DeviceStatusBody(status=state),
            retain=True,
            priority=DeliveryPriority.STATE,
        )

    def _publish_twins(self, *, force: bool = False) -> None:
        now_s = time.monotonic()
        publish = self._config.publish
        for bed, state in self._bed_state.items():
            since_s = now_s - state.last_twin_mono_s
            due = (
                state.dirty and since_s >= publish.twin_min_interval_s
            ) or since_s >= publish.twin_max_interval_s
            if not (due or force):
                continue
            state.dirty = False
            state.last_twin_mono_s = now_s
            self._publisher.submit(
                topic=self._topics.twin(bed),
                bed=bed,
                body=self._twin_body(bed=bed, now_mono_s=now_s),
                retain=True,
                priority=DeliveryPriority.STATE,
            )

    def _twin_body(self, *, bed: str, now_mono_s: float) -> TwinBody:
        """The twin with the bed's alarms, limits and NEWS2."""
        body = self._twin.snapshot(bed=bed, now_mono_s=now_mono_s)
        if self._alarms is None:
            return body
        manager = self._alarms.manager
        return body.model_copy(
            update={
                "alarms": manager.active(bed),
                "alarm_limits": manager.limits(bed),
                "news2": self._alarms.news2(bed=bed, values=body.values),
            }
        )

    def _current_values(self, bed: str, keys: Sequence[str]) -> dict[str, TwinValue]:
        return self._twin.values(bed=bed, now_mono_s=time.monotonic(), keys=keys)

    def _all_values(self, bed: str) -> dict[str, TwinValue]:
        return self._twin.values(bed=bed, now_mono_s=time.monotonic())

    def _mark_twin_dirty(self, bed: str) -> None:
        self._bed_state[bed].dirty = True

    def _republish_bed(self, bed: str) -> None:
        """Publish every retained state of a bed again: twin, device statuses, alarms, forecast."""
        for identity in self._identities:
            if identity.bed == bed:
                self._publish_device_status(bed=bed, device=identity.device)
        if self._alarms is not None:
            self._alarms.republish(bed)
        forecast = self._twin.forecast(bed=bed)
        if forecast is not None:
            self._publisher.submit(
                topic=self._topics.forecast(bed),
                bed=bed,
                body=forecast,
                retain=True,
                priority=DeliveryPriority.STATE,
            )
        state = self._bed_state[bed]
        state.dirty = True
        state.last_twin_mono_s = 0.0

    def _link_up(self) -> None:
        """A (re)connection: the replayed rows went first; refresh every retained state after them."""
        for bed in self._bed_state:
            self._republish_bed(bed)
        self._publish_twins()

    def _inbound(self, message: InboundMessage) -> None:
        if self._alarms is not None:
            self._alarms.inbound(message)

    async def _publish_periodically(self) -> None:
        publish = self._config.publish
        last_status_s = time.monotonic()
        while True:
            await asyncio.sleep(min(publish.twin_min_interval_s, 0.25))
            if self._alarms is not None:
                self._alarms.tick(stats=self._publisher.stats(), values_of=self._current_values)
            self._publish_twins()
            self._history.tick(now_mono_s=time.monotonic(), values_of=self._all_values)
            if self._waves is not None:
                for window in self._waves.flush_idle(now_mono_s=time.monotonic()):
                    self._submit_wave(window)
            now_s = time.monotonic()
            if now_s - last_status_s >= publish.device_status_interval_s:
                last_status_s = now_s
                for identity in self._identities:
                    bed, device = identity.bed, identity.device
                    counters = self._twin.device_state(bed=bed, device=device).counters
                    if counters != self._bed_state[bed].last_status_counters.get(device):
                        self._publish_device_status(bed=bed, device=device)

    async def _start_forecasts(self, runtime: ForecastRuntime) -> bool:
        """Load the forecasting model, off the loop; return whether it runs (without one the vitals do).

        The runtime logs why it could not (once per reason) and shows it in its status. The engines
        only join the watchdog once a model runs: a slow or hung load is not a hung daemon.
        """
        try:
            await runtime.start()
        except EnginesUnavailable:
            return False
        tick_s = self._config.engines.tick_s
        self._gate.register("engines", max_silence_s=max(ENGINES_MIN_SILENCE_S, 3 * tick_s))
        return True

    def _request_model_reload(self) -> None:
        if self._forecasts is not None:
            LOGGER.info("SIGHUP: looking for a new model version")
            self._model_reload_requested.set()

    async def _forecast_every_tick(self, runtime: ForecastRuntime) -> None:
        """Load the model (this task starts after the device links and READY=1), then forecast each tick.

        A reload runs on a task of its own (building a TensorRT plan can take minutes) while the ticks
        go on with the running model.
        """
        engines = self._config.engines
        while not await self._start_forecasts(runtime):
            # No model: the vitals run on; look again on SIGHUP or at the next catalog check.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._model_reload_requested.wait(), timeout=engines.reload_check_s)
            self._model_reload_requested.clear()
        next_check_s = time.monotonic() + engines.reload_check_s
        reload: asyncio.Task[bool] | None = None
        try:
            while True:
                started_s = time.monotonic()
                due = (
                    self._model_reload_requested.is_set()
                    or started_s >= next_check_s
                    or runtime.needs_fallback
                )
                if due and (reload is None or reload.done()):
                    self._model_reload_requested.clear()
                    next_check_s = started_s + engines.reload_check_s
                    reload = asyncio.create_task(
                        runtime.reload(force=runtime.needs_fallback), name="model-reload"
                    )
                forecasts = await runtime.tick(now_s=self._forecast_epoch_s + time.monotonic())
                pause_s = min(FORECAST_SPREAD_S, engines.tick_s / 2) / max(1, len(forecasts))
                for index, forecast in enumerate(forecasts):
                    if index:
                        await asyncio.sleep(pause_s)
                    body = forecast_body(forecast)
                    self._twin.set_forecast(bed=forecast.bed, forecast=body)
                    self._history.forecast(bed=forecast.bed, body=body, now_mono_s=time.monotonic())
                    if self._alarms is not None:
                        self._alarms.forecast(bed=forecast.bed, forecast=body)
                    # No twin for a forecast (it has its own retained topic): the twin's `forecast`
                    # rides the next twin the rate limit lets out.
                    self._publisher.submit(
                        topic=self._topics.forecast(forecast.bed),
                        bed=forecast.bed,
                        body=body,
                        retain=True,
                        priority=DeliveryPriority.STATE,
                    )
                self._gate.beat("engines", now_s=time.monotonic())
                await asyncio.sleep(max(0.0, engines.tick_s - (time.monotonic() - started_s)))
        finally:
            if reload is not None:
                reload.cancel()

    async def _watch_progress(self) -> None:
        while True:
            for link in self._links:
                if link.is_alive():
                    self._gate.beat(link.name, now_s=link.last_progress_s)
            stats = self._publisher.stats()
            if stats.fatal_error is not None:
                raise PublisherFailed(stats.fatal_error)
            self._gate.beat("publisher", now_s=stats.last_progress_s)
            healthy, _ = self._gate.healthy(now_s=time.monotonic())
            if healthy:
                # While unhealthy, run_watchdog's "watchdog withheld" line must stay visible.
                self._notifier.status(self._status_line())
            await asyncio.sleep(1.0)

    def _diagnostics_snapshot(self) -> dict[str, Any]:
        """What `icu-edge diag bundle` gets from the running daemon (the server adds rings and outbox)."""
        stats = self._publisher.stats()
        store = self._alarm_store
        return {
            "schema": SNAPSHOT_SCHEMA,
            "version": appliance_version(),
            "appliance": self._config.appliance.id,
            "config_path": None if self._config_path is None else str(self._config_path),
            "uptime_s": round(time.monotonic() - self._started_mono_s, 1),
            "status": self._status_line(),
            "devices": {
                f"{i.bed}/{i.device}": self._twin.device_state(bed=i.bed, device=i.device).model_dump(
                    mode="json"
                )
                for i in self._identities
            },
            "publisher": {
                **{f.name: getattr(stats, f.name) for f in fields(stats) if f.name not in _NOT_IN_SNAPSHOT},
                "dropped": {p.name.lower(): n for p, n in stats.dropped.items()},
                "progress_age_s": round(time.monotonic() - stats.last_progress_s, 3),
            },
            "alarm_store": None
            if store is None
            else {
                "path": str(store.path),
                "healthy": store.healthy,
                "last_error": store.last_error,
                "pending": store.pending,
                "write_failures": store.write_failures,
            },
            "alarms": None if self._alarms is None else self._alarms.status(),
            "engines": None
            if self._forecasts is None
            else {"status": self._forecasts.status, "choice_reason": self._forecasts.choice_reason},
        }

    def _status_line(self) -> str:
        connected = sum(
            self._twin.device_state(bed=i.bed, device=i.device).connected for i in self._identities
        )
        stats = self._publisher.stats()
        broker = "broker connected" if stats.connected else "broker unreachable"
        forecasts = "" if self._forecasts is None else f"; forecasts: {self._forecasts.status}"
        alarms = "" if self._alarms is None else f"; {self._alarms.status()}"
        return (
            f"{connected}/{len(self._identities)} devices connected; {broker}; outbox {stats.pending} pending"
            f"{alarms}{forecasts}"
        )
