"""The DynamoDB sink read back with boto3, the AWS SDK for Python (a client we did not
write): the mobile backend's access patterns on the table ``sql/order_status.sql``
describes.

One pipeline (parallelism 1, generator seed 7, unpaced) writes the same order-status
rows into a ``connector = 'dynamodb'`` table, keyed by ``order_id`` with two global
secondary indexes, and into a JSON-lines file. The file is the oracle: read in arrival
order, the last row of each order is what its item must be (an insert-only input is
applied by key, last change wins). Then, with boto3 only:

- ``GetItem`` of every order and a full ``Scan`` hold exactly the oracle's orders and
  values, typed as documented (integers ``N``, strings ``S``, timestamps as ISO 8601
  UTC strings with microseconds, NULL columns left out of the item, a numeric
  ``_version`` on each);
- ``by_customer`` (``customer_id``, ``status_time``) answers "my orders", oldest first
  by default and newest first with ``ScanIndexForward=False``, across pages;
- ``active_by_customer`` (``active_customer_id``, NULL once an order is final) is a
  sparse index: it answers "my active orders" and holds no final order;
- orders without a customer have no ``customer_id`` attribute and are in neither index.

The server is the one ``scripts/test`` starts (``scripts/dynamodb start``), its endpoint
in ``TRIBUTARY_TEST_DYNAMODB``; the AWS credentials and region come from the environment
(``scripts/test`` exports test values; any do for dynalite). The binary: ``TRIBUTARY_BIN``,
else ``TRIBUTARY_REGISTRY_BIN``, else ``$CARGO_TARGET_DIR/debug/tributary`` (default
target directory ``~/.cache/tributary/target``). Each run uses a table prefix of its own.

The generator's first 3,000 events hold no final order (lifecycles take minutes of
event time, the unpaced generator makes about 1,000 events per second of it), so the
pipeline reads 20,000: enough for cancelled orders with a customer, which the sparse
index must leave out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest

DEFAULT_BIN = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/tributary/target")) / "debug/tributary"
BIN = Path(os.environ.get("TRIBUTARY_BIN") or os.environ.get("TRIBUTARY_REGISTRY_BIN") or DEFAULT_BIN)

SEED = 7
COUNT = 20_000
FINAL = ("order_picked_up", "order_delivered", "order_cancelled")
FINAL_STATUSES = {"completed", "cancelled"}
COLUMNS = ("order_id", "customer_id", "restaurant_id", "status", "status_time", "active_customer_id")
NUMBERS = {"order_id", "customer_id", "restaurant_id", "active_customer_id"}
# What the sink writes for a timestamp: RFC 3339 in UTC with microseconds.
ISO_MICROS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

SQL = f"""
CREATE TABLE orders WITH (
    connector = 'generator', stream = 'orders', seed = '{SEED}', count = '{COUNT}', rate = '0'
);

CREATE TABLE order_status WITH (
    connector = 'dynamodb',
    table = 'order_status',
    partition_key = 'order_id',
    'index.by_customer' = 'customer_id, status_time',
    'index.active_by_customer' = 'active_customer_id, status_time'
);

CREATE TABLE order_status_file WITH (connector = 'file', path = 'out/status.jsonl');

CREATE VIEW status AS
SELECT
    order_id,
    customer_id,
    restaurant_id,
    CASE event_type
        WHEN 'order_placed' THEN 'received'
        WHEN 'order_paid' THEN 'paid'
        WHEN 'order_preparing' THEN 'preparing'
        WHEN 'order_ready' THEN 'ready_for_pickup'
        WHEN 'order_picked_up' THEN 'completed'
        WHEN 'order_delivered' THEN 'completed'
        WHEN 'order_cancelled' THEN 'cancelled'
        ELSE 'unknown'
    END AS status,
    event_time AS status_time,
    CASE WHEN event_type IN {FINAL!r} THEN NULL ELSE customer_id END AS active_customer_id
FROM orders;

