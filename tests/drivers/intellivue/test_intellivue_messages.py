"""Tests of the IntelliVue message layer: the real capture's messages, FLOAT-Type, states, units, waves."""

from __future__ import annotations

import contextlib
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.intellivue import messages as m
from drivers.intellivue.framing import FrameDecoder
from drivers.intellivue.physio import (
    SA_FLAG_NO_SCALING,
    State,
    Unit,
    WaveFormat,
    convert,
    invalid_flag,
    refusal_of,
    scale_samples,
    to_measurement,
)

DATA = Path(__file__).parents[2] / "data" / "intellivue"


def _capture() -> list[bytes]:
    return FrameDecoder().feed((DATA / "client-requests-mx750.raw").read_bytes())


def _devif_messages() -> list[bytes]:
    blocks: list[bytes] = []
    current: list[str] = []
    for line in (DATA / "philips-devif-test-aarq.txt").read_text(encoding="utf-8").splitlines():
        if re.fullmatch(r"([0-9A-F]{2} ?)+", line.strip()):
            current.append(line.strip())
        elif current:
            blocks.append(bytes.fromhex(" ".join(current)))
            current = []
    if current:
        blocks.append(bytes.fromhex(" ".join(current)))
    return blocks


# ---- FLOAT-Type -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "flag"),
    [
        (0x007FFFFF, "not_a_number"),
        (0x00800000, "not_at_this_resolution"),
        (0x007FFFFE, "positive_infinity"),
        (0x00800002, "negative_infinity"),
        (0x00800001, "reserved_value"),
    ],
)
def test_all_five_float_specials_are_no_number(raw: int, flag: str) -> None:
    assert m.decode_float(raw) == (None, flag)


@pytest.mark.parametrize(("raw", "value"), [(0xFF000048, 7.2), (0x00000050, 80.0), (0xFE002710, 100.0)])
def test_float_examples(raw: int, value: float) -> None:
    assert m.decode_float(raw) == (value, None)


def test_float_negative_mantissa_and_exponent() -> None:
    assert m.decode_float(0xFFFFFFDD) == (-3.5, None)
    assert m.decode_float(0x02000003) == (300.0, None)


@settings(max_examples=300, deadline=None)
@given(value=st.floats(min_value=-80000.0, max_value=80000.0, allow_nan=False))
def test_float_encode_decode_round_trips_to_two_decimals(value: float) -> None:
    decoded, special = m.decode_float(m.encode_float(value, decimals=2))
    assert special is None
    assert decoded is not None
    assert decoded == pytest.approx(round(value, 2), abs=0.011)


