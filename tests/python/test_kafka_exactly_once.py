"""Exactly-once into Kafka while the broker dies.

A pipeline writes generated orders through the Kafka sink in transactions (checkpoints
every 200 ms, `delivery: exactly-once`) to this module's own single broker. Once part
of the output is committed, the broker is killed with SIGKILL and started again. The
pipeline must wait for it rather than fail, and a `read_committed` consumer (Confluent's
client) must then read every order event exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from kafka_kit import kafka, own_cluster, read_all, wait_until_written

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/tributary/target"))
BIN = Path(os.environ.get("TRIBUTARY_BIN", TARGET / "debug/tributary"))
EVENTS = 9000
PARTITIONS = 2


@pytest.fixture(scope="module")
def broker():
    with own_cluster("eos", 49092) as cluster:
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
    pipeline = subprocess.Popen(
        [str(BIN), "run", "p.yaml", "--set", "admin.listen=127.0.0.1:0"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Kill the broker once some transactions have committed.
        wait_until_written(servers, topic, PARTITIONS, EVENTS // 6, pipeline)
        kafka("kill", "1", directory=directory)
        kafka("restart", "1", directory=directory)
        _, err = pipeline.communicate(timeout=300)
        assert pipeline.returncode == 0, err
    finally:
        if pipeline.poll() is None:
            pipeline.kill()

    seen = [json.loads(m.value())["event_id"] for m in read_all(servers, topic, PARTITIONS)]
    expected = subprocess.run(
        [str(BIN), "generate", "--stream", "orders", "--seed", "11", "--count", str(EVENTS),
         "--option", "rate=1500"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    want = sorted(json.loads(line)["event_id"] for line in expected)
    assert len(seen) == len(want), f"{len(seen)} records read for {len(want)} events"
    assert sorted(seen) == want, "a record was lost or written twice"
