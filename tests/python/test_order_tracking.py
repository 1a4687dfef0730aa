"""Order tracking (pipelines/order_status.yaml's Rust operators) against an oracle.

``tributary generate`` writes the exact input (out of order, with duplicates); the test
adds impossible transitions and malformed lines. The pipeline reads that file through
the reference pipeline's operators; this file recomputes, in plain Python, every
status row, ETA and SLA alert from the same lines, and the two must be equal. The
impossible transitions and malformed lines must be dead letters, not results.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from kafka_kit import BIN

SEED = 7
COUNT = 12000
WINDOW_MS = 30 * 60 * 1000
SLA_MS = 6 * 60 * 1000
STEPS = ["order_placed", "order_paid", "order_preparing", "order_ready",
         "order_picked_up", "order_delivered", "order_cancelled"]
STATUS = {s: s.removeprefix("order_") for s in STEPS}
FINAL = {"order_picked_up", "order_delivered", "order_cancelled"}
FOLLOWS = {
    None: {"order_placed"},
    "order_placed": {"order_paid", "order_cancelled"},
    "order_paid": {"order_preparing", "order_cancelled"},
    "order_preparing": {"order_ready", "order_cancelled"},
    "order_ready": {"order_picked_up", "order_delivered"},
}

SQL = """
CREATE TABLE orders (event_id VARCHAR, event_type VARCHAR, event_time TIMESTAMP, order_id BIGINT,
                     customer_id BIGINT, restaurant_id BIGINT, channel VARCHAR, cancel_reason VARCHAR,
                     estimated_ready_time TIMESTAMP)
WITH (connector = 'file', path = 'orders.jsonl', format = 'json',
      event_time_field = 'event_time', watermark_delay = '3s');
CREATE TABLE restaurants WITH (connector = 'generator', stream = 'restaurants', lookup = 'true');
CREATE VIEW order_events AS
SELECT o.event_id, o.event_type, o.event_time, o.order_id, o.customer_id, o.restaurant_id,
       r.name AS restaurant_name, r.time_zone, o.channel, o.cancel_reason, o.estimated_ready_time
FROM orders o LEFT JOIN restaurants r ON o.restaurant_id = r.restaurant_id;
CREATE TABLE status WITH (connector = 'file', path = 'out/status.jsonl');
CREATE TABLE alerts WITH (connector = 'file', path = 'out/alerts.jsonl');
INSERT INTO status SELECT * FROM order_tracking;
INSERT INTO alerts SELECT * FROM order_tracking_sla_alerts;
"""

PIPELINE = """
name: tracking
sql: p.sql
parallelism: 2
errors: { policy: dead-letter }
operators:
  - { name: order_prep, function: rolling_prep_time, input: order_events, key: restaurant_id,
      options: { window: 30m } }
  - { name: order_tracking, function: order_tracking, input: order_prep, key: order_id,
      options: { sla: 6m, retain: 1h } }
"""


def ms(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def rank(e):
    return (e["at"], STEPS.index(e["event_type"]) if e["event_type"] in STEPS else -1, e["event_id"])


def prep_times(events):
    """Each event with its restaurant's rolling preparation time (rolling_prep_time)."""
    by_restaurant = defaultdict(list)
    for e in events:
        by_restaurant[e.get("restaurant_id")].append(e)
    out = []
    for evs in by_restaurant.values():
        preparing, done = {}, []
        for e in sorted(evs, key=rank):
            kind, order = e["event_type"], e["order_id"]
            if kind == "order_preparing":
                preparing.setdefault(order, e["at"])
            elif kind == "order_ready":
                if order in preparing:
                    done.append((e["at"], (e["at"] - preparing.pop(order)) / 1000.0))
            elif kind in FINAL:
                preparing.pop(order, None)
            done = [d for d in done if d[0] > e["at"] - WINDOW_MS]
            preparing = {o: t for o, t in preparing.items() if t > e["at"] - 6 * 3600 * 1000}
            avg = None
            if done:
                total = 0.0
                for _, s in done:
                    total += s
                avg = total / len(done)
            out.append({**e, "avg_prep_seconds": avg})
    return out


def track(events, restaurants):
    """Status rows, alerts and refused events (order_tracking)."""
    by_order = defaultdict(list)
    for e in events:
        by_order[e["order_id"]].append(e)
    rows, alerts, refused = [], [], []
    for order, evs in by_order.items():
        evs = sorted(evs, key=rank)
        step, times, applied, last, sla_due = None, {}, set(), None, None
        for e in evs:
            if e["event_id"] in applied:
                continue
            kind = e["event_type"]
            if kind not in FOLLOWS.get(step, set()):
                refused.append(e)
                continue
            applied.add(e["event_id"])
            step = kind
            times[kind] = e["at"]
            merged = dict(e)
            if last:
                for k in ("customer_id", "restaurant_id", "channel", "estimated_ready", "avg_prep_seconds"):
                    if merged.get(k) is None:
                        merged[k] = last.get(k)
            last = merged
            if kind == "order_paid":
                sla_due = e["at"] + SLA_MS
            ready = times.get("order_ready")
            if ready is not None:
                eta = ready
            else:
                base = times.get("order_preparing") or times.get("order_paid") or times.get("order_placed")
                avg = last.get("avg_prep_seconds")
                eta = base + math.floor(avg * 1000 + 0.5) if avg is not None else last.get("estimated_ready")
            r = restaurants.get(last.get("restaurant_id"), {})
            rows.append({
                "order_id": order, "customer_id": last.get("customer_id"),
                "restaurant_id": last.get("restaurant_id"), "restaurant_name": r.get("name"),
                "time_zone": r.get("time_zone"), "channel": last.get("channel"),
                "status": STATUS[kind], "event_time": e["at"],
                "placed_at": times.get("order_placed"), "paid_at": times.get("order_paid"),
                "preparing_at": times.get("order_preparing"), "ready_at": times.get("order_ready"),
                "completed_at": times.get("order_picked_up") or times.get("order_delivered"),
                "cancelled_at": times.get("order_cancelled"),
                "cancel_reason": e.get("cancel_reason") if kind == "order_cancelled" else None,
                "eta": eta, "avg_prep_seconds": last.get("avg_prep_seconds"),
                "is_final": kind in FINAL, "event_id": e["event_id"],
            })
        if sla_due is not None:
            # The state once every event up to the deadline is applied.
            at_due = None
            for e in evs:
                if e["at"] <= sla_due and e["event_id"] in applied:
                    at_due = e["event_type"]
            if at_due in ("order_paid", "order_preparing"):
                alerts.append((order, STATUS[at_due], times["order_paid"], sla_due))
    return rows, alerts, refused


