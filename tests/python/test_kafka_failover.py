"""A broker of a three-broker cluster is killed (kill -9) while a Tributary pipeline
writes to a topic replicated three times: the pipeline finishes, and every record is
in the topic exactly once (idempotent producer, acks=all, min.insync.replicas=2).

The cluster is this test's own (``scripts/kafka start --brokers 3``), on free ports,
stopped at the end.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_kit import event_ids_after_disruption, kafka, own_cluster

EVENTS = 30_000
PARTITIONS = 3


@pytest.fixture(scope="module")
def cluster():
    with own_cluster("failover", 29092, brokers=3) as (servers, directory):
        yield directory, servers


def test_killing_a_broker_loses_and_doubles_nothing(cluster, tmp_path):
    directory, servers = cluster
    topic = f"failover.{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": servers})
    new = NewTopic(topic, PARTITIONS, 3, config={"min.insync.replicas": "2"})
    for f in admin.create_topics([new]).values():
        f.result(timeout=60)

    (tmp_path / "p.sql").write_text(
        f"CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '{EVENTS}', "
        "rate = '3000', seed = '11');\n"
        f"CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
        "key_field = 'order_id');\n"
        "INSERT INTO out SELECT event_id, order_id, event_type FROM orders;\n"
    )
    # Broker 2 killed once a sixth of the records are in the topic.
    seen = event_ids_after_disruption(tmp_path, "p.sql", servers, topic, PARTITIONS, EVENTS // 6,
                                      lambda: kafka("kill", "2", directory=directory))
    assert len(seen) == EVENTS, f"{len(seen)} records for {EVENTS} events"
    assert len(set(seen)) == EVENTS, "a record was written twice"