@settings(max_examples=500, deadline=None)
@given(raw=st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_any_float_bit_pattern_decodes_to_a_finite_number_or_a_flag(raw: int) -> None:
    value, flag = m.decode_float(raw)
    assert (value is None) == (flag is not None)
    assert value is None or value == value  # never NaN


# ---- session SPDUs and the real client messages --------------------------------------------------


def test_aarq_builder_reproduces_philips_devif_test_aarq_byte_for_byte() -> None:
    devif = _devif_messages()
    profile = m.PollProfile(
        min_poll_period=0x000FDE80, max_mtu_rx=1000, max_mtu_tx=1000, max_bw_tx=0, ext_options=0x89000000
    )
    assert m.build_aarq(profile) == devif[0]
    assert devif[-1] == m.RELEASE_REQUEST


def test_association_length_indicators_of_real_aarqs_check_out() -> None:
    aarqs = [msg for msg in _capture() if msg[0] == m.Spdu.CN]
    assert len(aarqs) == 4
    for aarq in [*aarqs, _devif_messages()[0], m.build_aare()]:
        m.check_association(aarq)
    with pytest.raises(m.MessageError):
        m.check_association(aarqs[0][:-1])


def test_every_captured_data_message_decodes_and_re_encodes_byte_for_byte() -> None:
    kinds: dict[tuple[int, int], int] = {}
    for msg in _capture():
        if msg[0] != m.Spdu.DATA:
            continue
        apdu = m.decode_data(msg)
        kinds[(apdu.ro_type, apdu.command)] = kinds.get((apdu.ro_type, apdu.command), 0) + 1
        if apdu.command == m.Command.CONFIRMED_ACTION:
            request = m.decode_poll_request(apdu.payload)
            again = m.encode_roiv(
                invoke_id=apdu.invoke_id, command=apdu.command, argument=m.encode_poll_request(request)
            )
        elif apdu.command == m.Command.GET:
            ids = m.decode_get_argument(apdu.payload)
            assert ids == [m.Attr.POLL_RTSA_PRIO_LIST]
            again = m.encode_roiv(
                invoke_id=apdu.invoke_id, command=apdu.command, argument=m.encode_get_argument(ids)
            )
        elif apdu.command == m.Command.CONFIRMED_SET:
            changes = m.decode_set_argument(apdu.payload)
            again = m.encode_roiv(
                invoke_id=apdu.invoke_id, command=apdu.command, argument=m.encode_set_argument(changes)
            )
        else:
            assert apdu.ro_type is m.RoType.RORS
            assert apdu.command == m.Command.CONFIRMED_EVENT_REPORT
            event_time = struct.unpack_from(">I", apdu.payload, 6)[0]
            again = m.encode_event_result(invoke_id=apdu.invoke_id, event_time=event_time)
            assert len(again) == 28
        assert again == msg
    assert kinds == {(1, 7): 169, (2, 1): 4, (1, 3): 4, (1, 5): 1}


def test_the_48_byte_numerics_poll_of_the_notes() -> None:
    expected = bytes.fromhex(
        "E1 00 00 02 00 01 00 28 00 01 00 07 00 22 00 21 00 00 00 00 00 00 00 00 F1 3B 00 14 00 01 00 01"
        " 00 06 00 00 00 01 00 08 F1 3E 00 04 00 03 A9 80"
    )
    request = m.PollRequest(
        extended=True, poll_number=1, object_class=m.ObjectClass.NUMERIC, period=0x0003A980
    )
    assert m.encode_roiv(invoke_id=1, command=7, argument=m.encode_poll_request(request)) == expected


def test_linked_result_header_carries_state_and_count() -> None:
    reply = m.PollReply(extended=True, poll_number=3, object_class=m.ObjectClass.NUMERIC)
    msg = m.encode_rorls(
        state=m.LinkedState.FIRST, count=1, invoke_id=9, command=7, result=m.encode_poll_result(reply)
    )
    # 4 SPDU + 4 ROapdus + 2 linked + 6 RORS + 10 ActionResult + 22 extended reply head + 4 empty list.
    assert len(msg) == 48 + 4
    apdu = m.decode_data(msg)
    assert (apdu.ro_type, apdu.linked_state, apdu.linked_count, apdu.invoke_id) == (m.RoType.RORLS, 1, 1, 9)
    assert m.decode_poll_result(apdu.payload) == reply


def test_poll_reply_with_contexts_round_trips() -> None:
    obs = m.Observation(
        handle=7,
        attributes=(
            (m.Attr.ID_LABEL, m.encode_u32(0x00024182)),
            (
                m.Attr.NU_VAL_OBS,
                m.encode_nu_obs(m.NuObsValue(physio_id=0x4182, state=0, unit_code=0x0AA0, raw_value=80)),
            ),
        ),
    )
    reply = m.PollReply(extended=False, poll_number=2, object_class=6, rel_time=1234, observations=(obs, obs))
    assert m.decode_poll_result(m.encode_poll_result(reply)) == reply


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=200))
def test_decoders_raise_only_message_error_on_arbitrary_bytes(payload: bytes) -> None:
    decoders = (
        m.decode_data,
        m.decode_poll_result,
        m.decode_poll_request,
        m.decode_event_report,
        m.decode_mds_create_info,
        m.decode_get_argument,
        m.decode_set_argument,
        m.decode_nu_compound,
        m.decode_sa_compound,
        m.decode_alarm_list,
        m.decode_system_model,
        m.decode_attribute_list,
        m.decode_poll_info,
    )
    for decode in decoders:
        with contextlib.suppress(m.MessageError):
            decode(payload)


