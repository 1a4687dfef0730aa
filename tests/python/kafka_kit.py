"""What the Kafka tests share: a cluster of their own (``scripts/kafka``), waiting
for a pipeline's output, and reading back what it wrote with Confluent's client."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

REPO = Path(__file__).resolve().parents[2]
KAFKA = ["bash", str(REPO / "scripts/kafka")]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/tributary/target"))
BIN = Path(os.environ.get("TRIBUTARY_BIN", TARGET / "debug/tributary"))


def kafka(*args: str, directory: str) -> None:
    """Runs ``scripts/kafka ARGS --dir DIRECTORY`` (e.g. ``kill 1``), which must succeed."""
    done = subprocess.run(KAFKA + [*args, "--dir", directory], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def own_cluster(name: str, port_base: int, brokers: int = 1) -> Iterator[tuple[str, str]]:
    """A cluster of ``brokers`` started for one test module on ports from
    ``port_base``: (bootstrap servers, its directory for ``kafka``); stopped after.

    Keep ``port_base`` (and its controller, ``port_base + 100``) below Linux's
    ephemeral range (32768 and up): there, any client's outgoing connection may hold
    the port between the script's check and the broker's bind (a CI run lost the
    marketing cluster, then on 39092, that way)."""
    directory = tempfile.mkdtemp(prefix=f"tributary-{name}-")
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_PORT_BASE"}
    env["KAFKA_PORT_BASE"] = str(port_base)
    started = subprocess.run(KAFKA + ["start", "--brokers", str(brokers), "--dir", directory],
                             capture_output=True, text=True, env=env, timeout=240)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1], directory
    finally:
        subprocess.run(KAFKA + ["stop", "--dir", directory], capture_output=True, timeout=120)


def wait_until_written(servers: str, topic: str, partitions: int, records: int,
                       pipeline: subprocess.Popen) -> None:
    """Waits until ``topic`` has at least ``records`` offsets while ``pipeline`` runs."""
    deadline = time.time() + 120
    while sum(end_offsets(servers, topic, partitions).values()) < records:
        assert pipeline.poll() is None, pipeline.stderr.read()
        assert time.time() < deadline, "the pipeline wrote too little"
        time.sleep(0.2)
    assert pipeline.poll() is None, "the pipeline ended before it was wanted"


def event_ids_after_disruption(tmp: Path, pipeline_file: str, servers: str, topic: str,
                               partitions: int, records: int,
                               disrupt: Callable[[], None]) -> list[str]:
    """Runs ``tributary run PIPELINE_FILE`` in ``tmp``; once ``topic`` holds ``records``
    offsets, calls ``disrupt`` (kill a broker, restart it); waits until the pipeline
    ends well and returns the ``event_id`` of every committed record in the topic."""
    pipeline = subprocess.Popen(
        [str(BIN), "run", pipeline_file, "--set", "admin.listen=127.0.0.1:0"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until_written(servers, topic, partitions, records, pipeline)
        disrupt()
        _, err = pipeline.communicate(timeout=300)
        assert pipeline.returncode == 0, err
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    return [json.loads(m.value())["event_id"] for m in read_all(servers, topic, partitions)]


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
