"""The bounded queue between device reader threads and the event loop.

When the consumer falls behind, the oldest *observation* batches of a device are coalesced (newest
value per key wins, the merge is counted); reports carrying anything else (alarms, link changes,
settings) are never dropped, merged or overtaken. Observations are not merged across such a report
(that would reorder them around it), so the queue holds at most max(cap, 2 * other reports + 1)
reports: bounded by what must never be dropped, and the ward never loses an alarm to back-pressure.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import replace

from drivers.base import Measurement, MeasurementsReceived
from edge.device_link import DeviceReport

LOGGER = logging.getLogger(__name__)


def _only_measurements(report: DeviceReport) -> bool:
    return bool(report.events) and all(isinstance(e, MeasurementsReceived) for e in report.events)


def _merge(older: DeviceReport, newer: DeviceReport) -> DeviceReport:
    """Merge two observation-only reports (checked by the caller): the newer value of a key wins."""
    batches = [e for e in (*older.events, *newer.events) if isinstance(e, MeasurementsReceived)]
    by_key: dict[str, Measurement] = {}
    for batch in batches:
        by_key.update((m.key, m) for m in batch.measurements)
    merged = MeasurementsReceived(measurements=tuple(by_key.values()), device_time=batches[-1].device_time)
    return replace(newer, events=(merged,))


class ReportBus:
    """Device reports in arrival order; `offer` runs on the loop thread (via call_soon_threadsafe)."""

    def __init__(self, *, max_reports: int = 1000) -> None:
        self._max_reports = max_reports
        self._reports: deque[DeviceReport] = deque()
        self._coalesced: dict[str, int] = {}
        self._ready = asyncio.Event()
        self._overloaded = False

    @property
    def coalesced(self) -> dict[str, int]:
        """Return how many observation batches were merged away, per device link."""
        return dict(self._coalesced)

    def take_coalesced(self, *, link: str) -> int:
        """Return and reset the merge count of one device link."""
        return self._coalesced.pop(link, 0)

    def __len__(self) -> int:
        return len(self._reports)

    def offer(self, report: DeviceReport) -> None:
        """Queue a report; merge the oldest observation-only reports when over the cap."""
        self._reports.append(report)
        if len(self._reports) > self._max_reports:
            self._coalesce_oldest()
        elif self._overloaded:
            self._overloaded = False
            LOGGER.info("report bus back under its cap (%d)", self._max_reports)
        self._ready.set()

    def _coalesce_oldest(self) -> None:
        reports = list(self._reports)
        for index, older in enumerate(reports):
            if not _only_measurements(older):
                continue
            for later_index in range(index + 1, len(reports)):
                newer = reports[later_index]
                if newer.identity != older.identity:
                    continue
                if not _only_measurements(newer):
                    break
                reports[later_index] = _merge(older, newer)
                del reports[index]
                link = f"{older.identity.bed}/{older.identity.device}"
                self._coalesced[link] = self._coalesced.get(link, 0) + 1
                self._reports = deque(reports)
                return
        if not self._overloaded:
            self._overloaded = True
            LOGGER.warning(
                "report bus over its cap (%d) with nothing to coalesce: alarms and link changes are kept",
                self._max_reports,
            )

    async def get(self) -> DeviceReport:
        """Wait for and return the oldest report."""
        while not self._reports:
            self._ready.clear()
            await self._ready.wait()
        return self._reports.popleft()
