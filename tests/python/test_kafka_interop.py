"""The kafka connector against a real broker, with a client we did not write.

Confluent's Python client (``confluent_kafka``, librdkafka in its wheel) produces
records that a Tributary pipeline reads, including malformed ones, and reads the
records a Tributary pipeline writes. The broker is the one ``scripts/test`` starts
(``scripts/kafka start``); its bootstrap servers are in ``TRIBUTARY_TEST_KAFKA``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_kit import BIN, read_all



@pytest.fixture(scope="module")
def servers() -> str:
    s = os.environ.get("TRIBUTARY_TEST_KAFKA")
    if not s:
        pytest.fail("no broker: run scripts/test, or export TRIBUTARY_TEST_KAFKA=$(scripts/kafka start | tail -n 1)")
    if not BIN.exists():
        pytest.fail(f"no tributary binary at {BIN}")
    return s


def new_topic(servers: str, partitions: int) -> str:
    name = f"interop.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": servers})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(timeout=30)
    return name


def run_pipeline(tmp: Path, sql: str, *settings: str) -> dict:
    (tmp / "p.sql").write_text(sql)
    sets = [a for s in ("admin.listen=127.0.0.1:0", "log.format=json", *settings) for a in ("--set", s)]
    out = subprocess.run(
        [str(BIN), "run", "p.sql", *sets],
        cwd=tmp, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    finished = [json.loads(l) for l in out.stderr.splitlines() if '"pipeline finished"' in l]
    assert finished, out.stderr
    return finished[-1]


COLUMNS = "order_id BIGINT, channel VARCHAR, total DOUBLE"


def test_tributary_reads_what_confluent_kafka_produced_and_diverts_bad_records(servers, tmp_path):
    topic = new_topic(servers, 2)
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True})
    sent = []
    t0 = int(time.time() * 1000) - 86_400_000  # a day ago, one record a second
    for i in range(500):
        rec = {"order_id": i, "channel": ["app", "kiosk", "web"][i % 3], "total": i / 4}
        sent.append(rec)
        producer.produce(topic, key=str(i), value=json.dumps(rec), timestamp=t0 + i * 1000,
                         headers=[("source", f"pos-{i % 7}".encode()), ("trace", f"t{i}".encode())])
    producer.produce(topic, key="bad", value=b"{not json")
    producer.produce(topic, key="bad", value=json.dumps({"order_id": "not a number"}))
    assert producer.flush(30) == 0

    finished = run_pipeline(
        tmp_path,
        f"CREATE TABLE orders ({COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{servers}', "
        f"topic = '{topic}', bounded = 'true');\n"
        "CREATE TABLE copy WITH (connector = 'file', path = 'out.jsonl');\n"
        "INSERT INTO copy SELECT * FROM orders;\n",
    )
    got = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(got, key=lambda r: r["order_id"]) == sent
    assert finished["bad_records"] == 2

    # From a point in time, with the key, a header, all headers and the record time as
    # columns.
    (tmp_path / "out.jsonl").unlink()
    finished = run_pipeline(
        tmp_path,
        f"CREATE TABLE orders ({COLUMNS}, k VARCHAR, src VARCHAR, hs ARRAY<STRUCT<key VARCHAR, value VARCHAR>>, "
        f"ts TIMESTAMP) WITH (connector = 'kafka', "
        f"bootstrap_servers = '{servers}', topic = '{topic}', bounded = 'true', offset = 'timestamp', "
        f"start_timestamp = '{t0 + 250_000}', 'metadata.k' = 'key', 'metadata.src' = 'header.source', "
        "'metadata.hs' = 'headers', 'metadata.ts' = 'timestamp');\n"
        "CREATE TABLE copy WITH (connector = 'file', path = 'out.jsonl');\n"
        "INSERT INTO copy SELECT order_id, channel, total, k, src, hs, "
        "CAST(ts AS BIGINT) AS ns FROM orders;\n",
    )
    got = sorted((json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()),
                 key=lambda r: r["order_id"])
    assert [{c: r[c] for c in ("order_id", "channel", "total")} for r in got] == sent[250:]
    assert all(r["k"] == str(r["order_id"]) for r in got)
    assert all(r["src"] == f"pos-{r['order_id'] % 7}" for r in got)
    assert all(r["hs"] == [{"key": "source", "value": f"pos-{r['order_id'] % 7}"},
                           {"key": "trace", "value": f"t{r['order_id']}"}] for r in got), got[:2]
    assert all(r["ns"] == (t0 + r["order_id"] * 1000) * 1_000_000 for r in got), got[:2]
    assert finished["bad_records"] == 2  # the two bad records were written after t0 + 250 s


def test_an_upsert_topic_holds_the_current_result_per_key(servers, tmp_path):
    """A GROUP BY's changelog written with changelog = 'upsert': the latest record of
    each key (a tombstone deletes it) is the batch answer; a group its HAVING stopped
    holding ends with a tombstone."""
    source = new_topic(servers, 1)
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True})
    channels = ["web"] * 200 + ["app"] * 60 + ["kiosk"] * 40
    for i, channel in enumerate(channels):
        producer.produce(source, value=json.dumps({"order_id": i, "channel": channel, "total": i % 10}))
    assert producer.flush(30) == 0
    sink = f"interop.upsert.{uuid.uuid4().hex[:12]}"
    run_pipeline(
        tmp_path,
        f"CREATE TABLE orders ({COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{servers}', "
        f"topic = '{source}', bounded = 'true');\n"
        f"CREATE TABLE current WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{sink}', "
        "partitions = '2', key_field = 'channel', changelog = 'upsert');\n"
        "INSERT INTO current SELECT channel, count(*) AS n, sum(total) AS total FROM orders "
        "GROUP BY channel HAVING count(*) <= 100;\n",
        "pipeline.batch_size=16",
    )
    records = read_all(servers, sink, 2)
    latest = {}
    for m in records:
        latest[m.key().decode()] = None if m.value() is None else json.loads(m.value())
    assert any(m.value() is None for m in records), "retractions are tombstones"
    assert all("_op" not in json.loads(m.value()) for m in records if m.value() is not None)
    total = lambda ch: float(sum(i % 10 for i, c in enumerate(channels) if c == ch))
    assert latest == {
        "web": None,  # passed the HAVING up to 100 rows, then was retracted
        "app": {"channel": "app", "n": 60, "total": total("app")},
        "kiosk": {"channel": "kiosk", "n": 40, "total": total("kiosk")},
    }, latest


def test_confluent_kafka_reads_what_tributary_wrote(servers, tmp_path):
    topic = f"interop.out.{uuid.uuid4().hex[:12]}"
    run_pipeline(
        tmp_path,
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '2000', rate = '0', seed = '3');\n"
        f"CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
        "partitions = '3', key_field = 'order_id');\n"
        "INSERT INTO out SELECT event_id, order_id, event_type FROM orders;\n",
    )
    records = read_all(servers, topic, 3)
    values = [json.loads(m.value()) for m in records]
    # The generator's defaults: no duplicates, nothing malformed; every event once.
    assert len(values) == 2000, len(values)
    assert len({v["event_id"] for v in values}) == 2000
    for m, v in zip(records, values):
        assert m.key().decode() == str(v["order_id"])
    # One key, one partition: the one the Java client's partitioner picks.
    partition_of = {}
    for m, v in zip(records, values):
        assert partition_of.setdefault(v["order_id"], m.partition()) == m.partition()
        assert m.partition() == (murmur2(m.key()) & 0x7FFFFFFF) % 3, m.key()


def murmur2(data: bytes) -> int:
    """Kafka's Java DefaultPartitioner hash (Utils.murmur2), as a signed 32-bit int."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    n = len(data) // 4
    for i in range(n):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[4 * n:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@pytest.mark.parametrize("behind", [0, 1])
def test_a_partition_behind_another_loses_no_rows_to_lateness(servers, tmp_path, behind):
    """One partition is an hour behind the other in event time. One task reads both
    (whichever the consumer delivers first); its watermark follows the slower
    partition, so no row of the one behind is late."""
    topic = new_topic(servers, 2)
    producer = Producer({"bootstrap.servers": servers})
    for i in range(300):
        for partition in (0, 1):
            hour = 9 if partition == behind else 10
            ts = f"2026-01-01T{hour:02d}:00:{(i * 10) // 1000:02d}.{(i * 10) % 1000:03d}Z"
            producer.produce(topic, partition=partition,
                             value=json.dumps({"order_id": i, "event_time": ts}))
    assert producer.flush(30) == 0
    run_pipeline(
        tmp_path,
        "CREATE TABLE orders (order_id BIGINT, event_time TIMESTAMP) WITH (connector = 'kafka', "
        f"bootstrap_servers = '{servers}', topic = '{topic}', bounded = 'true', "
        "event_time_field = 'event_time', watermark_delay = '1s');\n"
        "CREATE TABLE counts WITH (connector = 'file', path = 'counts.jsonl');\n"
        "INSERT INTO counts SELECT w.start AS minute, n FROM "
        "(SELECT tumble(INTERVAL '1' MINUTE) AS w, count(*) AS n FROM orders GROUP BY w);\n",
    )
    counts = [json.loads(l) for l in (tmp_path / "counts.jsonl").read_text().splitlines()]
    assert sorted(c["n"] for c in counts) == [300, 300], counts


ORDER_V1 = {
    "type": "record", "name": "OrderPlaced", "namespace": "com.tributary.events.orders",
    "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "channel", "type": "string"},
        {"name": "total", "type": "double"},
    ],
}
ORDER_V2 = dict(ORDER_V1, fields=ORDER_V1["fields"] + [
    {"name": "loyalty_tier", "type": "string", "default": "none"},
])


