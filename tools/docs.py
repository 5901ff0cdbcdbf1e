"""Generate the configuration reference (docs/configuration.md) from the config's pydantic models.

The reference is never written by hand: `python -m tools.docs` rewrites it, and a test fails when the
committed file differs from what the models say (a key added without regenerating the docs).
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge.config import AppConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION_MD = REPO_ROOT / "docs" / "configuration.md"

_HEADER = """# Configuration reference

Generated from the config's pydantic models by `python -m tools.docs` (do not edit by hand; a test
checks this file is current). The daemon reads one TOML file (default `/etc/icu-edge/config.toml`);
`icu-edge config check PATH` validates it exactly as `icu-edge run` would, one line per problem, and
`icu-edge schema` prints the JSON Schema of the whole file. Unknown keys are refused (with a
did-you-mean). Keys without a default are required.
"""

_CONSTRAINTS: tuple[tuple[type[Any], str, str], ...] = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.MinLen, "min_length", "length ≥"),
    (annotated_types.MaxLen, "max_length", "length ≤"),
)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return annotation, False


def _section_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """("table" | "array" | "map", model) when the field holds a nested section, else None."""
    inner, _ = _unwrap_optional(annotation)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return "table", inner
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "array", args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return "map", args[1]
    return None


def _type_name(annotation: Any) -> str:
    inner, optional = _unwrap_optional(annotation)
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is Literal:
        text = " or ".join(f"`{a!r}`".replace("'", '"') for a in args)
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        text = " or ".join(f'`"{member.value}"`' for member in inner)
    elif origin in (typing.Union, types.UnionType):
        text = " or ".join(_type_name(a) for a in args)
    elif origin is list:
        text = f"list of {_type_name(args[0])}"
    elif origin is dict:
        text = f"table of {_type_name(args[1])}"
    elif isinstance(inner, type):
        text = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}.get(
            inner.__name__, inner.__name__
        )
    else:
        text = str(inner)
    return f"{text} (optional)" if optional else text


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "empty" if not value else f"`{value!r}`"
    if info.default is PydanticUndefined:
        return "**required**"
    value = info.default
    if value is None:
        return "none"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _constraints(info: FieldInfo) -> str:
    found = []
    for meta in info.metadata:
        for kind, attribute, symbol in _CONSTRAINTS:
            if isinstance(meta, kind):
                found.append(f"{symbol} {getattr(meta, attribute)}")
    return ", ".join(found)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(name: str, model: type[BaseModel], lines: list[str]) -> None:
    """Append `model`'s table (its plain keys) and then each nested section, depth first.

    `name` is the TOML header (`[mqtt.tls]`, `[[bed.device]]`); "" is the top level.
    """
    doc = (model.__doc__ or "").strip().splitlines()
    lines += ["", f"## `{name}`" if name else "## Top level", ""]
    if doc:
        lines += [" ".join(doc[0].split()), ""]
    nested: list[tuple[str, str, type[BaseModel]]] = []
    rows = []
    for key, info in model.model_fields.items():
        section = _section_model(info.annotation)
        if section is not None and section[1] is not AppConfig:
            nested.append((key, section[0], section[1]))
            continue
        notes = "; ".join(part for part in (_constraints(info), info.description or "") if part)
        rows.append(f"| `{key}` | {_cell(_type_name(info.annotation))} | {_default(info)} | {_cell(notes)} |")
    if rows:
        lines += ["| key | type | default | notes |", "|---|---|---|---|", *rows]
    for key, kind, sub in nested:
        base = name.strip("[]")
        if kind == "table":
            _section(f"[{base}.{key}]" if base else f"[{key}]", sub, lines)
        elif kind == "array":
            _section(f"[[{base}.{key}]]" if base else f"[[{key}]]", sub, lines)
        else:
            _section(f"[{base}.{key}.KEY]" if base else f"[{key}.KEY]", sub, lines)


def configuration_reference() -> str:
    """The whole reference as Markdown."""
    lines = [_HEADER.rstrip("\n")]
    _section("", AppConfig, lines)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite docs/configuration.md (or, with --check, exit 1 when it is not current)."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.docs", description="Generate docs/configuration.md from the config models."
    )
    parser.add_argument("--check", action="store_true", help="only check the file is current (exit 1 if not)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    text = configuration_reference()
    if args.check:
        current = CONFIGURATION_MD.read_text() if CONFIGURATION_MD.exists() else ""
        if current != text:
            print(f"{CONFIGURATION_MD} is out of date: run python -m tools.docs", file=sys.stderr)
            return 1
        return 0
    CONFIGURATION_MD.write_text(text)
    print(f"wrote {CONFIGURATION_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
