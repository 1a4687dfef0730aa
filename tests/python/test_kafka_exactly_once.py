"""Exactly-once into Kafka while the broker dies.

A pipeline writes generated orders through the Kafka sink in transactions (checkpoints
every 200 ms, `delivery: exactly-once`) to this module's own single broker. Once part
of the output is committed, the broker is killed with SIGKILL and started again. The
pipeline must wait for it rather than fail, and a `read_committed` consumer (Confluent's
client) must then read every order event exactly once.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from kafka_kit import BIN, event_ids_after_disruption, kafka, own_cluster

EVENTS = 9000
PARTITIONS = 2


@pytest.fixture(scope="module")
def broker():
    with own_cluster("eos", 26092) as cluster:
        yield cluster


def test_a_broker_killed_mid_run_loses_and_doubles_nothing_in_transactions(broker, tmp_path):
    servers, directory = broker
    topic = f"eos.orders.{uuid.uuid4().hex[:10]}"
    # A short transaction timeout, so that records stuck while the broker is down fail
    # (and their transaction is retried) within the outage.
    (tmp_path / "p.sql").write_text(
        f"CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '{EVENTS}', "
        "rate = '1500', seed = '11');\n"
        f"CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
        f"partitions = '{PARTITIONS}', key_field = 'order_id', \"kafka.transaction.timeout.ms\" = '5000');\n"
        "INSERT INTO out SELECT event_id, order_id, event_type FROM orders;\n"
    )
    (tmp_path / "p.yaml").write_text(
        "name: eos\nsql: p.sql\ncheckpoint: { interval: 200ms, dir: checkpoints }\ndelivery: exactly-once\n"
    )

    def kill_and_restart() -> None:
        kafka("kill", "1", directory=directory)
        kafka("restart", "1", directory=directory)

    # The broker killed once some transactions have committed.
    seen = event_ids_after_disruption(tmp_path, "p.yaml", servers, topic, PARTITIONS,
                                      EVENTS // 6, kill_and_restart)
    expected = subprocess.run(
        [str(BIN), "generate", "--stream", "orders", "--seed", "11", "--count", str(EVENTS),
         "--option", "rate=1500"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    want = sorted(json.loads(line)["event_id"] for line in expected)
    assert len(seen) == len(want), f"{len(seen)} records read for {len(want)} events"
    assert sorted(seen) == want, "a record was lost or written twice"
