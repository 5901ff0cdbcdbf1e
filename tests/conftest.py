"""Shared fixtures: a real Mosquitto broker per test and a subscriber factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber, require_mosquitto


def _running_broker(
    directory: Path, *, tls: bool = False, persistence: bool = False
) -> Iterator[MosquittoBroker]:
    require_mosquitto()
    instance = MosquittoBroker(directory=directory, tls=tls, persistence=persistence)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto on a free loopback port (persistent sessions), stopped after the test."""
    yield from _running_broker(tmp_path / "broker", persistence=True)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto with a TLS listener (throw-away CA, server cert for 127.0.0.1)."""
    yield from _running_broker(tmp_path / "tls-broker", tls=True)


@pytest.fixture
def subscribe(broker: MosquittoBroker) -> Iterator[Callable[..., Subscriber]]:
    """Return a factory of subscribers to `broker`; each is closed after the test."""
    created: list[Subscriber] = []

    def make(topic_filter: str, *, persistent: bool = False) -> Subscriber:
        subscriber = Subscriber(
            host=broker.host,
            port=broker.port,
            topic_filter=topic_filter,
            client_id=f"test-sub-{len(created)}",
            persistent=persistent,
            tls_ca=broker.tls_files.ca if broker.tls_files is not None else None,
        )
        created.append(subscriber)
        return subscriber

    yield make
    for subscriber in created:
        subscriber.close()
