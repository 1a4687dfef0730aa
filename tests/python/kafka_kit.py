"""Reading back what a test wrote to Kafka, with Confluent's client."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition


def end_offsets(servers: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset, asking again while the cluster's metadata is not
    there yet (just after the topic's creation, or a broker's death)."""
    deadline = time.time() + 60
    while True:
        consumer = Consumer({"bootstrap.servers": servers, "group.id": f"o-{uuid.uuid4().hex}"})
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                    for p in range(partitions)}
        except KafkaException:
            if time.time() > deadline:
                raise
        finally:
            consumer.close()
        time.sleep(0.2)


def read_all(servers: str, topic: str, partitions: int, timeout: float = 120) -> list[Message]:
    """Every committed record of the topic's partitions, up to their end offsets now."""
    ends = end_offsets(servers, topic, partitions)
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"r-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Message] = []
    deadline = time.time() + timeout

    def done() -> bool:
        # Positions, not the last record's offset: in a transactional topic the last
        # offsets are commit markers, which a consumer skips.
        positions = consumer.position([TopicPartition(topic, p) for p in range(partitions)])
        return all(end == 0 or tp.offset >= ends[tp.partition] for tp, end in
                   zip(positions, (ends[p] for p in range(partitions))))

    while not done() and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        records.append(m)
    consumer.close()
    return records
