"""The Kafka dead-letter store with clients we did not write.

Confluent's producer writes good and bad records (broken JSON, a wrong type) into a
domain topic; a Tributary pipeline with ``dlq.store = "kafka"`` reads it and keeps the
bad ones on ``<domain>.dlq``, Avro in the Confluent wire format, which Confluent's
``AvroDeserializer`` reads through the registry. ``tributary dlq replay`` then sends a
dead letter back into the source topic with its original key and headers, once, even
when repeated.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_kit import BIN, read_all
from test_kafka_interop import servers  # noqa: F401 (the broker fixture)


def tributary(tmp: Path, *args: str, settings: list[str]) -> subprocess.CompletedProcess:
    sets = [a for s in settings for a in ("--set", s)]
    return subprocess.run([str(BIN), *args, *sets], cwd=tmp, capture_output=True, text=True,
                          timeout=300)


def test_bad_records_land_on_the_domain_dlq_topic_and_replay_once_with_key_and_headers(servers, tmp_path):
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_registry import Registry

    registry = Registry(tmp_path / "registry").start()
    try:
        domain = f"dlqtest{uuid.uuid4().hex[:10]}"
        topic = f"{domain}.orders"
        admin = AdminClient({"bootstrap.servers": servers})
        for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            f.result(timeout=30)
        producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True})
        for i in range(100):
            producer.produce(topic, key=str(i), value=json.dumps({"order_id": i, "total": i / 2}))
        producer.produce(topic, key=b"k-broken", value=b"{not json",
                         headers=[("trace", b"t-1"), ("source", b"pos-3")])
        producer.produce(topic, key=b"k-type", value=json.dumps({"order_id": "seven", "total": 1}))
        assert producer.flush(30) == 0

        # The store's cluster and registry from the configuration file (`./tributary.toml`).
        (tmp_path / "tributary.toml").write_text(
            f'[kafka.clusters.test]\nbootstrap_servers = "{servers}"\n\n'
            f'[dlq]\nstore = "kafka"\ncluster = "test"\n\n[registry]\nurl = "{registry.url}"\n'
        )
        settings = ["admin.listen=127.0.0.1:0", "log.format=json"]
        (tmp_path / "p.sql").write_text(
            f"CREATE TABLE orders (order_id BIGINT, total DOUBLE) WITH (connector = 'kafka', "
            f"bootstrap_servers = '{servers}', topic = '{topic}', bounded = 'true');\n"
            "CREATE TABLE copy WITH (connector = 'file', path = 'out.jsonl');\n"
            "INSERT INTO copy SELECT * FROM orders;\n"
        )
        run = tributary(tmp_path, "run", "p.sql", settings=settings)
        assert run.returncode == 0, run.stderr
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 100

        # The dead-letter topic, read with Confluent's deserializer and registry client.
        dlq_topic = f"{domain}.dlq"
        deserialize = AvroDeserializer(registry.client())
        ctx = SerializationContext(dlq_topic, MessageField.VALUE)
        letters = [deserialize(m.value(), ctx) for m in read_all(servers, dlq_topic, 1)]
        assert len(letters) == 2, letters
        by_class = {l["failure_class"]: l for l in letters}
        assert set(by_class) == {"malformed", "schema_mismatch"}
        broken = by_class["malformed"]
        assert broken["payload"] == b"{not json"
        assert broken["source_topic"] == topic
        assert broken["source_partition"] == 0 and broken["source_offset"] == 100
        assert broken["source_key"] == b"k-broken"
        assert broken["source_table"] == "orders" and broken["pipeline"] == "p"
        assert broken["status"] == "pending" and broken["attempts"] == 1
        assert by_class["schema_mismatch"]["source_offset"] == 101

        listed = tributary(tmp_path, "dlq", "list", "--format", "json", "--domain", domain,
                           settings=[])
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(l) for l in listed.stdout.splitlines()]
        assert {r["id"] for r in rows} == {l["id"] for l in letters}

        # Replay the broken record twice: one copy in the source topic, key and headers kept.
        for _ in range(2):
            done = tributary(tmp_path, "dlq", "replay", broken["id"], settings=[])
            assert done.returncode == 0, done.stderr
        replayed = [m for m in read_all(servers, topic, 1) if m.offset() > 101]
        assert len(replayed) == 1, [m.value() for m in replayed]
        m = replayed[0]
        assert (m.key(), m.value()) == (b"k-broken", b"{not json")
        headers = dict(m.headers())
        assert headers["trace"] == b"t-1" and headers["source"] == b"pos-3"
        assert headers["tributary-dlq-id"] == broken["id"].encode()
        shown = tributary(tmp_path, "dlq", "show", broken["id"], "--format", "json",
                          settings=[])
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["status"] == "replayed"
    finally:
        registry.stop()
