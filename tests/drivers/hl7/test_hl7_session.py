"""HL7 session: Mindray and PCD-01 messages -> keys, units, values; AA/AE/AR answers with the control id."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import hl7
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.base import DataRefused, Measurement, MeasurementsReceived
from drivers.hl7.mllp import MllpFramer, wrap
from drivers.hl7.session import DRIVER, Hl7Options, Hl7Session, create_session, option_problems
from drivers.registry import get_driver

MINDRAY = (
    "MSH|^~\\&|Mindray|Gateway|||||ORU^R01|204|P|2.3.1|\r"
    "PID|||M1015_00010||Doe^John||20091112|M\r"
    "PV1||I|^^ICU&Bed5&3232241659&4601&0|||||||||||||||A\r"
    "OBR||||Mindray Monitor|||20091203121631|\r"
    "OBX||NM|52^Height||169.0||||||F\r"
    "OBX||CE|2302^BloodType||1^A||||||F\r"
    "OBX||NM|101^HR|2101|60||||||F\r"
    "OBX||NM|151^RR|2102|20||||||F\r"
    "OBX||NM|200^T1|2104|37.00||||||F\r"
    "OBX||NM|160^SpO2|2103|98||||||F\r"
    "OBX||NM|500^ART-Sys|2116|120||||||F\r"
    "OBX||NM|501^ART-Mean|2116|93||||||F\r"
    "OBX||NM|502^ART-Dia|2116|80||||||F\r"
    "OBX||NM|170^Sys|2105|121||||||F||APERIODIC|20091203120508\r"
)

PCD01 = (
    "MSH|^~\\&|ACME_Gateway^080019FFFE3ED02D^EUI-64||||20110602045842+0000||ORU^R01^ORU_R01|PCD-7|P|2.6|||NE|AL\r"
    "PID|||HO2009001^^^NIST^PI||Hon^Albert\r"
    "PV1||I|HO Surgery^OR^1|\r"
    "OBR|1|0800^ACME^080019FFFE3ED02D^EUI-64|0800^ACME^080019FFFE3ED02D^EUI-64|"
    "182777000^monitoring of patient^SCT|||20110602045842+0000\r"
    "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X\r"
    "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|80|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20110602045842+0000\r"
    "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R|||20110602045842+0000\r"
    "OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|16|MDC_DIM_KILO_PASCAL^MDC_DIM_KILO_PASCAL^MDC|||||F|||20110602045842+0000\r"
    "OBX|5|NM|150344^MDC_TEMP^MDC|1.4.1.1|98.6|[degF]^[degF]^UCUM|||||R|||20110602045842+0000\r"
    "OBX|6|NM|150033^MDC_PRESS_BLD_ART_ABP_SYS^MDC|1.5.1.1|118|mm[Hg]^mm[Hg]^UCUM|||||R|||20110602045842+0000\r"
)


def _run(message: str, **options: object) -> tuple[Hl7Session, hl7.Message, list[object]]:
    session = create_session(options)
    session.reset(now_s=0.0)
    session.receive(wrap(message.encode()), now_s=1.0)
    answers = MllpFramer().feed(session.data_to_send())
    assert len(answers) == 1
    return session, hl7.parse(answers[0].payload.decode()), list(session.events())  # type: ignore[union-attr]


def _values(events: list[object]) -> dict[str, Measurement]:
    return {m.key: m for e in events if isinstance(e, MeasurementsReceived) for m in e.measurements}


def test_driver_is_registered_as_a_listening_monitor() -> None:
    info = get_driver("hl7")
    assert info is DRIVER
    assert info.connections == frozenset({"listen"})
    assert info.device_kind == "monitor"


def test_mindray_message_maps_to_vocabulary_and_is_acknowledged_aa() -> None:
    session, ack, events = _run(MINDRAY)
    assert str(ack.segment("MSA")(1)) == "AA"
    assert str(ack.segment("MSA")(2)) == "204"
    assert str(ack.segment("MSH")(9)).startswith("ACK")
    values = _values(events)
    assert {k: (m.value, m.unit) for k, m in values.items()} == {
        "hr": (60.0, "/min"),
        "rr": (20.0, "/min"),
        "temp": (37.0, "Cel"),
        "spo2": (98.0, "%"),
        "abp_sys": (120.0, "mm[Hg]"),
        "abp_mean": (93.0, "mm[Hg]"),
        "abp_dia": (80.0, "mm[Hg]"),
        "nbp_sys": (121.0, "mm[Hg]"),
    }
    assert values["hr"].device_code == "101^HR"
    assert values["hr"].mdc_code == "MDC_ECG_HEART_RATE"
    assert "map" not in values
    extra = session.counters.extra
    assert extra["unknown_codes"] == 1  # 52^Height
    assert extra["obx_not_numeric"] == 1  # the CE row
    assert extra["times_without_zone"] == 8  # Mindray times carry no UTC offset: not guessed
    assert all(e.device_time is None for e in events if isinstance(e, MeasurementsReceived))


def test_pcd01_message_converts_units_and_keeps_the_observation_time() -> None:
    _, ack, events = _run(PCD01)
    assert [str(ack.segment("MSA")(i)) for i in (1, 2)] == ["AA", "PCD-7"]
    values = _values(events)
    assert values["hr"].value == 80.0
    assert values["spo2"].value == 97.0
    assert values["nbp_sys"].value == pytest.approx(120.01, abs=0.01)  # 16 kPa
    assert values["temp"].value == pytest.approx(37.0)  # 98.6 degF
    assert values["abp_sys"].value == 118.0
    times = {e.device_time for e in events if isinstance(e, MeasurementsReceived)}
    assert times == {datetime(2011, 6, 2, 4, 58, 42, tzinfo=UTC)}


def test_unknown_units_and_missing_pcd_units_are_counted_not_fed() -> None:
    message = PCD01.replace("264864^MDC_DIM_BEAT_PER_MIN^MDC", "furlong^furlong^UCUM").replace(
        "262688^MDC_DIM_PERCENT^MDC", ""
    )
    session, ack, events = _run(message)
    assert str(ack.segment("MSA")(1)) == "AA"
    assert "hr" not in _values(events)
    assert "spo2" not in _values(events)
    assert session.counters.extra["unknown_units"] == 1
    assert session.counters.extra["missing_units"] == 1


def test_a_unit_of_another_dimension_is_refused() -> None:
    session, _, events = _run(PCD01.replace("264864^MDC_DIM_BEAT_PER_MIN^MDC", "mm[Hg]^mm[Hg]^UCUM"))
    assert "hr" not in _values(events)
    assert session.counters.extra["unknown_units"] == 1


def test_mdc_code_and_name_that_disagree_are_refused() -> None:
    session, _, events = _run(PCD01.replace("147842^MDC_ECG_HEART_RATE", "150456^MDC_ECG_HEART_RATE"))
    assert "hr" not in _values(events)
    assert session.counters.extra["code_conflicts"] == 1


@pytest.mark.parametrize(
    ("status", "read"), [("F", True), ("C", True), ("R", True), ("P", False), ("X", False), ("", False)]
)
def test_only_final_corrected_or_device_results_are_read(status: str, read: bool) -> None:
    session, ack, events = _run(
        MINDRAY.replace("OBX||NM|101^HR|2101|60||||||F", f"OBX||NM|101^HR|2101|60||||||{status}")
    )
    assert str(ack.segment("MSA")(1)) == "AA"
    assert ("hr" in _values(events)) is read
    assert session.counters.extra.get("obx_status_refused", 0) == (0 if read else 1)


def test_measurement_status_flags_invalidate_or_refuse() -> None:
    message = PCD01.replace(
        "264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R", "264864^MDC_DIM_BEAT_PER_MIN^MDC||questionable|||R"
    ).replace("262688^MDC_DIM_PERCENT^MDC|||||R", "262688^MDC_DIM_PERCENT^MDC||demo-data|||R")
    _session, _, events = _run(message)
    values = _values(events)
    assert values["hr"].valid is False
    assert values["hr"].value is None
    assert values["hr"].device_flag == "questionable"
    assert "spo2" not in values
    assert [e for e in events if isinstance(e, DataRefused)] == [
        DataRefused(
            reason="demo_data", detail="HL7 sender marks values as demo data: they are refused", count=1
        )
    ]


def test_training_processing_id_refuses_every_value() -> None:
    _, ack, events = _run(MINDRAY.replace("|204|P|", "|204|T|"))
    assert str(ack.segment("MSA")(1)) == "AA"
    assert _values(events) == {}
    refused = [e for e in events if isinstance(e, DataRefused)]
    assert refused
    assert refused[0].reason == "test_data"
    assert refused[0].count == 8


def test_empty_and_non_numeric_values() -> None:
    message = MINDRAY.replace("101^HR|2101|60|", "101^HR|2101||").replace(
        "151^RR|2102|20|", "151^RR|2102|NaN|"
    )
    session, _, events = _run(message)
    values = _values(events)
    assert values["hr"].value is None
    assert values["hr"].valid is False
    assert values["hr"].device_flag == "no_value"
    assert "rr" not in values
    assert session.counters.extra["bad_numbers"] == 1


def test_code_map_option_adds_and_overrides_entries() -> None:
    message = MINDRAY.replace("OBX||NM|52^Height||169.0||||||F", "OBX||NM|9001^ICP|2200|12||||||F").replace(
        "170^Sys|2105|121|", "170^Sys|2105|16|"
    )
    _, _, events = _run(message, codes="9001=icp; 170=nbp_sys@kPa")
    values = _values(events)
    assert values["icp"].value == 12.0
    assert values["nbp_sys"].value == pytest.approx(120.01, abs=0.01)


def test_code_style_pcd01_ignores_mindray_ids() -> None:
    session, _, events = _run(MINDRAY, code_style="pcd01")
    assert _values(events) == {}
    assert session.counters.extra["unknown_codes"] == 9


def test_malformed_message_gets_ae_with_a_reason() -> None:
    session, ack, events = _run("this is not HL7")
    assert str(ack.segment("MSA")(1)) == "AE"
    assert "not an HL7 message" in ack.unescape(str(ack.segment("MSA")(3)))
    assert str(ack.segment("ERR")(4)) == "E"
    assert events == []
    assert session.counters.extra["malformed_messages"] == 1


def test_message_without_control_id_gets_ae() -> None:
    _, ack, _ = _run(MINDRAY.replace("|204|P|", "||P|"))
    assert str(ack.segment("MSA")(1)) == "AE"


def test_other_message_types_get_ar_with_the_control_id() -> None:
    session, ack, events = _run("MSH|^~\\&|HIS||||||ADT^A01|A-77|P|2.5\rPID|||1\r")
    assert [str(ack.segment("MSA")(i)) for i in (1, 2)] == ["AR", "A-77"]
    assert events == []
    assert session.counters.extra["unsupported_messages"] == 1


def test_oversized_block_gets_ar_with_the_original_control_id() -> None:
    big = MINDRAY + "OBX||NM|101^HR|2101|60||||||F\r" * 3000
    session, ack, events = _run(big, max_block_bytes=4096)
    assert [str(ack.segment("MSA")(i)) for i in (1, 2)] == ["AR", "204"]
    assert "exceeds max_block_bytes" in ack.unescape(str(ack.segment("MSA")(3)))
    assert events == []
    assert session.counters.overflows == 1


def test_expect_bed_accepts_only_its_own_bed() -> None:
    _, ack, events = _run(MINDRAY, expect_bed="Bed5", expect_unit="ICU")
    assert str(ack.segment("MSA")(1)) == "AA"
    assert _values(events)
    session, ack, events = _run(MINDRAY, expect_bed="Bed6")
    assert [str(ack.segment("MSA")(i)) for i in (1, 2)] == ["AR", "204"]
    assert events == []
    assert session.counters.extra["wrong_bed_messages"] == 1
    _, ack, events = _run(MINDRAY, expect_bed="Bed5", expect_unit="CCU")
    assert str(ack.segment("MSA")(1)) == "AR"
    assert events == []
    _, ack, events = _run(PCD01, expect_bed="1", expect_unit="HO Surgery")
    assert str(ack.segment("MSA")(1)) == "AA"
    no_pv1 = "\r".join(s for s in MINDRAY.split("\r") if not s.startswith("PV1"))
    _, ack, events = _run(no_pv1, expect_bed="Bed5")
    assert str(ack.segment("MSA")(1)) == "AR"
    assert events == []


def test_several_messages_in_one_read_each_get_their_ack_in_order() -> None:
    session = Hl7Session()
    session.reset(now_s=0.0)
    data = b"".join(wrap(MINDRAY.replace("|204|", f"|{n}|").encode()) for n in range(5))
    session.receive(data, now_s=0.1)
    answers = MllpFramer().feed(session.data_to_send())
    assert [str(hl7.parse(a.payload.decode()).segment("MSA")(2)) for a in answers] == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]  # type: ignore[union-attr]


def test_idle_connection_ends_the_link() -> None:
    session = Hl7Session(options=Hl7Options(idle_timeout_s=10.0))
    session.reset(now_s=100.0)
    assert session.next_deadline_s() == 110.0
    session.poll(now_s=109.0)
    assert session.link_up
    session.poll(now_s=110.0)
    assert not session.link_up
    assert session.counters.timeouts == 1


def test_option_problems() -> None:
    assert option_problems({}) == {}
    problems = option_problems(
        {
            "max_block_byte": 1,
            "max_connections": 0,
            "idle_timeout_s": float("nan"),
            "code_style": "philips",
            "codes": "9001=map",
            "expect_bed": " Bed5",
        }
    )
    assert set(problems) == {
        "max_block_byte",
        "max_connections",
        "idle_timeout_s",
        "code_style",
        "codes",
        "expect_bed",
    }
    assert "did you mean 'max_block_bytes'" in problems["max_block_byte"]
    assert "unknown unit" in option_problems({"codes": "1=hr@furlong"})["codes"]
    assert "cannot be converted" in option_problems({"codes": "1=hr@kPa"})["codes"]
    with pytest.raises(ValueError, match="max_connections"):
        create_session({"max_connections": True})


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_session_survives_arbitrary_bytes_and_answers_every_block(data: bytes, cuts: list[int]) -> None:
    session = Hl7Session(options=Hl7Options(max_block_bytes=1024))
    session.reset(now_s=0.0)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, stop in itertools.pairwise(points):
        session.receive(data[start:stop], now_s=1.0)
        assert session.buffered_bytes <= 1025
    answers = MllpFramer().feed(session.data_to_send())
    assert len(answers) == session.counters.frames_in
    session.events()


@settings(max_examples=100, deadline=None)
@example(segments=["\r0"])  # an empty segment: hl7's lazy reading raised IndexError (found by hypothesis)
@given(segments=st.lists(st.text(alphabet="|^~&\\OBXMSH0123456789.NMF \r", max_size=60), max_size=8))
def test_session_answers_hl7_like_garbage(segments: list[str]) -> None:
    session = Hl7Session()
    session.reset(now_s=0.0)
    session.receive(wrap(("MSH|^~\\&|x||||||ORU^R01|1|P|2.3.1\r" + "\r".join(segments)).encode()), now_s=0.0)
    answers = MllpFramer().feed(session.data_to_send())
    assert len(answers) == 1


def test_an_absurd_observation_time_is_no_crash() -> None:
    """Found by `python -m tools.fuzz hl7` (OverflowError from hl7.parse_datetime)."""
    _, ack, events = _run(MINDRAY.replace("APERIODIC|20091203120508", "APERIODIC|200912031205" + "9" * 400))
    assert str(ack.segment("MSA")(1)) == "AA"
    assert "nbp_sys" in _values(events)


def test_letters_as_encoding_characters_get_ae_with_a_readable_ack() -> None:
    """Found by `python -m tools.fuzz hl7`: the ACK copied MSH-2 `SH` and its MSA became unreadable."""
    session, ack, events = _run("MSH|SH|x|||||ORU^R01|9|P|2.5\rOBX||NM|101^HR|2101|60||||||F\r")
    assert str(ack.segment("MSH")(2)) == "^~\\&"
    assert str(ack.segment("MSA")(1)) == "AE"
    assert events == []
    assert session.counters.extra["malformed_messages"] == 1


def test_control_characters_copied_from_the_message_never_break_the_ack_framing() -> None:
    """Found by `python -m tools.fuzz hl7`: MSH-12 `2.5<FS>` was echoed and ended the ACK block early."""
    session = Hl7Session()
    session.reset(now_s=0.0)
    session.receive(wrap(MINDRAY.replace("|P|2.3.1|", "|P|2.3.1\x1c|").encode()), now_s=1.0)
    framer = MllpFramer()
    answers = framer.feed(session.data_to_send())
    assert framer.counters.junk_bytes == 0
    assert len(answers) == 1
    ack = hl7.parse(answers[0].payload.decode())  # type: ignore[union-attr]
    assert [str(ack.segment("MSA")(i)) for i in (1, 2)] == ["AA", "204"]


def test_a_problem_repeated_by_senders_that_connect_per_message_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway may open one connection per message: each gets a new session, the log must not."""
    message = MINDRAY.replace("52^Height", "52^Height-once-per-reason")
    with caplog.at_level("WARNING", logger="drivers.hl7.session"):
        for n in range(3):
            session = Hl7Session()
            session.reset(now_s=float(n))
            session.receive(wrap(message.encode()), now_s=float(n))
    assert sum("52^Height-once-per-reason" in r.getMessage() for r in caplog.records) == 1


def test_device_timezone_turns_local_mindray_times_into_device_time() -> None:
    session, _, events = _run(MINDRAY, device_timezone="Europe/Berlin")
    times = {e.device_time for e in events if isinstance(e, MeasurementsReceived)}
    # OBR-7 (periodic values) and the NIBP's own OBX-14, both CET (UTC+1) in December
    assert times == {
        datetime(2009, 12, 3, 11, 16, 31, tzinfo=UTC),
        datetime(2009, 12, 3, 11, 5, 8, tzinfo=UTC),
    }
    assert session.counters.extra.get("times_without_zone", 0) == 0
    assert "device_timezone" in option_problems({"device_timezone": "Mars/Olympus"})
