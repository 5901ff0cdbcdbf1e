"""The report bus stays bounded by coalescing observations and never drops anything else."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

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


@given(
    st.lists(
        st.one_of(
            st.dictionaries(st.sampled_from(["ppeak", "peep", "vt"]), st.floats(0, 100), min_size=1),
            st.just("alarm"),
        ),
        max_size=200,
    ),
    st.integers(min_value=1, max_value=20),
)
@settings(max_examples=200, deadline=None)
def test_any_sequence_keeps_every_alarm_in_order_and_the_newest_values(
    offered: list[dict[str, float] | str], cap: int
) -> None:
    async def scenario() -> None:
        bus = ReportBus(max_reports=cap)
        alarms_offered = 0
        newest: dict[str, float] = {}
        for index, item in enumerate(offered):
            if item == "alarm":
                bus.offer(
                    _report(
                        DeviceAlarmsReceived(
                            alarms=(
                                DeviceAlarmReading(code=str(index), priority=AlarmPriority.HIGH, text="x"),
                            )
                        )
                    )
                )
                alarms_offered += 1
            else:
                assert isinstance(item, dict)
                bus.offer(_report(_values(**item)))
                newest.update(item)
        assert len(bus) <= max(cap, 2 * alarms_offered + 1), "the documented bound"
        alarm_codes: list[int] = []
        latest: dict[str, float] = {}
        while len(bus):
            for event in (await bus.get()).events:
                if isinstance(event, DeviceAlarmsReceived):
                    alarm_codes.extend(int(a.code) for a in event.alarms)
                elif isinstance(event, MeasurementsReceived):
                    latest.update((m.key, m.value) for m in event.measurements if m.value is not None)
        assert alarm_codes == [i for i, item in enumerate(offered) if item == "alarm"]
        assert latest == newest

    asyncio.run(scenario())
