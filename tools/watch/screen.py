"""The interactive view: tiles or one bed's detail, redrawn in place within the terminal's size.

`Navigation` is the pure part (which bed is selected, which page is shown, where the detail is
scrolled) and is driven by key names. `frame` builds exactly one screen for a size. `run_live` owns
the terminal: rich's alternate screen, a `KeyReader`, and the main-thread loop that drains the event
queue, applies keys and redraws a few times a second (ages tick even without news).
"""

from __future__ import annotations

import queue
import sys
import time
from dataclasses import dataclass
from typing import Final

import paho.mqtt.client as mqtt
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from tools.watch import detail, tiles
from tools.watch.client import Event, drain
from tools.watch.keys import KeyReader
from tools.watch.state import BedKey, WardState

REFRESH_PER_SECOND: Final = 4
WARD_KEYS: Final = "1-9 \u2190\u2191\u2193\u2192 Tab: pick a bed   Enter: detail   q: quit"
DETAIL_KEYS: Final = "\u2191\u2193 PgUp PgDn: scroll   Tab: next bed   Esc/q: back to the ward"


@dataclass(slots=True)
class Navigation:
    """What the user chose: the ward or one bed's detail, the selected bed, the detail's scroll."""

    detail: bool = False
    selected: BedKey | None = None
    wanted_bed: str | None = None
    """`--bed`: the bed id to open once it is seen."""
    scroll: int = 0
    quit: bool = False

    def follow(self, beds: list[BedKey]) -> None:
        """Keep the selection on a bed that exists; open `--bed`'s detail when it appears."""
        if self.wanted_bed is not None:
            match = next((key for key in beds if key[2] == self.wanted_bed), None)
            if match is not None:
                self.selected, self.detail, self.wanted_bed = match, True, None
                return
        if self.selected not in beds:
            self.selected = beds[0] if beds else None

    def press(self, key: str, *, beds: list[BedKey], columns: int, page_lines: int) -> None:
        """Apply one key."""
        self.follow(beds)
        if self.detail:
            self._press_detail(key, beds=beds, page_lines=page_lines)
        else:
            self._press_ward(key, beds=beds, columns=columns)

    def _move(self, beds: list[BedKey], step: int, *, wrap: bool = False) -> None:
        if not beds:
            return
        index = beds.index(self.selected) if self.selected in beds else 0
        if wrap:
            self.selected = beds[(index + step) % len(beds)]
        else:
            self.selected = beds[max(0, min(len(beds) - 1, index + step))]

    def _pick_digit(self, key: str, beds: list[BedKey]) -> bool:
        if len(key) == 1 and key.isdigit():
            number = 10 if key == "0" else int(key)
            if 1 <= number <= len(beds):
                self.selected = beds[number - 1]
            return True
        return False

    def _press_ward(self, key: str, *, beds: list[BedKey], columns: int) -> None:
        if key in ("q", "Q"):
            self.quit = True
        elif self._pick_digit(key, beds):
            pass
        elif key in ("tab", "shift-tab"):
            self._move(beds, 1 if key == "tab" else -1, wrap=True)
        elif key == "right":
            self._move(beds, 1)
        elif key == "left":
            self._move(beds, -1)
        elif key == "down":
            self._move(beds, columns)
        elif key == "up":
            self._move(beds, -columns)
        elif key == "enter" and self.selected is not None:
            self.detail, self.scroll = True, 0

    def _press_detail(self, key: str, *, beds: list[BedKey], page_lines: int) -> None:
        if key in ("esc", "q", "Q", "backspace"):
            self.detail, self.scroll = False, 0
        elif self._pick_digit(key, beds):
            self.scroll = 0
        elif key in ("tab", "shift-tab"):
            self._move(beds, 1 if key == "tab" else -1, wrap=True)
            self.scroll = 0
        elif key == "down":
            self.scroll += 1
        elif key == "up":
            self.scroll = max(0, self.scroll - 1)
        elif key == "pagedown":
            self.scroll += max(1, page_lines - 1)
        elif key == "pageup":
            self.scroll = max(0, self.scroll - max(1, page_lines - 1))
        elif key == "home":
            self.scroll = 0
        elif key == "end":
            self.scroll = 1 << 30  # clamped when drawn


def frame(state: WardState, navigation: Navigation, console: Console) -> RenderableType:
    """Return one screen for the console's current size: the ward's tiles, or one bed's detail."""
    width, height = console.size
    beds = sorted(state.beds)
    navigation.follow(beds)
    if navigation.detail and navigation.selected is not None:
        return _detail_frame(state, navigation, console, width=width, height=height)
    return tiles.render_ward(
        state, width=width, height=height, selected=navigation.selected, keys_line=WARD_KEYS
    )


def _detail_frame(
    state: WardState, navigation: Navigation, console: Console, *, width: int, height: int
) -> RenderableType:
    assert navigation.selected is not None
    options = console.options.update(width=width, height=None)
    rendered = console.render_lines(detail.render_detail(state, navigation.selected), options, pad=False)
    lines: list[Text] = []
    for segments in rendered:
        line = Text(no_wrap=True, overflow="crop")
        for segment in segments:
            if not segment.control:
                line.append(segment.text, segment.style)
        lines.append(line)
    body = max(1, height - 2)
    navigation.scroll = max(0, min(navigation.scroll, len(lines) - body))
    shown = lines[navigation.scroll : navigation.scroll + body]
    site, ward, bed_id = navigation.selected
    last = navigation.scroll + len(shown)
    header = Text(f"bed {bed_id} ({site}/{ward}) detail", style="bold")
    header.append(f"  lines {navigation.scroll + 1}\u2013{last} of {len(lines)}", style="dim")
    header.truncate(width, overflow="ellipsis")
    footer = Text(DETAIL_KEYS, style="dim", no_wrap=True, overflow="ellipsis")
    return Group(header, *shown, footer)


def run_live(
    client: mqtt.Client,
    events: queue.Queue[Event],
    state: WardState,
    *,
    deadline: float | None,
    subscription: str,
    navigation: Navigation,
) -> None:
    """Show the view on this terminal until `q`, Ctrl-C or the deadline."""
    console = Console()
    period_s = 1.0 / REFRESH_PER_SECOND
    keys = KeyReader(fd=sys.stdin.fileno(), events=events) if sys.stdin.isatty() else None
    with Live(console=console, auto_refresh=False, screen=True, transient=False) as live:
        if keys is not None:
            keys.__enter__()
        try:
            live.update(frame(state, navigation, console), refresh=True)
            next_render = time.monotonic()
            while not navigation.quit and (deadline is None or time.monotonic() < deadline):
                wait_s = next_render - time.monotonic()
                if deadline is not None:
                    wait_s = min(wait_s, deadline - time.monotonic())
                drained = drain(client, events, state, wait_s=wait_s, subscription=subscription)
                if drained.keys:
                    width, height = console.size
                    columns = tiles.tile_columns(width=width, beds=len(state.beds))
                    for key in drained.keys:
                        navigation.press(key, beds=sorted(state.beds), columns=columns, page_lines=height - 2)
                if drained.keys or time.monotonic() >= next_render:
                    live.update(frame(state, navigation, console), refresh=True)
                    next_render = time.monotonic() + period_s
        finally:
            if keys is not None:
                keys.__exit__(None, None, None)
