"""The monitor simulator answers every request kind of the real MX750 client capture, well formed."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.intellivue import messages as m
from drivers.intellivue.framing import FrameDecoder, encode_frame
from drivers.intellivue.simulator import MonitorSimulator, main
from drivers.scenario import SteadyPatient

CAPTURE = Path(__file__).parents[2] / "data" / "intellivue" / "client-requests-mx750.raw"


def _answers(simulator: MonitorSimulator, message: bytes, *, now_s: float) -> list[bytes]:
    simulator.receive(encode_frame(message), now_s=now_s)
    return FrameDecoder().feed(simulator.data_to_send())


def _check_poll_answer(request: m.DataApdu, answers: list[bytes]) -> None:
    poll = m.decode_poll_request(request.payload)
    decoded = [m.decode_data(a) for a in answers]
    assert decoded[-1].ro_type is m.RoType.RORS
    linked = decoded[:-1]
    assert all(d.ro_type is m.RoType.RORLS for d in linked)
    if linked:
        assert [d.linked_state for d in linked] == [1] + [2] * (len(linked) - 2) + [3]
        assert [d.linked_count for d in linked] == list(range(1, len(linked) + 1))
    for d in decoded:
        assert d.invoke_id == request.invoke_id
        assert d.command == m.Command.CONFIRMED_ACTION
        reply = m.decode_poll_result(d.payload)
        assert (reply.extended, reply.poll_number, reply.object_class) == (
            poll.extended,
            poll.poll_number,
            poll.object_class,
        )


def test_simulator_answers_every_request_of_the_real_capture() -> None:
    simulator = MonitorSimulator(patient=SteadyPatient(), mtu_bytes=400)
    answered: dict[str, int] = {}
    now_s = 0.0
    for message in FrameDecoder().feed(CAPTURE.read_bytes()):
        now_s += 0.5
        answers = _answers(simulator, message, now_s=now_s)
        if message[0] == m.Spdu.CN:
            assert [a[0] for a in answers] == [m.Spdu.AC, m.Spdu.DATA]
            m.check_association(answers[0])
            event = m.decode_data(answers[1])
            assert (event.ro_type, event.command) == (m.RoType.ROIV, m.Command.CONFIRMED_EVENT_REPORT)
            assert m.decode_event_report(event.payload).event_type == m.NOM_NOTI_MDS_CREAT
            kind = "aarq"
        else:
            request = m.decode_data(message)
            if request.ro_type is m.RoType.RORS:
                assert answers == []  # the MDS create result is itself an answer
                kind = "event_result"
            elif request.command == m.Command.CONFIRMED_ACTION:
                _check_poll_answer(request, answers)
                kind = f"poll:{m.decode_poll_request(request.payload).object_class:04x}"
            elif request.command == m.Command.GET:
                (answer,) = (m.decode_data(a) for a in answers)
                assert (answer.ro_type, answer.command, answer.invoke_id) == (
                    m.RoType.RORS,
                    3,
                    request.invoke_id,
                )
                attributes = m.decode_attribute_list(answer.payload[6:])
                assert [a for a, _ in attributes] == [m.Attr.POLL_RTSA_PRIO_LIST]
                kind = "get"
            else:
                assert request.command == m.Command.CONFIRMED_SET
                (answer,) = (m.decode_data(a) for a in answers)
                assert (answer.ro_type, answer.command) == (m.RoType.RORS, m.Command.CONFIRMED_SET)
                kind = "set"
        answered[kind] = answered.get(kind, 0) + 1
    assert answered == {"aarq": 4, "poll:0006": 85, "poll:0009": 84, "event_result": 4, "get": 4, "set": 1}
    assert simulator.requests == answered
    # The capture's SET asks for ECG II, ECG I and a third lead: of those the simulator has ECG II.
    assert simulator.rtsa_priority == (0x00020102, 0x00020101, 0x0002013D)
    assert simulator.counters.checksum_errors == 0


def test_simulator_ignores_data_before_association_and_releases_on_fn() -> None:
    simulator = MonitorSimulator(patient=SteadyPatient())
    poll = m.encode_roiv(
        invoke_id=1,
        command=m.Command.CONFIRMED_ACTION,
        argument=m.encode_poll_request(m.PollRequest(extended=True, poll_number=1, object_class=6)),
    )
    assert _answers(simulator, poll, now_s=0.0) == []
    assert simulator.counters.unknown_commands == 1
    _answers(simulator, m.build_aarq(), now_s=0.1)
    assert simulator.associated
    assert _answers(simulator, m.RELEASE_REQUEST, now_s=0.2) == [m.RELEASE_RESPONSE]
    assert not simulator.associated


def test_simulator_answers_unknown_object_class_and_action_with_roer() -> None:
    simulator = MonitorSimulator(patient=SteadyPatient())
    _answers(simulator, m.build_aarq(), now_s=0.0)
    poll = m.encode_roiv(
        invoke_id=5,
        command=m.Command.CONFIRMED_ACTION,
        argument=m.encode_poll_request(m.PollRequest(extended=False, poll_number=1, object_class=0x0777)),
    )
    (answer,) = _answers(simulator, poll, now_s=0.1)
    decoded = m.decode_data(answer)
    assert (decoded.ro_type, decoded.invoke_id, decoded.command) == (
        m.RoType.ROER,
        5,
        m.RoError.NO_SUCH_OBJECT_CLASS,
    )


def test_simulator_main_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--udp", "nohost", "--seconds", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