INSERT INTO order_status SELECT * FROM status;
INSERT INTO order_status_file SELECT * FROM status;
"""


def aws_env() -> dict[str, str]:
    """The environment for the pipeline and boto3: test credentials and region unless
    set (dynalite wants a signed request but checks neither keys nor signatures)."""
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "tributary-test")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "tributary-test")
    env.setdefault("AWS_REGION", env.get("AWS_DEFAULT_REGION", "us-east-1"))
    env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    return env


@pytest.fixture(scope="module")
def endpoint() -> str:
    e = os.environ.get("TRIBUTARY_TEST_DYNAMODB")
    if not e:
        pytest.fail("no DynamoDB server: run scripts/test, or export "
                    "TRIBUTARY_TEST_DYNAMODB=\"$(scripts/dynamodb start | tail -n 1)\"")
    if not BIN.exists():
        pytest.fail(f"no tributary binary at {BIN}: build it (cargo build --bins) or set "
                    f"TRIBUTARY_BIN / TRIBUTARY_REGISTRY_BIN")
    return e


class Written:
    """What the pipeline wrote: the boto3 client, the table's name and the oracle."""

    def __init__(self, client, table: str, oracle: dict[int, dict]):
        self.client = client
        self.table = table
        # order_id -> the order's last row, as the item must hold it (NULLs left out).
        self.oracle = oracle

    def customers(self, column: str) -> dict[int, list[dict]]:
        """The oracle's orders by the value of ``column`` (orders without it left out)."""
        by: dict[int, list[dict]] = defaultdict(list)
        for row in self.oracle.values():
            if column in row:
                by[row[column]].append(row)
        return by

    def query(self, index: str, column: str, customer: int, **kwargs) -> list[dict]:
        """Every item of ``index`` whose ``column`` is ``customer``, page after page."""
        items = []
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table, IndexName=index,
            KeyConditionExpression=f"{column} = :c",
            ExpressionAttributeValues={":c": {"N": str(customer)}}, **kwargs)
        for page in pages:
            items.extend(page["Items"])
        return items

    def scan(self, **kwargs) -> list[dict]:
        items = []
        for page in self.client.get_paginator("scan").paginate(TableName=self.table, **kwargs):
            items.extend(page["Items"])
        return items