def test_avro_from_confluent_serializers_old_and_new_schema_read_through_the_registry(servers, tmp_path):
    """Records written with Confluent's AvroSerializer against Tributary's registry, with
    a schema and then its evolution (a field added with a default), plus two records
    that are not Avro in the Confluent wire format. Tributary reads them by schema id
    into the table's columns: the new field is NULL for old records."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_registry import Registry

    registry = Registry(tmp_path / "registry").start()
    try:
        topic = new_topic(servers, 2)
        producer = Producer({"bootstrap.servers": servers})
        ctx = SerializationContext(topic, MessageField.VALUE)
        expected = []
        for schema, rows in ((ORDER_V1, range(200)), (ORDER_V2, range(200, 300))):
            serialize = AvroSerializer(registry.client(), json.dumps(schema))
            for i in rows:
                rec = {"order_id": i, "channel": ["app", "web"][i % 2], "total": i / 8}
                if schema is ORDER_V2:
                    rec["loyalty_tier"] = "gold"
                producer.produce(topic, key=str(i), value=serialize(rec, ctx))
                expected.append(dict(rec, loyalty_tier=rec.get("loyalty_tier")))
        producer.produce(topic, value=b"\x00\x00\x00\x03\xe7not avro")  # unknown schema id 999
        producer.produce(topic, value=b"plain text")
        # A registered schema id with a broken body: cut short, and a varint that never ends.
        v1 = AvroSerializer(registry.client(), json.dumps(ORDER_V1))
        whole = v1({"order_id": 7, "channel": "app", "total": 1.0}, ctx)
        producer.produce(topic, key="cut", value=whole[:-3], partition=0)
        producer.produce(topic, key="varint", value=whole[:5] + b"\xff" * 12, partition=1)
        assert producer.flush(30) == 0

        finished = run_pipeline(
            tmp_path,
            "CREATE TABLE orders (order_id BIGINT, channel VARCHAR, total DOUBLE, loyalty_tier VARCHAR) "
            f"WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
            f"format = 'avro', schema_registry_url = '{registry.url}', bounded = 'true');\n"
            "CREATE TABLE copy WITH (connector = 'file', path = 'out.jsonl');\n"
            "INSERT INTO copy SELECT * FROM orders;\n",
        )
        got = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(got, key=lambda r: r["order_id"]) == expected
        assert finished["bad_records"] == 4

        # Again with the newer schema as the reader schema: old records take the added
        # field's default instead of NULL; the record's key, partition and offset come
        # as columns, each row with its own record's.
        (tmp_path / "order_v2.avsc").write_text(json.dumps(ORDER_V2))
        (tmp_path / "out.jsonl").unlink()
        finished = run_pipeline(
            tmp_path,
            "CREATE TABLE orders (order_id BIGINT, channel VARCHAR, total DOUBLE, loyalty_tier VARCHAR, "
            "k VARCHAR, p INT, o BIGINT, ts TIMESTAMP) "
            f"WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
            f"format = 'avro', schema_registry_url = '{registry.url}', bounded = 'true', "
            "schema_file = 'order_v2.avsc', 'metadata.k' = 'key', 'metadata.p' = 'partition', "
            "'metadata.o' = 'offset', 'metadata.ts' = 'timestamp');\n"
            "CREATE TABLE copy WITH (connector = 'file', path = 'out.jsonl');\n"
            "INSERT INTO copy SELECT * FROM orders;\n",
        )
        got = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
        values = ("order_id", "channel", "total", "loyalty_tier")
        assert sorted(({c: r[c] for c in values} for r in got), key=lambda r: r["order_id"]) == [
            dict(e, loyalty_tier=e["loyalty_tier"] or "none") for e in expected
        ]
        assert finished["bad_records"] == 4
        assert all(r["k"] == str(r["order_id"]) for r in got)
        assert all(r["ts"] is not None for r in got)
        positions = {(r["p"], r["o"]) for r in got}
        assert len(positions) == len(got), "each row carries its own record's offset"
        for p in {r["p"] for r in got}:
            offsets = [r["o"] for r in got if r["p"] == p]
            assert offsets == sorted(offsets), "a partition's rows in offset order"
    finally:
        registry.stop()


def test_confluent_deserializer_reads_the_avro_tributary_wrote(servers, tmp_path):
    """A Tributary pipeline writes Avro in the Confluent wire format (its schema
    registered under ``<topic>-value`` in Tributary's registry); Confluent's
    AvroDeserializer reads every record, and so does a Tributary Avro source."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_registry import Registry

    registry = Registry(tmp_path / "registry").start()
    try:
        topic = f"interop.avro.{uuid.uuid4().hex[:12]}"
        run_pipeline(
            tmp_path,
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '1000', "
            "rate = '0', seed = '5');\n"
            f"CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
            f"partitions = '2', key_field = 'order_id', format = 'avro', schema_registry_url = '{registry.url}');\n"
            "INSERT INTO out SELECT event_id, order_id, event_type, total FROM orders;\n",
        )
        deserialize = AvroDeserializer(registry.client())
        records = read_all(servers, topic, 2)
        assert all(m.value()[0] == 0 for m in records)  # the Confluent magic byte
        values = [deserialize(m.value(), SerializationContext(topic, MessageField.VALUE)) for m in records]
        assert len(values) == 1000
        assert len({v["event_id"] for v in values}) == 1000
        assert all(isinstance(v["order_id"], int) and v["event_type"].startswith("order_") for v in values)

        run_pipeline(
            tmp_path,
            "CREATE TABLE back (event_id VARCHAR, order_id BIGINT, event_type VARCHAR, total DOUBLE) "
            f"WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
            f"format = 'avro', schema_registry_url = '{registry.url}', bounded = 'true');\n"
            "CREATE TABLE copy WITH (connector = 'file', path = 'back.jsonl');\n"
            "INSERT INTO copy SELECT * FROM back;\n",
        )
        back = [json.loads(l) for l in (tmp_path / "back.jsonl").read_text().splitlines()]
        key = lambda r: r["event_id"]
        assert sorted(back, key=key) == sorted(
            ({k: v[k] for k in ("event_id", "order_id", "event_type", "total")} for v in values), key=key)
    finally:
        registry.stop()


OFFER_SQL = (
    "CREATE TABLE app WITH (connector = 'generator', stream = 'app', count = '3000', rate = '0', seed = '9');\n"
    "CREATE TABLE offers WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
    "partitions = '2', key_field = 'customer_id', format = 'avro', schema_registry_url = '{url}', "
    "schema_file = '{contract}');\n"
    "INSERT INTO offers SELECT event_time, customer_id, session_id, restaurant_id, "
    "COALESCE(offer_id, 0) AS offer_id, COALESCE(offer_name, '') AS offer_name, "
    "event_type = 'offer_clicked' AS clicked, COALESCE(lower(device), '') AS device "
    "FROM app WHERE event_type IN ('offer_viewed', 'offer_clicked') AND customer_id IS NOT NULL;\n"
)


def test_a_sink_writes_the_contract_in_schemas_and_confluent_reads_it(servers, tmp_path):
    """With schema_file naming a contract of schemas/, the sink registers that schema
    as is (its record name, namespace and docs) and encodes the query's columns in it;
    Confluent's AvroDeserializer reads every record with the contract's fields. A query
    with a column the contract lacks is refused at plan time, naming the column."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_registry import Registry

    contract_path = Path(__file__).resolve().parents[2] / "schemas/offers.offer_triggered.avsc"
    contract = json.loads(contract_path.read_text())
    registry = Registry(tmp_path / "registry").start()
    try:
        topic = f"interop.offers.{uuid.uuid4().hex[:12]}"
        sql = OFFER_SQL.format(servers=servers, topic=topic, url=registry.url, contract=contract_path)
        run_pipeline(tmp_path, sql)
        registered = registry.client().get_latest_version(f"{topic}-value").schema
        assert json.loads(registered.schema_str) == contract
        deserialize = AvroDeserializer(registry.client())
        records = read_all(servers, topic, 2)
        values = [deserialize(m.value(), SerializationContext(topic, MessageField.VALUE)) for m in records]
        assert len(values) > 100
        assert all(set(v) == {f["name"] for f in contract["fields"]} for v in values)
        assert all(v["device"] in ("ios", "android") and isinstance(v["clicked"], bool) for v in values)

        # A column the contract lacks: refused at plan time, naming it.
        (tmp_path / "bad.sql").write_text(sql.replace("AS device ", "AS device, 1 AS extra "))
        out = subprocess.run([str(BIN), "check", "bad.sql"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode != 0
        assert "column extra is not in the contract" in out.stderr, out.stderr
    finally:
        registry.stop()


SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def stream_of(contract: str) -> tuple[str, str | None]:
    """The generator stream a contract of schemas/ describes, and the event type it
    holds: ``orders.order_paid`` is the ``orders`` stream's ``order_paid`` events."""
    domain, name = contract.split(".", 1)
    if domain == "orders":
        return "orders", name
    return {"kitchen.ticket_timing": ("kitchen", None), "app.engagement": ("app", None)}[contract]


GENERATED_CONTRACTS = sorted(
    p.stem for p in SCHEMAS.glob("*.avsc")
    if p.stem.split(".")[0] in ("orders", "kitchen", "app") and p.stem != "orders.order_status"
)


def test_every_generator_stream_writes_to_its_contract(servers, tmp_path):
    """Each contract in schemas/ that describes generator events is written as is by a
    Kafka sink with ``schema_file`` from the generator's stream (``orders`` filtered
    to the contract's event type: its ``items`` and ``total`` are nullable in the
    merged stream and not in ``order_placed``); Confluent's AvroDeserializer reads
    back every event ``tributary generate`` writes for the same seed, field for field,
    timestamps as UTC instants, and nothing is dead-lettered."""
    from datetime import datetime, timezone

    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_registry import Registry

    assert len(GENERATED_CONTRACTS) == 9, GENERATED_CONTRACTS
    # Two events per second of event time, the first three hours at once: orders at
    # every stage of their lifecycle, every event type in a few thousand events.
    count, seed, options = 4000, 11, {"rate": "2", "warmup": "3h"}
    registry = Registry(tmp_path / "registry").start()
    try:
        run = uuid.uuid4().hex[:8]
        streams = sorted({stream_of(c)[0] for c in GENERATED_CONTRACTS})
        with_options = ", ".join(f"{k} = '{v}'" for k, v in options.items())
        sql = "".join(
            f"CREATE TABLE {s} WITH (connector = 'generator', stream = '{s}', count = '{count}', "
            f"seed = '{seed}', {with_options});\n" for s in streams)
        for i, contract in enumerate(GENERATED_CONTRACTS):
            stream, event_type = stream_of(contract)
            fields = [f["name"] for f in json.loads((SCHEMAS / f"{contract}.avsc").read_text())["fields"]]
            where = f" WHERE event_type = '{event_type}'" if event_type else ""
            sql += (
                f"CREATE TABLE out{i} WITH (connector = 'kafka', bootstrap_servers = '{servers}', "
                f"topic = 'contracts.{run}.{contract}', partitions = '1', format = 'avro', "
                f"schema_registry_url = '{registry.url}', schema_file = '{SCHEMAS / contract}.avsc');\n"
                f"INSERT INTO out{i} SELECT {', '.join(fields)} FROM {stream}{where};\n")
        finished = run_pipeline(tmp_path, sql)
        assert finished["bad_records"] == 0, finished

        generated = {}
        for s in streams:
            subprocess.run([str(BIN), "generate", "--stream", s, "--seed", str(seed), "--count", str(count),
                            *(a for k, v in options.items() for a in ("--option", f"{k}={v}")),
                            "-o", str(tmp_path / f"{s}.jsonl")], check=True, timeout=120)
            generated[s] = [json.loads(l) for l in (tmp_path / f"{s}.jsonl").read_text().splitlines()]

        deserialize = AvroDeserializer(registry.client())
        for contract in GENERATED_CONTRACTS:
            stream, event_type = stream_of(contract)
            topic = f"contracts.{run}.{contract}"
            schema = json.loads((SCHEMAS / f"{contract}.avsc").read_text())
            registered = registry.client().get_latest_version(f"{topic}-value").schema
            assert json.loads(registered.schema_str) == schema, contract
            expected = [r for r in generated[stream] if event_type is None or r["event_type"] == event_type]
            assert expected, contract
            got = [deserialize(m.value(), SerializationContext(topic, MessageField.VALUE))
                   for m in read_all(servers, topic, 1)]
            names = [f["name"] for f in schema["fields"]]

            def as_json(value):
                if isinstance(value, datetime):
                    assert value.tzinfo == timezone.utc, (contract, value)
                    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                return value

            def as_generated(name, value):
                # The generator writes some event times as epoch milliseconds (both
                # forms are valid input); the contract holds instants.
                if isinstance(value, int) and name.endswith(("_time", "_at")):
                    return as_json(datetime.fromtimestamp(value / 1000, timezone.utc))
                return value

            key = lambda r: json.dumps(r, sort_keys=True)
            got = sorted(({n: as_json(g[n]) for n in names} for g in got), key=key)
            expected = sorted(({n: as_generated(n, e.get(n)) for n in names} for e in expected), key=key)
            assert len(got) == len(expected), contract
            for g, e in zip(got, expected):
                assert g == e, (contract, g, e)
    finally:
        registry.stop()


def test_rows_null_where_the_contract_requires_a_value_are_dead_lettered(servers, tmp_path):
    """A query whose column may be NULL fits a contract field that may not (the plan
    cannot tell): every ``orders`` event written to the ``order_placed`` contract
    unfiltered, the placed ones reach the topic and each other event, whose ``items``
    is NULL, is a dead letter of class ``schema_mismatch`` naming the field and the
    contract, instead of failing the pipeline."""
    from test_registry import Registry

    registry = Registry(tmp_path / "registry").start()
    try:
        topic = f"interop.placed.{uuid.uuid4().hex[:12]}"
        contract = SCHEMAS / "orders.order_placed.avsc"
        fields = [f["name"] for f in json.loads(contract.read_text())["fields"]]
        finished = run_pipeline(
            tmp_path,
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '4000', "
            "seed = '11', rate = '2', warmup = '3h');\n"
            f"CREATE TABLE placed WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
            f"partitions = '1', format = 'avro', schema_registry_url = '{registry.url}', "
            f"schema_file = '{contract}');\n"
            f"INSERT INTO placed SELECT {', '.join(fields)} FROM orders;\n",
        )
        out = subprocess.run([str(BIN), "generate", "--stream", "orders", "--seed", "11", "--count", "4000",
                              "--option", "rate=2", "--option", "warmup=3h"],
                             capture_output=True, text=True, check=True, timeout=120)
        types = [json.loads(l)["event_type"] for l in out.stdout.splitlines()]
        placed = types.count("order_placed")
        assert 0 < placed < len(types)
        assert len(read_all(servers, topic, 1)) == placed
        assert finished["bad_records"] == len(types) - placed, finished
        listed = subprocess.run([str(BIN), "dlq", "list", "--format", "json", "--class", "schema_mismatch",
                                 "--limit", "10000"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        letters = [json.loads(l) for l in listed.stdout.splitlines()]
        assert len(letters) == len(types) - placed
        assert all("items is NULL" in l["message"] and "OrderPlaced" in l["message"] for l in letters), letters[0]
    finally:
        registry.stop()


def test_a_derived_schema_is_named_after_the_table_in_utc_and_as_nullable_as_the_plan(servers, tmp_path):
    """Without ``schema_file`` the sink derives the Avro schema from the query: the
    record is named after the table in namespace ``tributary.<pipeline>``; event times
    and window bounds are UTC ``timestamp-millis``/``timestamp-micros`` (not
    ``local-timestamp-nanos``, which Python's readers return as integers); a field is
    a union with null only where the plan says the column may be NULL."""
    from datetime import datetime, timezone

    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    from test_registry import Registry

    registry = Registry(tmp_path / "registry").start()
    try:
        topic = f"interop.derived.{uuid.uuid4().hex[:12]}"
        run_pipeline(
            tmp_path,
            "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '2000', "
            "rate = '0', seed = '5', event_time_field = 'event_time');\n"
            f"CREATE TABLE sales_per_minute WITH (connector = 'kafka', bootstrap_servers = '{servers}', "
            f"topic = '{topic}', partitions = '1', format = 'avro', schema_registry_url = '{registry.url}');\n"
            "INSERT INTO sales_per_minute SELECT w.start AS window_start, w.end AS window_end, "
            "restaurant_id, orders, revenue FROM (SELECT tumble(INTERVAL '1' MINUTE) AS w, restaurant_id, "
            "count(*) AS orders, sum(total) AS revenue FROM orders WHERE event_type = 'order_placed' "
            "GROUP BY w, restaurant_id);\n",
        )
        schema = json.loads(registry.client().get_latest_version(f"{topic}-value").schema.schema_str)
        assert (schema["type"], schema["name"], schema.get("namespace")) == \
            ("record", "SalesPerMinute", "tributary.p"), schema
        types = {f["name"]: f["type"] for f in schema["fields"]}
        for bound in ("window_start", "window_end"):
            # (the plan has window bounds as nullable: a union with null)
            t = next(b for b in types[bound] if b != "null") if isinstance(types[bound], list) else types[bound]
            assert t["type"] == "long", types
            assert t["logicalType"] in ("timestamp-millis", "timestamp-micros"), types
        assert types["restaurant_id"] == "long" and types["orders"] == "long", types
        assert sorted(types["revenue"], key=str) == sorted(["null", "double"], key=str), types

        deserialize = AvroDeserializer(registry.client())
        rows = [deserialize(m.value(), SerializationContext(topic, MessageField.VALUE))
                for m in read_all(servers, topic, 1)]
        assert rows
        for r in rows:
            assert isinstance(r["window_start"], datetime) and r["window_start"].tzinfo == timezone.utc, r
            assert (r["window_end"] - r["window_start"]).total_seconds() == 60, r
    finally:
        registry.stop()


def test_cloudevents_headers_let_consumers_route_on_type(servers, tmp_path):
    """With cloudevents_type, every record carries the CloudEvents Kafka binding's
    binary-mode headers (ce_specversion, ce_id unique, ce_source, ce_type, ce_time,
    content-type), read here by a consumer that never looks at the payload."""
    topic = f"interop.ce.{uuid.uuid4().hex[:12]}"
    run_pipeline(
        tmp_path,
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', count = '300', rate = '0');\n"
        f"CREATE TABLE out WITH (connector = 'kafka', bootstrap_servers = '{servers}', topic = '{topic}', "
        "partitions = '1', cloudevents_type = 'com.tributary.orders.event');\n"
        "INSERT INTO out SELECT event_id, order_id FROM orders;\n",
    )
    headers = [{k: v.decode() for k, v in m.headers()} for m in read_all(servers, topic, 1)]
    assert len(headers) == 300
    assert all(h["ce_specversion"] == "1.0" and h["ce_type"] == "com.tributary.orders.event"
               and h["ce_source"] == "tributary/out" and h["content-type"] == "application/json"
               and h["ce_time"].endswith("Z") for h in headers), headers[0]
    assert len({h["ce_id"] for h in headers}) == 300


def test_checkpointed_offsets_are_committed_to_the_consumer_group(servers, tmp_path):
    """With checkpoints, the Kafka source commits the offsets of each committed
    checkpoint to its consumer group (lag monitoring, `offset = 'group'`): once the
    pipeline has read everything, the group's committed offsets reach the end."""
    from confluent_kafka import Consumer, TopicPartition

    topic = new_topic(servers, 2)
    producer = Producer({"bootstrap.servers": servers})
    for i in range(1000):
        producer.produce(topic, key=str(i), value=json.dumps({"order_id": i, "channel": "app", "total": 1.0}))
    assert producer.flush(30) == 0
    group = f"g-{uuid.uuid4().hex[:8]}"
    (tmp_path / "p.sql").write_text(
        f"CREATE TABLE orders ({COLUMNS}) WITH (connector = 'kafka', bootstrap_servers = '{servers}', "
        f"topic = '{topic}', group_id = '{group}');\n"
        "CREATE TABLE copy WITH (connector = 'blackhole');\n"
        "INSERT INTO copy SELECT * FROM orders;\n"
    )
    (tmp_path / "p.yaml").write_text("name: offsets\nsql: p.sql\ncheckpoint: { interval: 100ms }\n")
    pipeline = subprocess.Popen(
        [str(BIN), "run", "p.yaml", "--set", "admin.listen=127.0.0.1:0"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    consumer = Consumer({"bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.time() + 60
        while True:
            committed = consumer.committed([TopicPartition(topic, p) for p in range(2)], timeout=10)
            total = sum(max(tp.offset, 0) for tp in committed)
            if total == 1000:
                break
            assert pipeline.poll() is None, pipeline.stderr.read()
            assert time.time() < deadline, f"group offsets stuck at {total}"
            time.sleep(0.1)
    finally:
        consumer.close()
        pipeline.terminate()
        pipeline.communicate(timeout=60)
