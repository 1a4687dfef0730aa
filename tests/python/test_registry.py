"""Tributary's built-in schema registry, driven by Confluent's own Python client.

Each test starts a fresh registry process on a free loopback port with an empty
state directory, waits until ``GET /`` answers, and talks to it with
``confluent_kafka.schema_registry.SchemaRegistryClient`` (and, for the wire
format, ``AvroSerializer``/``AvroDeserializer``; no Kafka broker is needed).

The registry command line:

- ``TRIBUTARY_REGISTRY_CMD``: a shell-split command (e.g. ``"tributary registry"``);
- else ``TRIBUTARY_REGISTRY_BIN``: a binary path, run as ``BIN registry``;
- else ``$CARGO_TARGET_DIR/debug/tributary registry`` (default target directory
  ``~/.cache/tributary/target``); the tests fail when it does not exist.

``--listen 127.0.0.1:PORT --dir DIR`` is appended. ``scripts/test`` runs them with the
venv of ``scripts/pyenv``::

    PY="$(bash scripts/pyenv | tail -n 1)"; "$PY" -m pytest tests/python
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
DEFAULT_BIN = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/tributary/target")) / "debug/tributary"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def registry_command() -> list[str]:
    cmd = os.environ.get("TRIBUTARY_REGISTRY_CMD")
    if cmd:
        return shlex.split(cmd)
    binary = os.environ.get("TRIBUTARY_REGISTRY_BIN", str(DEFAULT_BIN))
    if not Path(binary).exists():
        pytest.fail(
            f"no registry binary at {binary}: build it (cargo build --bins) or set "
            f"TRIBUTARY_REGISTRY_CMD / TRIBUTARY_REGISTRY_BIN"
        )
    return [binary, "registry"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A registry process on a free port, with its state in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = directory.parent / f"{directory.name}.log"

    def start(self) -> "Registry":
        for _attempt in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            cmd = registry_command() + ["--listen", f"127.0.0.1:{port}", "--dir", str(self.directory)]
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # e.g. the port was taken meanwhile: try another
                try:
                    status, body = rest(self.url, "GET", "/")
                    if status == 200 and body == {}:
                        return self
                except OSError:
                    pass
                time.sleep(0.05)
            self.stop()
        raise AssertionError(f"the registry did not start: {cmd}\n{self.log.read_text(errors='replace')}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def client(self) -> SchemaRegistryClient:
        """A new client (Confluent's client caches; a fresh one asks the server)."""
        return SchemaRegistryClient({"url": self.url})


def rest(url: str, method: str, path: str, body: object | None = None) -> tuple[int, object]:
    """A plain HTTP call: (status, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", CONTENT_TYPE)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        assert e.headers["Content-Type"] == CONTENT_TYPE
        return e.code, json.loads(e.read())


@pytest.fixture
def registry(tmp_path: Path):
    reg = Registry(tmp_path / "registry").start()
    yield reg
    code = reg.stop()
    assert code == 0, f"the registry exited with {code}\n{reg.log.read_text(errors='replace')}"


def avsc(name: str) -> str:
    return (SCHEMAS / f"{name}.avsc").read_text()


def evolve(schema_str: str, add: list[dict] | None = None, remove: list[str] | None = None) -> str:
    """The schema with fields appended and/or removed."""
    schema = json.loads(schema_str)
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in (remove or [])]
    schema["fields"].extend(add or [])
    return json.dumps(schema)


def sr_error(excinfo: pytest.ExceptionInfo) -> SchemaRegistryError:
    err = excinfo.value
    assert isinstance(err, SchemaRegistryError)
    return err


def test_root_types_and_mode(registry: Registry):
    assert rest(registry.url, "GET", "/") == (200, {})
    client = registry.client()
    assert client.get_schema_types() == ["AVRO"]
    assert rest(registry.url, "GET", "/mode") == (200, {"mode": "READWRITE"})
    status, body = rest(registry.url, "GET", "/no/such/route")
    assert status == 404 and body["error_code"] == 404


def test_register_fetch_and_list(registry: Registry):
    client = registry.client()
    placed = avsc("orders.order_placed")
    subject = "orders.order_placed-value"

    schema_id = client.register_schema(subject, Schema(placed, "AVRO"))
    assert schema_id >= 1
    # The same schema again (from a client without a cache): the same id, no new version.
    assert registry.client().register_schema(subject, Schema(placed, "AVRO")) == schema_id
    # Same schema, other layout: still the same id.
    compact = json.dumps(json.loads(placed), separators=(",", ":"))
    assert registry.client().register_schema(subject, Schema(compact, "AVRO")) == schema_id

    fetched = registry.client().get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert json.loads(fetched.schema_str) == json.loads(placed)

    latest = registry.client().get_latest_version(subject)
    assert (latest.subject, latest.version, latest.schema_id) == (subject, 1, schema_id)
    assert json.loads(latest.schema.schema_str) == json.loads(placed)
    assert registry.client().get_version(subject, 1).schema_id == schema_id

    # The same schema under a second subject shares the global id.
    other = "orders.order_placed.copy-value"
    assert client.register_schema(other, Schema(placed, "AVRO")) == schema_id
    paid_id = client.register_schema("orders.order_paid-value", Schema(avsc("orders.order_paid"), "AVRO"))
    assert paid_id != schema_id

    assert client.get_subjects() == sorted([subject, other, "orders.order_paid-value"])
    assert client.get_versions(subject) == [1]
    assert sorted(client.get_subjects_by_schema_id(schema_id)) == sorted([subject, other])
    pairs = {(v.subject, v.version) for v in client.get_schema_versions(schema_id)}
    assert pairs == {(subject, 1), (other, 1)}

    found = registry.client().lookup_schema(subject, Schema(placed, "AVRO"))
    assert (found.subject, found.version, found.schema_id) == (subject, 1, schema_id)


def test_schema_evolution(registry: Registry):
    client = registry.client()
    subject = "orders.order_placed-value"
    v1 = avsc("orders.order_placed")
    v2 = evolve(v1, add=[{"name": "coupon", "type": ["null", "string"], "default": None}])
    v3 = evolve(v2, remove=["total"])

    id1 = client.register_schema(subject, Schema(v1, "AVRO"))
    # BACKWARD (the default): adding a field with a default is fine.
    assert client.get_compatibility() == "BACKWARD"
    assert client.test_compatibility(subject, Schema(v2, "AVRO")) is True
    id2 = client.register_schema(subject, Schema(v2, "AVRO"))
    assert id2 != id1
    assert client.get_versions(subject) == [1, 2]

    # Under FORWARD, version 2 must read data written with v3: 'total' has no default.
    client.set_compatibility(subject_name=subject, level="FORWARD")
    assert client.get_compatibility(subject) == "FORWARD"
    assert client.test_compatibility(subject, Schema(v3, "AVRO")) is False
    assert client.test_compatibility_all_versions(subject, Schema(v3, "AVRO")) is False

    # The messages (the client returns only the boolean; ask verbosely over REST).
    status, body = rest(
        registry.url, "POST", f"/compatibility/subjects/{subject}/versions/latest?verbose=true", {"schema": v3}
    )
    assert status == 200 and body["is_compatible"] is False
    assert len(body["messages"]) == 1, body
    message = body["messages"][0]
    assert message.startswith("READER_FIELD_MISSING_DEFAULT_VALUE at /fields/8: reader field 'total'"), message
    assert "[reader: version 2, writer: new schema]" in message

    with pytest.raises(SchemaRegistryError) as excinfo:
        client.register_schema(subject, Schema(v3, "AVRO"))
    err = sr_error(excinfo)
    assert (err.http_status_code, err.error_code) == (409, 409)
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in err.error_message and "'total'" in err.error_message
    assert client.get_versions(subject) == [1, 2]

    # Under BACKWARD, removing a field is fine: v3 reads v2 data by skipping it.
    client.set_compatibility(subject_name=subject, level="BACKWARD")
    assert client.test_compatibility(subject, Schema(v3, "AVRO")) is True
    client.register_schema(subject, Schema(v3, "AVRO"))
    assert client.get_versions(subject) == [1, 2, 3]


def test_compatibility_of_incompatible_type_change(registry: Registry):
    client = registry.client()
    subject = "kitchen.ticket_timing-value"
    v1 = avsc("kitchen.ticket_timing")
    client.register_schema(subject, Schema(v1, "AVRO"))
    schema = json.loads(v1)
    field = next(f for f in schema["fields"] if f["type"] == "long")
    field["type"] = "string"
    changed = json.dumps(schema)
    assert client.test_compatibility(subject, Schema(changed, "AVRO")) is False
    status, body = rest(
        registry.url, "POST", f"/compatibility/subjects/{subject}/versions?verbose=true", {"schema": changed}
    )
    assert status == 200 and body["is_compatible"] is False
    assert any(m.startswith("TYPE_MISMATCH at /fields/") for m in body["messages"]), body
    # With verbose off, only the verdict.
    status, body = rest(registry.url, "POST", f"/compatibility/subjects/{subject}/versions/1", {"schema": changed})
    assert body == {"is_compatible": False}


def test_config_levels(registry: Registry):
    client = registry.client()
    subject = "app.engagement-value"
    assert client.get_compatibility() == "BACKWARD"
    assert client.set_compatibility(level="FULL") == {"compatibility": "FULL"}
    assert client.get_compatibility() == "FULL"
    assert client.get_config().compatibility_level.value == "FULL"

    # No subject-level configuration yet.
    with pytest.raises(SchemaRegistryError) as excinfo:
        client.get_compatibility(subject)
    assert sr_error(excinfo).error_code == 40408
    assert rest(registry.url, "GET", f"/config/{subject}?defaultToGlobal=true") == (
        200,
        {"compatibilityLevel": "FULL"},
    )

    for level in ["NONE", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL_TRANSITIVE"]:
        client.set_compatibility(subject_name=subject, level=level)
        assert client.get_compatibility(subject) == level
    assert client.get_compatibility() == "FULL", "the global level is untouched"

    with pytest.raises(SchemaRegistryError) as excinfo:
        client.set_compatibility(level="SIDEWAYS")
    assert sr_error(excinfo).error_code == 42203

    deleted = client.delete_config(subject)
    assert deleted.compatibility_level.value == "FULL_TRANSITIVE"
    with pytest.raises(SchemaRegistryError) as excinfo:
        client.get_compatibility(subject)
    assert sr_error(excinfo).error_code == 40408
    client.delete_config()
    assert client.get_compatibility() == "BACKWARD"


def test_error_codes(registry: Registry):
    client = registry.client()
    placed = avsc("orders.order_placed")

    with pytest.raises(SchemaRegistryError) as excinfo:
        client.get_latest_version("no.such.subject-value")
    err = sr_error(excinfo)
    assert (err.http_status_code, err.error_code) == (404, 40401)

    with pytest.raises(SchemaRegistryError) as excinfo:
        client.register_schema("bad-value", Schema('{"type": "record", "name": "R", "fields": [{"name": "a"}]}', "AVRO"))
    err = sr_error(excinfo)
    assert (err.http_status_code, err.error_code) == (422, 42201)
    assert "field 'a' has no 'type'" in err.error_message

    with pytest.raises(SchemaRegistryError) as excinfo:
        client.register_schema("bad-value", Schema('{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Unknown"}]}', "AVRO"))
    assert "unknown type name 'Unknown'" in sr_error(excinfo).error_message

    with pytest.raises(SchemaRegistryError) as excinfo:
        client.get_schema(4242)
    err = sr_error(excinfo)
    assert (err.http_status_code, err.error_code) == (404, 40403)

    subject = "orders.order_placed-value"
    client.register_schema(subject, Schema(placed, "AVRO"))
    with pytest.raises(SchemaRegistryError) as excinfo:
        client.lookup_schema(subject, Schema(avsc("orders.order_paid"), "AVRO"))
    assert sr_error(excinfo).error_code == 40403
    with pytest.raises(SchemaRegistryError) as excinfo:
        client.get_version(subject, 7)
    assert sr_error(excinfo).error_code == 40402

    # Associations are not kept: 404, so serializers fall back to <topic>-value.
    status, body = rest(
        registry.url, "GET", "/associations/resources/-/orders.order_placed?resourceType=topic&associationType=value"
    )
    assert status == 404 and body["error_code"] in (404, 40401)


def test_deletes(registry: Registry):
    client = registry.client()
    subject = "orders.order_cancelled-value"
    v1 = avsc("orders.order_cancelled")
    v2 = evolve(v1, add=[{"name": "note", "type": ["null", "string"], "default": None}])
    id1 = client.register_schema(subject, Schema(v1, "AVRO"))
    client.register_schema(subject, Schema(v2, "AVRO"))

    with pytest.raises(SchemaRegistryError) as excinfo:
        client.delete_subject(subject, permanent=True)
    assert sr_error(excinfo).error_code == 40405

    assert client.delete_version(subject, 2) == 2
    assert client.get_versions(subject) == [1]
    assert client.delete_subject(subject) == [1]
    assert subject not in client.get_subjects()
    assert subject in client.get_subjects(deleted=True)
    with pytest.raises(SchemaRegistryError) as excinfo:
        registry.client().get_latest_version(subject)
    assert sr_error(excinfo).error_code == 40401
    with pytest.raises(SchemaRegistryError) as excinfo:
        client.delete_subject(subject)
    assert sr_error(excinfo).error_code == 40404
    # Soft-deleted schemas stay readable by id (consumers still decode old records).
    assert json.loads(registry.client().get_schema(id1).schema_str) == json.loads(v1)

    assert sorted(client.delete_subject(subject, permanent=True)) == [1, 2]
    assert subject not in client.get_subjects(deleted=True)
    with pytest.raises(SchemaRegistryError) as excinfo:
        registry.client().get_schema(id1)
    assert sr_error(excinfo).error_code == 40403


def test_avro_serializer_round_trip(registry: Registry):
    """Confluent's serializer registers the schema, and frames records as magic byte 0,
    the 4-byte big-endian schema id, then the Avro binary body."""
    client = registry.client()
    topic = "orders.order_placed"
    placed = avsc(topic)
    # A second schema first, so that the id under test is not 1.
    client.register_schema("app.engagement-value", Schema(avsc("app.engagement"), "AVRO"))

    serializer = AvroSerializer(client, placed)
    ctx = SerializationContext(topic, MessageField.VALUE)
    record = {
        "event_id": "00000000000000ab",
        "event_type": "order_placed",
        "event_time": datetime(2026, 3, 1, 12, 30, 15, 123000, tzinfo=timezone.utc),
        "order_id": 42,
        "customer_id": None,
        "restaurant_id": 7,
        "channel": "kiosk",
        "items": [{"menu_item_id": 3, "name": "Fries", "quantity": 2, "unit_price": 2.5}],
        "total": 5.0,
        "offer_id": None,
    }
    data = serializer(record, ctx)

    latest = registry.client().get_latest_version(f"{topic}-value")
    assert latest.version == 1
    assert data[0] == 0, "magic byte"
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert schema_id == latest.schema_id and schema_id != 1

    # The body is plain Avro binary for the registered schema.
    parsed = fastavro.parse_schema(json.loads(registry.client().get_schema(schema_id).schema_str))
    assert fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed) == record

    # Confluent's deserializer, with a fresh client: looks the schema up by id.
    deserializer = AvroDeserializer(registry.client())
    assert deserializer(data, ctx) == record

    # A second serializer (another producer) reuses the registered id.
    again = AvroSerializer(registry.client(), placed)(record, ctx)
    assert again == data


def test_state_survives_restart(tmp_path: Path):
    reg = Registry(tmp_path / "registry").start()
    try:
        client = reg.client()
        id1 = client.register_schema("orders.order_ready-value", Schema(avsc("orders.order_ready"), "AVRO"))
        client.set_compatibility(subject_name="orders.order_ready-value", level="FULL")
    finally:
        assert reg.stop() == 0
    reg.start()
    try:
        client = reg.client()
        assert json.loads(client.get_schema(id1).schema_str) == json.loads(avsc("orders.order_ready"))
        assert client.get_compatibility("orders.order_ready-value") == "FULL"
        id2 = client.register_schema("orders.order_paid-value", Schema(avsc("orders.order_paid"), "AVRO"))
        assert id2 == id1 + 1, "ids continue after a restart"
    finally:
        assert reg.stop() == 0


def test_request_body_bound(registry: Registry):
    """A body over 16 MiB is refused with 413 as soon as its Content-Length is seen."""
    port = int(registry.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /subjects/big-value/versions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/vnd.schemaregistry.v1+json\r\n"
            + f"Content-Length: {17 * 1024 * 1024}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer
    assert json.loads(body)["error_code"] == 413
    # A large body within the bound is fine.
    doc = "x" * (1024 * 1024)
    schema = json.dumps({"type": "enum", "name": "E", "symbols": ["S"], "doc": doc})
    status, body = rest(registry.url, "POST", "/subjects/big-value/versions", {"schema": schema})
    assert (status, body) == (200, {"id": 1})
