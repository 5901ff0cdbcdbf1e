"""`drivers.probe.recognise`: what unanswered bytes look like, on any input, without raising."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.intellivue.framing import encode_frame
from drivers.medibus.codec import Response
from drivers.probe import recognise


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096))
def test_recognise_never_raises_and_describes_in_one_line(data: bytes) -> None:
    recognition = recognise(data)
    text = recognition.describe()
    assert "\n" not in text
    assert recognition.byte_count == len(data)
    assert text.startswith(f"{len(data)} bytes")


def test_recognise_tells_medibus_with_bad_checksums_from_random_bytes() -> None:
    good = Response(code=0x24, data=b"7D22.3").to_bytes()
    frames = (good[:2] + b"6" + good[3:]) * 20  # one data byte changed: the checksum no longer matches
    assert "looks like MEDIBUS framing but checksum bad (20 frame(s))" in recognise(frames).describe()
    assert "no MEDIBUS, IntelliVue or DRI framing" in recognise(os.urandom(4096)).describe()
    assert (
        "20 valid IntelliVue frame(s)"
        in recognise(encode_frame(b"\xe1\x00\x00\x02" + bytes(12)) * 20).describe()
    )