# ---- states, units, numerics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "flag"),
    [
        (State.INVALID, "invalid"),
        (State.QUESTIONABLE, "questionable"),
        (State.UNAVAILABLE, "unavailable"),
        (State.CALIBRATION_ONGOING, "calibrating"),
        (State.INVALID | State.QUESTIONABLE, "invalid"),
        (State.VALIDATED | State.MSMT_STATE_IN_ALARM, None),
        (0, None),
    ],
)
def test_measurement_state_bits_make_values_invalid_with_the_device_word(
    state: int, flag: str | None
) -> None:
    assert invalid_flag(state) == flag
    measurement = to_measurement(
        m.NuObsValue(physio_id=0x4182, state=state, unit_code=Unit.BEATS_PER_MIN, raw_value=80), key="hr"
    )
    assert measurement.valid is (flag is None)
    assert measurement.device_flag == flag
    assert measurement.value == (80.0 if flag is None else None)


def test_demo_and_test_data_are_refusals_not_flags() -> None:
    assert refusal_of(State.DEMO_DATA) == "demo_data"
    assert refusal_of(State.TEST_DATA | State.VALIDATED) == "test_data"
    assert refusal_of(State.QUESTIONABLE) is None


@pytest.mark.parametrize("raw", [0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001])
def test_special_float_numeric_is_invalid_never_a_number(raw: int) -> None:
    measurement = to_measurement(
        m.NuObsValue(physio_id=0x4BB8, state=0, unit_code=Unit.PERCENT, raw_value=raw), key="spo2"
    )
    assert measurement.value is None
    assert not measurement.valid
    assert measurement.device_flag == m.FLOAT_SPECIAL_FLAGS[raw]


def test_units_convert_to_the_vocabulary() -> None:
    assert convert(5.0, unit_code=Unit.KPA, unit="mm[Hg]") == pytest.approx(37.5, abs=0.05)
    assert convert(10.0, unit_code=Unit.CMH2O, unit="mbar") == pytest.approx(9.81, abs=0.001)
    assert convert(10.0, unit_code=Unit.MMHG, unit="mbar") is None
    etco2 = to_measurement(
        m.NuObsValue(physio_id=0x50B0, state=0, unit_code=Unit.KPA, raw_value=m.encode_float(5.1)),
        key="etco2",
    )
    assert (etco2.unit, etco2.value) == ("mm[Hg]", pytest.approx(38.3, abs=0.05))
    odd = to_measurement(m.NuObsValue(physio_id=0x4182, state=0, unit_code=0x1234, raw_value=80), key="hr")
    assert not odd.valid
    assert odd.value is None
    assert odd.device_flag == "unit_1234_not_convertible"


# ---- waves ----------------------------------------------------------------------------------------


def _fmt(*, flags: int = 0, bits: int = 12) -> WaveFormat:
    return WaveFormat(
        spec=m.SaSpec(array_size=4, sample_size=16, significant_bits=bits, flags=flags),
        scale=m.ScaleSpec(
            lower_absolute=m.encode_float(-40.0),
            upper_absolute=m.encode_float(360.0),
            lower_scaled=0,
            upper_scaled=4000,
        ),
        sample_period_s=0.008,
    )


def test_wave_samples_are_masked_then_scaled_linearly() -> None:
    raw = struct.pack(">4H", 0, 4000, 1000 | 0xF000, 2000)
    assert scale_samples(raw, wave=_fmt()) == (-40.0, 360.0, 60.0, 160.0)


def test_wave_no_scaling_flag_keeps_raw_values() -> None:
    raw = struct.pack(">2H", 12, 0xF00D)
    assert scale_samples(raw, wave=_fmt(flags=SA_FLAG_NO_SCALING)) == (12.0, 13.0)


def test_wave_scale_with_special_bound_gives_invalid_samples() -> None:
    fmt = _fmt()
    broken = WaveFormat(
        spec=fmt.spec,
        scale=m.ScaleSpec(
            lower_absolute=0x007FFFFF,
            upper_absolute=fmt.scale.upper_absolute,
            lower_scaled=0,
            upper_scaled=4000,
        ),  # type: ignore[union-attr]
        sample_period_s=fmt.sample_period_s,
    )
    assert scale_samples(struct.pack(">H", 5), wave=broken) == (None,)


def test_alarm_list_round_trips() -> None:
    alarms = [m.DevAlarm(source=0x4BB8, code=0x5BB8, alert_type=0x0400, state=0, text="SpO2 LOW")]
    assert m.decode_alarm_list(m.encode_alarm_list(alarms)) == alarms
    assert m.decode_alarm_list(m.encode_alarm_list([])) == []
