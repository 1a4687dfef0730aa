"""Order tracking in production (docker/pipelines/order_tracking.yaml): order events
from a real Kafka broker, through the Rust operators, to the compacted Avro topic
``orders.tracking`` and the DynamoDB ``order_status`` table (dynalite), with the
pipeline killed with ``kill -9`` while the events are still being produced.

The oracle is test_order_tracking's plain-Python state machine over the same events:
every status row must be in the topic exactly once (read_committed, Confluent's
AvroDeserializer through the registry), and each order's item in DynamoDB (read with
boto3) must hold its last status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_kit import BIN, read_all

import test_order_tracking as oracle

ROOT = Path(__file__).resolve().parents[2]
COUNT = 8000
SENTINEL = 900_000_000


@pytest.fixture(scope="module")
def servers() -> str:
    s = os.environ.get("TRIBUTARY_TEST_KAFKA")
    if not s:
        pytest.fail("no broker: run scripts/test, or export TRIBUTARY_TEST_KAFKA=$(scripts/kafka start | tail -n 1)")
    return s


@pytest.fixture(scope="module")
def endpoint() -> str:
    e = os.environ.get("TRIBUTARY_TEST_DYNAMODB")
    if not e:
        pytest.fail("no DynamoDB-API server: run scripts/test, or export TRIBUTARY_TEST_DYNAMODB=$(scripts/dynamodb start | tail -n 1)")
    return e


def checkpoints(tmp: Path) -> int:
    """The latest committed checkpoint's id (0: none)."""
    d = tmp / "data/checkpoints/order_tracking"
    ids = [int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()] if d.exists() else []
    return max(ids, default=0)


def test_tracking_from_kafka_to_kafka_and_dynamodb_survives_kill_9(servers, endpoint, tmp_path):
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_registry import Registry

    run = uuid.uuid4().hex[:8]
    events_topic, tracking_topic = f"ot.{run}.events", f"ot.{run}.tracking"
    admin = AdminClient({"bootstrap.servers": servers})
    for f in admin.create_topics([NewTopic(events_topic, 3, 1)]).values():
        f.result(timeout=30)
    sql = (ROOT / "docker/pipelines/order_tracking.sql").read_text()
    sql = (sql.replace("'orders.order_events'", f"'{events_topic}'")
              .replace("'orders.tracking'", f"'{tracking_topic}'")
              .replace("'orders.sla_alerts'", f"'ot.{run}.alerts'")
              .replace("'../../schemas/", f"'{ROOT}/schemas/"))
    (tmp_path / "order_tracking.sql").write_text(sql)
    yaml = (ROOT / "docker/pipelines/order_tracking.yaml").read_text().replace("interval: 10s", "interval: 300ms")
    (tmp_path / "order_tracking.yaml").write_text(yaml)
    prefix = f"ot_{run}_"
    registry = Registry(tmp_path / "registry").start()
    (tmp_path / "tributary.toml").write_text(
        f'[kafka.clusters.local]\nbootstrap_servers = "{servers}"\n\n'
        f'[dynamodb]\nendpoint = "{endpoint}"\nregion = "us-east-1"\ntable_prefix = "{prefix}"\n\n'
        f'[registry]\nurl = "{registry.url}"\n')
    env = {**os.environ, "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "t"),
           "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "t")}

    gen = subprocess.run(
        [str(BIN), "generate", "--stream", "orders", "--seed", "11", "--count", str(COUNT),
         "--option", "rate=20", "--option", "warmup=2h", "--option", "out_of_order=2s",
         "--option", "duplicate_fraction=0.02"],
        capture_output=True, text=True, check=True, timeout=120)
    lines = gen.stdout.splitlines()

    # The producer writes the events keyed by order id, paced, while the pipeline runs.
    produced = threading.Event()
    sent = [0]

    def produce():
        p = Producer({"bootstrap.servers": servers, "linger.ms": 5})
        for i, line in enumerate(lines):
            p.produce(events_topic, key=str(json.loads(line)["order_id"]), value=line)
            if i % 100 == 99:
                p.flush(30)
                sent[0] = i + 1
                time.sleep(0.08)
        # Then on each partition an order placed two hours later: the watermark passes
        # every real event (and its timers), so all of them are applied.
        latest = max(oracle.ms(json.loads(line)["event_time"]) for line in lines)
        for part in range(3):
            p.produce(events_topic, partition=part, key="late", value=json.dumps(
                {"event_id": f"sentinel-{part}", "event_type": "order_placed",
                 "event_time": latest + 2 * 3600 * 1000, "order_id": SENTINEL + part,
                 "restaurant_id": 1, "channel": "app"}))
        assert p.flush(30) == 0
        produced.set()

    def start():
        return subprocess.Popen(
            [str(BIN), "run", "order_tracking.yaml", "--set", "admin.listen=127.0.0.1:0",
             "--set", "log.format=json", "--progress", "off"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    try:
        pipeline = start()

        def wait_for(what, cond):
            deadline = time.time() + 120
            while not cond():
                assert pipeline.poll() is None, pipeline.stderr.read()[-3000:]
                assert time.time() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)

        # Input starts once the pipeline runs (its first checkpoint), and the pipeline
        # is killed with a quarter of it produced and two more checkpoints committed.
        wait_for("a first checkpoint", lambda: checkpoints(tmp_path) >= 1)
        producer = threading.Thread(target=produce)
        producer.start()
        seen = checkpoints(tmp_path)
        wait_for("input and checkpoints", lambda: sent[0] >= COUNT // 4 and checkpoints(tmp_path) >= seen + 2)
        assert not produced.is_set(), "the input was all produced before the kill"
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait(timeout=30)
        pipeline = start()
        producer.join(timeout=300)
        assert produced.is_set()

        # The oracle, over what the Kafka source reads (no estimated_ready_time or
        # cancel_reason columns there).
        restaurants = oracle.generated_restaurants()
        events = []
        for line in lines:
            e = json.loads(line)
            e["at"] = oracle.ms(e["event_time"])
            e["estimated_ready"] = None
            e["cancel_reason"] = None
            events.append(e)
        rows, _, refused = oracle.track(oracle.prep_times(events), restaurants)
        assert not refused, refused[:3]

        # Until the topic holds every row (read_committed), then stop.
        deserialize = AvroDeserializer(registry.client())
        expected = sorted((r["order_id"], r["status"], r["event_time"], r["eta"]) for r in rows)
        deadline = time.time() + 240
        while True:
            assert pipeline.poll() is None, pipeline.stderr.read()[-3000:]
            got = [deserialize(m.value(), SerializationContext(tracking_topic, MessageField.VALUE))
                   for m in read_all(servers, tracking_topic, 3)]
            if len(got) >= len(expected) or time.time() > deadline:
                break
            time.sleep(0.5)
        ms = lambda t: None if t is None else int(t.timestamp() * 1000)
        got = sorted((g["order_id"], g["status"], ms(g["status_time"]), ms(g["eta"])) for g in got)
        assert len(got) == len(expected), (len(got), len(expected))
        assert got == expected

        # DynamoDB: each order's item holds its last status.
        last = {}
        for r in sorted(rows, key=lambda r: (r["order_id"], r["event_time"])):
            last[r["order_id"]] = r
        client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        items = {}
        for page in client.get_paginator("scan").paginate(TableName=f"{prefix}order_status"):
            for item in page["Items"]:
                items[int(item["order_id"]["N"])] = item["status"]["S"]
        assert items == {o: r["status"] for o, r in last.items()}
        pipeline.send_signal(signal.SIGTERM)
        assert pipeline.wait(timeout=120) == 0
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
        registry.stop()
