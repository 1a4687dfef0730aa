"""The Arrow Flight SQL endpoint (``tributary query --serve``) through a driver we did not
write: the ADBC Flight SQL driver (``adbc-driver-flightsql``), as notebooks use it.

A pipeline (generator with a fixed seed and count → Parquet partitioned by date and
hour, and a JSON-lines sink of parallelism 2) runs to the end; the endpoint serves its
outputs; an aggregate through ADBC is compared with pyarrow.parquet over the same
directory and with pure Python over the JSON lines; ``adbc_get_objects()`` lists the
tables; a token, when configured, is required; SIGTERM stops the server with exit 0.

The binary: ``TRIBUTARY_REGISTRY_BIN`` or ``TRIBUTARY_BIN``, else
``$CARGO_TARGET_DIR/debug/tributary`` (default target ``~/.cache/tributary/target``).

    PY="$(bash scripts/pyenv | tail -n 1)"
    TRIBUTARY_REGISTRY_BIN=$CARGO_TARGET_DIR/debug/tributary "$PY" -m pytest -q tests/python/test_flight_sql.py
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/tributary/target"))
BIN = Path(os.environ.get("TRIBUTARY_REGISTRY_BIN") or os.environ.get("TRIBUTARY_BIN")
           or TARGET / "debug/tributary")

PIPELINE = """name: sales
sql: |
  CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', seed = '9',
    count = '2500', rate = '0', start_time = '2026-01-01T23:59:59Z');
  CREATE TABLE sales WITH (connector = 'parquet', path = 'out/sales', partition_by = 'date,hour');
  CREATE TABLE placed WITH (connector = 'file', path = 'out/placed.jsonl', parallelism = '2');
  INSERT INTO sales SELECT order_id, event_type, total,
    to_char(event_time, '%Y-%m-%d') AS date, to_char(event_time, '%H') AS hour FROM orders;
  INSERT INTO placed SELECT order_id, channel, total FROM orders WHERE event_type = 'order_placed';
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("TRIBUTARY__") and k not in ("TRIBUTARY_CONFIG", "TRIBUTARY_LOG")}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """A directory where the pipeline ran to the end."""
    assert BIN.exists(), f"{BIN} not built (cargo build)"
    d = tmp_path_factory.mktemp("flight_sql")
    (d / "pipelines").mkdir()
    (d / "pipelines/sales.yaml").write_text(PIPELINE)
    done = subprocess.run([str(BIN), "run", "--set", "admin.listen=127.0.0.1:0"], cwd=d,
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (d / "out/placed-0.jsonl").exists() and (d / "out/placed-1.jsonl").exists()
    return d


class Server:
    """``tributary query --serve`` on a free port, in ``directory``."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN), "query", "--serve", "--listen", "127.0.0.1:0", *extra], cwd=directory,
            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in self.proc.stdout:
                lines.put(line)
            lines.put("")  # stdout closed: the process ended

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            line = ""
        if not line.startswith("grpc://"):
            self.proc.kill()
            raise AssertionError(f"the server printed no address ({line!r}): "
                                 + self.proc.stderr.read())
        self.uri = line.strip()

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_queries_through_adbc_match_pyarrow_and_python(outputs: Path) -> None:
    server = Server(outputs)
    try:
        with flightsql.connect(server.uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT date, hour, count(*) AS n, sum(total) AS total FROM sales "
                        "GROUP BY date, hour ORDER BY date, hour")
            got = cur.fetch_arrow_table().to_pylist()

            # pyarrow over the same directory (partitions as strings, hidden files skipped).
            part = ds.partitioning(pa.schema([("date", pa.string()), ("hour", pa.string())]),
                                   flavor="hive")
            table = ds.dataset(outputs / "out/sales", format="parquet", partitioning=part).to_table()
            want = (table.group_by(["date", "hour"])
                    .aggregate([("order_id", "count"), ("total", "sum")])
                    .sort_by([("date", "ascending"), ("hour", "ascending")]).to_pylist())
            assert len(got) == len(want) >= 2, (got, want)
            for g, w in zip(got, want):
                assert (g["date"], g["hour"], g["n"]) == (w["date"], w["hour"], w["order_id_count"])
                assert abs(g["total"] - w["total_sum"]) < 1e-6, (g, w)

            # Pure Python over the JSON-lines sink's two files.
            rows = [json.loads(line) for p in sorted((outputs / "out").glob("placed-*.jsonl"))
                    for line in p.read_text().splitlines() if line]
            cur.execute("SELECT count(*) AS n, sum(total) AS total FROM placed")
            (n, total), = cur.fetchall()
            assert n == len(rows) > 100
            assert abs(total - sum(r.get("total") or 0 for r in rows)) < 1e-6

            # A refused query is an error, and the connection goes on.
            with pytest.raises(Exception, match="QRY001"):
                cur.execute("SELECT nope FROM sales")
                cur.fetchall()

            objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            tables = {t["table_name"] for c in objects for s in c["catalog_db_schemas"] or []
                      for t in s["db_schema_tables"] or []}
            assert {"sales", "placed"} <= tables, objects
            columns = conn.adbc_get_table_schema("sales")
            assert {"order_id", "total", "date", "hour"} <= set(columns.names), columns
    finally:
        code = server.stop()
    assert code == 0, server.proc.stderr.read()


def test_a_configured_token_is_required(outputs: Path) -> None:
    server = Server(outputs, "--set", "query.token=s3cret")
    try:
        with pytest.raises(Exception, match="(?i)unauthenticated|token"):
            with flightsql.connect(server.uri, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        kwargs = {"adbc.flight.sql.authorization_header": "Bearer s3cret"}
        with flightsql.connect(server.uri, db_kwargs=kwargs, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM sales")
            assert cur.fetchall()[0][0] > 0
    finally:
        code = server.stop()
    assert code == 0, server.proc.stderr.read()
