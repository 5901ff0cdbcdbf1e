"""Commands from the central station (`R/bed/{bed}/cmd/{command}`): requests the appliance judges.

Each payload is validated by its pydantic model; whatever fails is answered `rejected` with the
reason on `R/bed/{bed}/cmd-result`. A `command_id` makes a command idempotent: the same id is
answered with the first answer and never applied twice. There is no command that turns an alarm
off: the names a central station might try for it are rejected with that reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from drivers.base import AlarmPriority
from edge.alarms.profile import DELAY_CAP_S, LimitOverride

CommandId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,64}$")]
"""A caller's id for one command: letters, digits and . _ : @ -, up to 64 characters."""

NEVER_REMOTE = frozenset({"off", "alarm_off", "audio_off", "silence", "disable", "inhibit", "mute"})
"""Command names that would turn an alarm (or its audio) off for good: never accepted remotely."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    command_id: CommandId
    user: str | None = Field(
        default=None, min_length=1, max_length=64, description="who asked (for the audit)"
    )
    role: str | None = Field(default=None, min_length=1, max_length=64, description="their role")
    reason: str | None = Field(default=None, min_length=1, max_length=256, description="why")


class AckCommand(_Command):
    """`cmd/ack`: acknowledge one alarm."""

    alarm_id: str = Field(min_length=1, max_length=128)


class PauseCommand(_Command):
    """`cmd/pause`: pause the audio of the bed's sounding alarms (or of one) for a limited time."""

    duration_s: float | None = Field(
        default=None, gt=0, description="seconds (default: [alarms] pause_default_s; at most pause_max_s)"
    )
    alarm_id: str | None = Field(default=None, min_length=1, max_length=128, description="only this alarm")


class LimitsCommand(_Command):
    """`cmd/limits`: change one key's limit setting for this bed (the fields given; the rest stay)."""

    key: str = Field(min_length=1, max_length=32)
    low: float | None = None
    high: float | None = None
    priority: AlarmPriority | None = None
    low_priority: AlarmPriority | None = None
    delay_s: float | None = Field(
        default=None, ge=0, le=DELAY_CAP_S, description=f"at most {DELAY_CAP_S:g} s"
    )
    hysteresis: float | None = Field(default=None, ge=0)
    latching: bool | None = None
    escalate_after_s: float | None = Field(default=None, ge=10, le=3600)

    def override(self) -> LimitOverride:
        """The limit fields this command names, as an override of the setting in force."""
        given = self.model_fields_set - {"command_id", "user", "role", "reason", "key"}
        return LimitOverride.model_validate({name: getattr(self, name) for name in given})


class RebirthCommand(_Command):
    """`cmd/rebirth`: publish every retained state of the bed again (twin, devices, alarms, forecast)."""


class News2Command(_Command):
    """`cmd/news2`: the NEWS2 inputs only a clinician can give."""

    consciousness: Literal["alert", "new_confusion", "voice", "pain", "unresponsive"] | None = None
    spo2_scale: Literal[1, 2] | None = Field(default=None, description="2 only for a target SpO2 of 88-92 %")


Command = AckCommand | PauseCommand | LimitsCommand | RebirthCommand | News2Command

COMMANDS: dict[str, type[Command]] = {
    "ack": AckCommand,
    "pause": PauseCommand,
    "limits": LimitsCommand,
    "rebirth": RebirthCommand,
    "news2": News2Command,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedCommand:
    """A command payload judged: the command, or why not (with the id when one could be read)."""

    name: str
    command: Command | None
    command_id: str | None
    problem: str | None


def _readable_id(payload: bytes) -> str | None:
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    candidate = document.get("command_id") if isinstance(document, dict) else None
    if isinstance(candidate, str):
        try:
            return _IdCheck(command_id=candidate).command_id
        except ValidationError:
            return None
    return None


class _IdCheck(BaseModel):
    command_id: CommandId


def parse(name: str, payload: bytes) -> ParsedCommand:
    """Judge one command payload; never raises."""
    command_id = _readable_id(payload)
    if name in NEVER_REMOTE:
        problem = (
            "turning an alarm off is never accepted remotely (only acknowledge, or a time-limited pause)"
        )
        return ParsedCommand(name=name, command=None, command_id=command_id, problem=problem)
    model = COMMANDS.get(name)
    if model is None:
        problem = f"unknown command {name!r}; the commands are {', '.join(COMMANDS)}"
        return ParsedCommand(name=name, command=None, command_id=command_id, problem=problem)
    try:
        command = model.model_validate_json(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'payload'}: {error['msg']}" for error in exc.errors()
        )
        return ParsedCommand(
            name=name, command=None, command_id=command_id, problem=f"invalid {name}: {problems}"
        )
    return ParsedCommand(name=name, command=command, command_id=command.command_id, problem=None)
