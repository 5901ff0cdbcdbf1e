"""The station's delivery check itself: a gap is the broker's loss only when it straddles a kill."""

from __future__ import annotations

import json

from broker import Received
from delivery_check import check_delivery, gaps_across

TOPIC = "icu/v1/h/w/bed/bed-01/twin"


def _message(seq: int, at_s: float) -> Received:
    payload = json.dumps({"session": 1, "seq": seq}).encode()
    return Received(topic=TOPIC, payload=payload, retain=False, received_wall_s=at_s)


def test_a_gap_straddling_a_kill_is_the_brokers_loss() -> None:
    report = check_delivery([_message(0, 1.0), _message(1, 2.0), _message(4, 9.0), _message(5, 10.0)])
    assert report.missing == {(TOPIC, 1): [2, 3]}
    lost, unexplained = gaps_across(report, [(2.5, 8.0)])
    assert lost == [(TOPIC, 1, 2), (TOPIC, 1, 3)]
    assert unexplained == []


def test_a_gap_away_from_every_kill_is_unexplained() -> None:
    report = check_delivery([_message(0, 1.0), _message(1, 2.0), _message(3, 3.0), _message(4, 9.0)])
    lost, unexplained = gaps_across(report, [(5.0, 8.0)])
    assert lost == []
    assert unexplained == [(TOPIC, 1, 2)]
    assert gaps_across(report, []) == ([], [(TOPIC, 1, 2)])


def test_a_gap_whose_next_seq_arrived_before_the_restart_is_unexplained() -> None:
    report = check_delivery([_message(0, 1.0), _message(2, 3.0), _message(3, 9.0)])
    assert gaps_across(report, [(2.0, 8.0)]) == ([], [(TOPIC, 1, 1)])
