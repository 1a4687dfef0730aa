"""Domain topics on several clusters: a pipeline names business domains and events,
not clusters and topics; the configuration maps each domain to its cluster. Orders
are read from one cluster and offers written to another, whose topic the sink creates
with partitions and retention. A source whose cluster is down waits for it (the
pipeline does not fail) and reads everything once it is back.

The ``core`` cluster is the suite's broker (``TRIBUTARY_TEST_KAFKA``); the
``marketing`` cluster is this module's own single broker (``scripts/kafka``).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka_kit import BIN, kafka, own_cluster, read_all

ORDERS = 300


@pytest.fixture(scope="module")
def clusters():
    core = os.environ.get("TRIBUTARY_TEST_KAFKA")
    if not core:
        pytest.fail("no broker: run scripts/test, or export TRIBUTARY_TEST_KAFKA=$(scripts/kafka start | tail -n 1)")
    with own_cluster("marketing", 24092) as (marketing, directory):
        yield core, marketing, directory


def write_config(tmp: Path, core: str, marketing: str, prefix: str) -> None:
    (tmp / "tributary.toml").write_text(
        "[kafka]\n"
        f'topic_naming = "{prefix}.{{domain}}.{{event}}"\n'
        'default_cluster = ""\n'
        "[kafka.clusters.core]\n"
        f'bootstrap_servers = "{core}"\n'
        "[kafka.clusters.marketing]\n"
        f'bootstrap_servers = "{marketing}"\n'
        "[kafka.domains]\n"
        'orders = "core"\n'
        'marketing = "marketing"\n'
    )


def run(tmp: Path, sql: str) -> subprocess.Popen:
    (tmp / "p.sql").write_text(sql)
    return subprocess.Popen(
        [str(BIN), "run", "p.sql", "--set", "admin.listen=127.0.0.1:0", "--set", "log.format=json"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_domains_read_from_one_cluster_write_to_another_and_wait_for_a_cluster_that_is_down(clusters, tmp_path):
    core, marketing, directory = clusters
    prefix = f"t{uuid.uuid4().hex[:8]}"
    write_config(tmp_path, core, marketing, prefix)
    placed = f"{prefix}.orders.placed"
    producer = Producer({"bootstrap.servers": core})
    for i in range(ORDERS):
        producer.produce(placed, key=str(i), value=json.dumps({"order_id": i, "total": i / 2}))
    assert producer.flush(30) == 0

    pipeline = run(
        tmp_path,
        "CREATE TABLE placed (order_id BIGINT, total DOUBLE) WITH (connector = 'kafka', "
        "domain = 'orders', event = 'placed', bounded = 'true');\n"
        "CREATE TABLE offers WITH (connector = 'kafka', domain = 'marketing', event = 'offer_triggered', "
        "key_field = 'order_id', partitions = '2', retention = '7d');\n"
        "INSERT INTO offers SELECT order_id, 'free_fries' AS offer FROM placed WHERE total >= 10;\n",
    )
    _, err = pipeline.communicate(timeout=300)
    assert pipeline.returncode == 0, err

    offers = f"{prefix}.marketing.offer_triggered"
    got = sorted(json.loads(m.value())["order_id"] for m in read_all(marketing, offers, 2))
    assert got == [i for i in range(ORDERS) if i / 2 >= 10]
    assert offers not in AdminClient({"bootstrap.servers": core}).list_topics(timeout=30).topics
    resource = ConfigResource(ConfigResource.Type.TOPIC, offers)
    admin = AdminClient({"bootstrap.servers": marketing})  # kept alive until the result is in
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["retention.ms"].value == str(7 * 24 * 3600 * 1000)

    # The marketing cluster goes down; a pipeline reading from it waits, logging
    # that it retries, and reads every offer once the cluster is back.
    kafka("kill", "1", directory=directory)
    (tmp_path / "copy.jsonl").unlink(missing_ok=True)
    reader = run(
        tmp_path,
        "CREATE TABLE offers (order_id BIGINT, offer VARCHAR) WITH (connector = 'kafka', "
        "domain = 'marketing', event = 'offer_triggered', bounded = 'true');\n"
        "CREATE TABLE copy WITH (connector = 'file', path = 'copy.jsonl');\n"
        "INSERT INTO copy SELECT * FROM offers;\n",
    )
    try:
        for line in reader.stderr:
            assert reader.poll() is None or reader.returncode == 0, line
            if "kafka unreachable; retrying" in line:
                break
        else:
            pytest.fail("the reader ended without waiting for the cluster")
        assert reader.poll() is None, "the reader gave up while the cluster was down"
        kafka("restart", "1", directory=directory)
        _, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err
    finally:
        if reader.poll() is None:
            reader.kill()
    copied = sorted(json.loads(l)["order_id"] for l in (tmp_path / "copy.jsonl").read_text().splitlines())
    assert copied == got