def iso_micros(rfc3339: str) -> str:
    """The file sink's timestamp (``2026-01-01T00:00:00.004+00:00``) as the DynamoDB
    sink writes it (``2026-01-01T00:00:00.004000Z``)."""
    t = datetime.fromisoformat(rfc3339).astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def oracle_of(out: Path) -> dict[int, dict]:
    """The last row per order of the file sink's output, in arrival order, NULL
    columns left out and timestamps in the DynamoDB sink's format."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files, f"the file sink wrote nothing under {out}"
    last: dict[int, dict] = {}
    file_of: dict[int, Path] = {}
    for f in files:
        for line in f.read_text().splitlines():
            row = json.loads(line)
            order = row["order_id"]
            # Arrival order is only defined within a file: one order, one file.
            assert file_of.setdefault(order, f) == f, f"order {order} in {file_of[order]} and {f}"
            last[order] = {k: (iso_micros(v) if k == "status_time" else v)
                           for k, v in row.items() if v is not None}
    return last


def attribute_values(row: dict) -> dict:
    """An oracle row as the DynamoDB attribute values its item must hold (without
    ``_version``)."""
    return {k: ({"N": str(v)} if k in NUMBERS else {"S": v}) for k, v in row.items()}


def without_version(item: dict) -> dict:
    return {k: v for k, v in item.items() if k != "_version"}


@pytest.fixture(scope="module")
def written(endpoint, tmp_path_factory) -> Written:
    tmp = tmp_path_factory.mktemp("dynamodb-boto3")
    env = aws_env()
    prefix = f"boto3_{os.getpid()}_{uuid.uuid4().hex[:10]}_"
    (tmp / "tributary.toml").write_text(
        f'[dynamodb]\nendpoint = "{endpoint}"\nregion = "{env["AWS_REGION"]}"\n'
        f'table_prefix = "{prefix}"\n')
    (tmp / "p.sql").write_text(SQL)
    (tmp / "p.yaml").write_text("name: order-status-boto3\nsql: p.sql\nparallelism: 1\n")
    done = subprocess.run([str(BIN), "run", "p.yaml", "--set", "admin.listen="],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    client = boto3.client(
        "dynamodb", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env.get("AWS_SESSION_TOKEN"))
    table = f"{prefix}order_status"
    yield Written(client, table, oracle_of(tmp / "out"))
    try:
        client.delete_table(TableName=table)
    except Exception:  # the server keeps tables in memory only: best effort
        pass


def test_the_table_has_the_declared_key_and_indexes(written):
    t = written.client.describe_table(TableName=written.table)["Table"]
    assert t["KeySchema"] == [{"AttributeName": "order_id", "KeyType": "HASH"}]
    types = {a["AttributeName"]: a["AttributeType"] for a in t["AttributeDefinitions"]}
    assert types == {"order_id": "N", "customer_id": "N", "active_customer_id": "N",
                     "status_time": "S"}
    indexes = {g["IndexName"]: g for g in t["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"by_customer", "active_by_customer"}
    for name, pk in (("by_customer", "customer_id"), ("active_by_customer", "active_customer_id")):
        assert indexes[name]["KeySchema"] == [{"AttributeName": pk, "KeyType": "HASH"},
                                              {"AttributeName": "status_time", "KeyType": "RANGE"}]
        assert indexes[name]["Projection"]["ProjectionType"] == "ALL"


def test_the_input_has_what_the_checks_need(written):
    """Guards the other tests against passing vacuously."""
    rows = written.oracle.values()
    assert len(written.oracle) > 5_000
    assert any("customer_id" not in r for r in rows), "no order without a customer"
    finals = [r for r in rows if r["status"] in FINAL_STATUSES and "customer_id" in r]
    assert len(finals) >= 10, "too few final orders with a customer for the sparse index"
    assert any(len(v) >= 3 for v in written.customers("customer_id").values())


def test_scan_holds_exactly_the_last_row_of_every_order(written):
    items = written.scan(ConsistentRead=True)
    by_id = {int(i["order_id"]["N"]): i for i in items}
    assert len(by_id) == len(items), "an order_id twice in a scan"
    assert set(by_id) == set(written.oracle)
    wrong = [(o, without_version(by_id[o]), attribute_values(row))
             for o, row in written.oracle.items()
             if without_version(by_id[o]) != attribute_values(row)]
    assert not wrong, f"{len(wrong)} items differ from the last row of their order, e.g. {wrong[:3]}"


def test_get_item_of_every_order_equals_its_last_row(written):
    def get(order: int) -> dict | None:
        return written.client.get_item(TableName=written.table, ConsistentRead=True,
                                       Key={"order_id": {"N": str(order)}}).get("Item")

    with ThreadPoolExecutor(8) as pool:
        got = dict(zip(written.oracle, pool.map(get, written.oracle)))
    missing = [o for o, item in got.items() if item is None]
    assert not missing, f"{len(missing)} orders have no item, e.g. {missing[:5]}"
    wrong = [(o, without_version(got[o]), attribute_values(row))
             for o, row in written.oracle.items()
             if without_version(got[o]) != attribute_values(row)]
    assert not wrong, f"{len(wrong)} items differ from the last row of their order, e.g. {wrong[:3]}"
    absent = written.client.get_item(TableName=written.table,
                                      Key={"order_id": {"N": str(max(written.oracle) + 1)}})
    assert "Item" not in absent


def test_every_item_is_typed_as_documented(written):
    for item in written.scan():
        assert set(item["_version"]) == {"N"}, item
        assert int(item["_version"]["N"]) > 0, item  # an integer, not a float
        assert ISO_MICROS.match(item["status_time"]["S"]), item
        for k, v in item.items():
            assert set(v) == ({"N"} if k in NUMBERS | {"_version"} else {"S"}), item
        assert set(item) <= set(COLUMNS) | {"_version"}, item


def test_orders_without_a_customer_have_no_customer_attribute_and_no_index_entry(written):
    anonymous = {o for o, r in written.oracle.items() if "customer_id" not in r}
    items = {int(i["order_id"]["N"]): i for i in written.scan()}
    for o in anonymous:
        assert "customer_id" not in items[o] and "active_customer_id" not in items[o], items[o]
    for index, column in (("by_customer", "customer_id"),
                          ("active_by_customer", "active_customer_id")):
        indexed = [int(i["order_id"]["N"]) for i in written.scan(IndexName=index)]
        assert len(indexed) == len(set(indexed))
        assert set(indexed) == {o for o, r in written.oracle.items() if column in r}, index
        assert not set(indexed) & anonymous


def picked_customers(written: Written) -> list[int]:
    """The customers with the most orders, and ones with final and active orders both."""
    by = written.customers("customer_id")
    busiest = sorted(by, key=lambda c: (-len(by[c]), c))[:5]
    mixed = sorted(c for c, rows in by.items()
                   if any(r["status"] in FINAL_STATUSES for r in rows)
                   and any(r["status"] not in FINAL_STATUSES for r in rows))
    only_final = sorted(c for c, rows in by.items()
                        if all(r["status"] in FINAL_STATUSES for r in rows))
    assert only_final, "no customer whose orders are all final"
    return busiest + mixed[:5] + only_final[:3]


def expected(rows: list[dict]) -> list[tuple[str, int]]:
    return sorted((r["status_time"], r["order_id"]) for r in rows)


def keys(items: list[dict]) -> list[tuple[str, int]]:
    return [(i["status_time"]["S"], int(i["order_id"]["N"])) for i in items]


def test_by_customer_answers_a_customers_orders_in_time_order(written):
    by = written.customers("customer_id")
    for customer in picked_customers(written):
        items = written.query("by_customer", "customer_id", customer)
        got = keys(items)
        # Sorted by the index's sort key; orders of one instant may come in any order.
        assert [t for t, _ in got] == sorted(t for t, _ in got), (customer, got)
        assert sorted(got) == expected(by[customer]), customer
        for item in items:  # projection ALL: the whole item
            assert without_version(item) == attribute_values(written.oracle[int(item["order_id"]["N"])])
        newest_first = keys(written.query("by_customer", "customer_id", customer,
                                          ScanIndexForward=False))
        assert [t for t, _ in newest_first] == sorted((t for t, _ in got), reverse=True)
        assert sorted(newest_first) == sorted(got)
        # One order per page: the pages' LastEvaluatedKey carries on through the index.
        paged = keys(written.query("by_customer", "customer_id", customer, Limit=1))
        assert sorted(paged) == sorted(got) and len(paged) == len(got)
    assert written.query("by_customer", "customer_id", -1) == []


def test_active_by_customer_is_sparse_and_answers_only_active_orders(written):
    by = written.customers("customer_id")
    picked = picked_customers(written)
    for customer in picked:
        items = written.query("active_by_customer", "active_customer_id", customer)
        got = keys(items)
        assert [t for t, _ in got] == sorted(t for t, _ in got), (customer, got)
        active = [r for r in by[customer] if r["status"] not in FINAL_STATUSES]
        assert sorted(got) == expected(active), customer
        assert all(i["status"]["S"] not in FINAL_STATUSES for i in items)
        assert all(i["active_customer_id"] == i["customer_id"] for i in items)
    # Customers whose orders are all final have nothing in the index.
    assert any(written.query("active_by_customer", "active_customer_id", c) == []
               for c in picked if all(r["status"] in FINAL_STATUSES for r in by[c]))
    # And the whole index: exactly the orders not final (with a customer).
    indexed = {int(i["order_id"]["N"]): i for i in written.scan(IndexName="active_by_customer")}
    assert set(indexed) == {o for o, r in written.oracle.items()
                            if "customer_id" in r and r["status"] not in FINAL_STATUSES}
    finals = {o for o, r in written.oracle.items() if r["status"] in FINAL_STATUSES}
    assert finals and not set(indexed) & finals
    items = {int(i["order_id"]["N"]): i for i in written.scan()}
    for o in finals:  # the final orders' items have no active_customer_id at all
        assert "active_customer_id" not in items[o], items[o]
