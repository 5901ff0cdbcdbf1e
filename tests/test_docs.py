"""The configuration reference in docs/ is generated from the models and kept current."""

from __future__ import annotations

from tools.docs import CONFIGURATION_MD, configuration_reference


def test_the_configuration_reference_is_current() -> None:
    assert CONFIGURATION_MD.read_text() == configuration_reference(), "run: python -m tools.docs"


def test_the_reference_names_every_section_and_a_required_key() -> None:
    text = configuration_reference()
    for header in ("[appliance]", "[mqtt]", "[mqtt.tls]", "[store]", "[alarms.limits.KEY]", "[[bed.device]]"):
        assert f"## `{header}`" in text
    assert "| `host` | string | **required** |" in text
