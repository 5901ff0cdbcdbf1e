"""The report bus stays bounded by coalescing observations and never drops anything else."""

from __future__ import annotations

from datetime import UTC, datetime

from drivers.base import (
    AlarmPriority,
    DeviceAlarmReading,
    DeviceAlarmsReceived,
    Measurement,
    MeasurementsReceived,
)
from edge.bus import ReportBus
from edge.device_link import DeviceReport
from edge.twin import DeviceIdentity

VENT = DeviceIdentity(bed="bed-07", device="vent-1", driver="medibus", protocol="MEDIBUS", port="/dev/x")


def _report(*events: object) -> DeviceReport:
    return DeviceReport(
        identity=VENT,
        events=events,
        counters={},
        last_frame_at=None,
        last_error=None,  # type: ignore[arg-type]
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        received_mono_s=0.0,
    )


def _values(**values: float) -> MeasurementsReceived:
    return MeasurementsReceived(
        measurements=tuple(
            Measurement(key=k, value=v, unit="1", device_code="00", label=k) for k, v in values.items()
        )
    )


async def test_observations_coalesce_newest_wins_alarms_kept() -> None:
    bus = ReportBus(max_reports=3)
    alarm = DeviceAlarmsReceived(
        alarms=(DeviceAlarmReading(code="1", priority=AlarmPriority.HIGH, text="x"),)
    )
    bus.offer(_report(alarm))
    for index in range(20):
        bus.offer(_report(_values(ppeak=float(index), **({"peep": 5.0} if index == 0 else {}))))
    assert len(bus) == 3
    first = await bus.get()
    assert first.events == (alarm,), "the alarm report is neither dropped nor merged"
    second = await bus.get()
    (merged,) = second.events
    assert isinstance(merged, MeasurementsReceived)
    values = {m.key: m.value for m in merged.measurements}
    assert values["peep"] == 5.0, "a key only in an older batch survives the merge"
    third = await bus.get()
    assert isinstance(third.events[0], MeasurementsReceived)
    assert third.events[0].measurements[0].value == 19.0
    assert bus.take_coalesced(link="bed-07/vent-1") == 18
    assert bus.take_coalesced(link="bed-07/vent-1") == 0