def generated_restaurants() -> dict:
    """The generator's restaurants (the default seed, as the pipelines' lookup reads
    them), by id."""
    ref = subprocess.run([str(BIN), "generate", "--stream", "restaurants", "--count", "100000"],
                         capture_output=True, text=True, check=True, timeout=60)
    rows = (json.loads(line) for line in ref.stdout.splitlines())
    return {r["restaurant_id"]: r for r in rows}


def test_order_tracking_equals_the_oracle(tmp_path: Path):
    out = subprocess.run(
        [str(BIN), "generate", "--stream", "orders", "--seed", str(SEED), "--count", str(COUNT),
         "--option", "rate=20", "--option", "warmup=2h", "--option", "out_of_order=2s",
         "--option", "duplicate_fraction=0.02", "--option", "impossible_fraction=0.03"],
        capture_output=True, text=True, check=True, timeout=120)
    lines = out.stdout.splitlines()
    # Impossible transitions: a ready right after every 97th placement, a payment for an
    # order never placed; and malformed lines.
    written, injected, garbage = [], 0, 0
    for i, line in enumerate(lines):
        written.append(line)
        e = json.loads(line)
        if e["event_type"] == "order_placed" and i % 97 == 0:
            bad = {"event_id": f"bad-ready-{i}", "event_type": "order_ready",
                   "event_time": ms(e["event_time"]) + 1, "order_id": e["order_id"],
                   "restaurant_id": e["restaurant_id"], "channel": e["channel"]}
            written.append(json.dumps(bad))
            injected += 1
        if i % 1000 == 500:
            written.append(json.dumps({**e, "event_id": f"bad-paid-{i}", "event_type": "order_paid",
                                       "order_id": 10_000_000 + i}))
            injected += 1
        if i % 1500 == 700:
            written.append("{not json")
            garbage += 1
    (tmp_path / "orders.jsonl").write_text("\n".join(written) + "\n")
    (tmp_path / "p.sql").write_text(SQL)
    (tmp_path / "p.yaml").write_text(PIPELINE)
    run = subprocess.run([str(BIN), "run", "p.yaml", "--set", "admin.listen=127.0.0.1:0",
                          "--set", "log.format=json", "--progress", "off"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    restaurants = generated_restaurants()
    events = []
    for line in written:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        e["at"] = ms(e["event_time"])
        e["estimated_ready"] = ms(e.get("estimated_ready_time"))
        events.append(e)
    rows, alerts, refused = track(prep_times(events), restaurants)

    def read(name):
        got = []
        for f in sorted((tmp_path / "out").glob(f"{name}*.jsonl")):
            got += [json.loads(l) for l in f.read_text().splitlines()]
        return got

    got = read("status")
    for r in got:
        for k in ("event_time", "placed_at", "paid_at", "preparing_at", "ready_at", "completed_at",
                  "cancelled_at", "eta"):
            r[k] = ms(r[k])
    key = lambda r: (r["order_id"], r["event_time"], r["status"])
    assert len(got) == len(rows)
    mismatched = [(g, w) for g, w in zip(sorted(got, key=key), sorted(rows, key=key)) if g != w]
    assert not mismatched, mismatched[:3]
    statuses = {r["status"] for r in got}
    assert {"placed", "paid", "preparing", "ready", "picked_up", "cancelled"} <= statuses, statuses
    assert sum(r["eta"] is not None for r in got) > len(got) // 2

    got_alerts = sorted((a["order_id"], a["status"], ms(a["paid_at"]), ms(a["event_time"]))
                        for a in read("alerts"))
    assert got_alerts == sorted(alerts)
    assert len(alerts) > 10

    listed = subprocess.run([str(BIN), "dlq", "list", "--format", "json", "--limit", "10000"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(l) for l in listed.stdout.splitlines()]
    rejected = [l for l in letters if l["failure_class"] == "rejected"]
    assert all("impossible transition" in l["message"] for l in rejected), rejected[:2]
    assert len(rejected) == len(refused) and len(refused) >= injected, (len(rejected), len(refused), injected)
    # The generator's own impossible transitions (impossible_fraction) are among them.
    assert sum(not str(e["event_id"]).startswith("bad-") for e in refused) > 10
    assert sum(l["failure_class"] == "malformed" for l in letters) == garbage
