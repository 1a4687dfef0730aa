//! Nexmark q0–q22 as Flink's suite (nexmark-flink) writes them, in this dialect: every
//! query is planned; those that run are run in one pipeline over the built-in Nexmark
//! generator (a fixed seed, 20,000 events) and each one's output is compared with an
//! independent oracle, DataFusion batch SQL over the same events written by
//! `tributary generate` (windows as `date_bin` arithmetic, sessions with `lag`);
//! those refused are refused with the reason docs/benchmarks.md lists.
//!
//! Unpaced, the generator's event time advances 10 µs per event, so 20,000 events
//! span 0.2 s: the queries run (and their oracles) with their intervals read in
//! milliseconds instead of seconds (`INTERVAL '10' SECOND` → 10 ms).

use std::path::Path;
use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::common::*;

const EVENTS: &str = "20000";
const SEED: &str = "5";

/// What the suite expects of a query.
enum Expect {
    /// It runs; its output equals `oracle` (batch SQL over `bids`, `auctions`,
    /// `persons`, `side_input`), at least `min_rows` rows.
    Runs {
        oracle: &'static str,
        min_rows: usize,
    },
    /// It runs and writes a changelog, which applied equals `oracle`.
    Changelog {
        oracle: &'static str,
        min_rows: usize,
    },
    /// Refused with `code`, the message holding each of `says`.
    Refused {
        code: &'static str,
        says: &'static [&'static str],
    },
}

struct Query {
    name: &'static str,
    sql: &'static str,
    expect: Expect,
}

const QUERIES: &[Query] = &[
    Query {
        name: "q0",
        sql: "SELECT auction, bidder, price, date_time, extra FROM bids",
        expect: Expect::Runs {
            oracle: "SELECT auction, bidder, price, date_time, extra FROM bids",
            min_rows: 15000,
        },
    },
    Query {
        name: "q1",
        sql: "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bids",
        expect: Expect::Runs {
            oracle: "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bids",
            min_rows: 15000,
        },
    },
    Query {
        name: "q2",
        sql: "SELECT auction, price FROM bids WHERE auction % 123 = 0",
        expect: Expect::Runs {
            oracle: "SELECT auction, price FROM bids WHERE auction % 123 = 0",
            min_rows: 10,
        },
    },
    Query {
        name: "q3",
        sql: "SELECT P.name, P.city, P.state, A.id FROM auctions AS A \
              INNER JOIN persons AS P ON A.seller = P.id \
              WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
        expect: Expect::Refused {
            code: "SQL002",
            says: &["a join between two streams needs its time bounded on both ends"],
        },
    },
    Query {
        name: "q4",
        sql: "SELECT Q.category, AVG(Q.final) AS avg_final FROM \
              (SELECT MAX(B.price) AS final, A.category FROM auctions A, bids B \
               WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires \
               GROUP BY A.id, A.category) Q \
              GROUP BY Q.category",
        expect: Expect::Refused {
            code: "SQL002",
            says: &["compares more than one pair of time columns", "expires"],
        },
    },
    Query {
        name: "q5",
        sql: tributary::connectors::generator::Q5_HOT_ITEMS,
        expect: Expect::Runs {
            oracle: "WITH w AS (SELECT auction, date_bin(INTERVAL '2' SECOND, date_time) - k.d AS starttime \
                     FROM bids CROSS JOIN (VALUES (INTERVAL '0' SECOND), (INTERVAL '2' SECOND), \
                       (INTERVAL '4' SECOND), (INTERVAL '6' SECOND), (INTERVAL '8' SECOND)) AS k(d)), \
                     c AS (SELECT auction, starttime, count(*) AS num FROM w GROUP BY auction, starttime), \
                     m AS (SELECT starttime, max(num) AS maxn FROM c GROUP BY starttime) \
                     SELECT c.auction, c.num FROM c JOIN m ON c.starttime = m.starttime AND c.num >= m.maxn",
            min_rows: 20,
        },
    },
    Query {
        name: "q6",
        sql: "SELECT Q.seller, AVG(Q.final) OVER \
              (PARTITION BY Q.seller ORDER BY Q.date_time ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg_final \
              FROM (SELECT MAX(B.price) AS final, A.seller, MAX(B.date_time) AS date_time \
                    FROM auctions AS A, bids AS B \
                    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires \
                    GROUP BY A.id, A.seller) AS Q",
        expect: Expect::Refused {
            code: "SQL003",
            says: &["OVER (…) supports ROW_NUMBER()"],
        },
    },
    Query {
        name: "q7",
        sql: tributary::connectors::generator::Q7_HIGHEST_BID,
        expect: Expect::Runs {
            oracle: "WITH m AS (SELECT date_bin(INTERVAL '10' SECOND, date_time) + INTERVAL '10' SECOND AS date_time, \
                     max(price) AS maxprice FROM bids GROUP BY 1) \
                     SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bids B JOIN m B1 \
                     ON B.price = B1.maxprice \
                     WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time",
            min_rows: 10,
        },
    },
    Query {
        name: "q8",
        sql: "SELECT P.id, P.name, P.starttime FROM \
              (SELECT id, name, w.start AS starttime, w['end'] AS endtime FROM \
               (SELECT tumble(INTERVAL '10' SECOND) AS w, id, name FROM persons GROUP BY w, id, name)) P \
              JOIN \
              (SELECT seller, w.start AS starttime, w['end'] AS endtime FROM \
               (SELECT tumble(INTERVAL '10' SECOND) AS w, seller FROM auctions GROUP BY w, seller)) A \
              ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime",
        expect: Expect::Runs {
            oracle: "WITH P AS (SELECT DISTINCT id, name, date_bin(INTERVAL '10' SECOND, date_time) AS starttime FROM persons), \
                     A AS (SELECT DISTINCT seller, date_bin(INTERVAL '10' SECOND, date_time) AS starttime FROM auctions) \
                     SELECT P.id, P.name, P.starttime FROM P JOIN A ON P.id = A.seller AND P.starttime = A.starttime",
            min_rows: 10,
        },
    },
    Query {
        name: "q9",
        sql: "SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra, \
              auction, bidder, price, bid_date_time, bid_extra FROM \
              (SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra, \
                ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum \
               FROM auctions A, bids B \
               WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires) \
              WHERE rownum <= 1",
        expect: Expect::Refused {
            code: "SQL003",
            says: &[
                "ROW_NUMBER() on a stream ranks rows by event time",
                "a changelog",
            ],
        },
    },
    Query {
        name: "q10",
        sql: "SELECT auction, bidder, price, date_time, extra, to_char(date_time, '%Y-%m-%d') AS dt, \
              to_char(date_time, '%H:%M') AS hm FROM bids",
        expect: Expect::Runs {
            oracle: "SELECT auction, bidder, price, date_time, extra, to_char(date_time, '%Y-%m-%d') AS dt, \
                     to_char(date_time, '%H:%M') AS hm FROM bids",
            min_rows: 15000,
        },
    },
    Query {
        name: "q11",
        sql: "SELECT bidder, bid_count, w.start AS starttime, w['end'] AS endtime FROM \
              (SELECT session(INTERVAL '10' SECOND) AS w, bidder, count(*) AS bid_count FROM bids GROUP BY w, bidder)",
        expect: Expect::Runs {
            // A new session where the gap to the bidder's previous bid is 10 ms or more.
            oracle: "WITH o AS (SELECT bidder, date_time, CASE WHEN \
                       lag(CAST(date_time AS BIGINT)) OVER (PARTITION BY bidder ORDER BY date_time) IS NULL \
                       OR CAST(date_time AS BIGINT) - lag(CAST(date_time AS BIGINT)) OVER (PARTITION BY bidder ORDER BY date_time) >= 10 \
                       THEN 1 ELSE 0 END AS new FROM bids), \
                     s AS (SELECT bidder, date_time, sum(new) OVER (PARTITION BY bidder ORDER BY date_time \
                       ROWS UNBOUNDED PRECEDING) AS sid FROM o) \
                     SELECT bidder, count(*) AS bid_count, min(date_time) AS starttime, \
                     max(date_time) + INTERVAL '10' SECOND AS endtime FROM s GROUP BY bidder, sid",
            min_rows: 100,
        },
    },
    Query {
        name: "q12",
        sql: "SELECT bidder, bid_count, w.start AS starttime, w['end'] AS endtime FROM \
              (SELECT tumble(INTERVAL '10' SECOND, p_time) AS w, bidder, count(*) AS bid_count \
               FROM bids_p GROUP BY w, bidder)",
        // Windows of processing time: which window a bid falls in depends on when it
        // arrived, so only each bidder's total is compared (see `q12_totals`).
        expect: Expect::Runs {
            oracle: "",
            min_rows: 0,
        },
    },
    Query {
        name: "q13",
        sql: "SELECT B.auction, B.bidder, B.price, B.date_time, S.value FROM bids B \
              JOIN side_input S ON B.auction % 10000 = S.key",
        expect: Expect::Runs {
            oracle: "SELECT B.auction, B.bidder, B.price, B.date_time, S.value FROM bids B \
                     JOIN side_input S ON B.auction % 10000 = S.key",
            min_rows: 15000,
        },
    },
    Query {
        name: "q14",
        sql: "SELECT auction, bidder, 0.908 * price AS price, \
              CASE WHEN extract(hour FROM date_time) >= 8 AND extract(hour FROM date_time) <= 18 THEN 'dayTime' \
                   WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime' \
                   ELSE 'otherTime' END AS bid_time_type, \
              date_time, extra, length(extra) - length(replace(extra, 'c', '')) AS c_counts \
              FROM bids WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
        expect: Expect::Runs {
            oracle: "SELECT auction, bidder, 0.908 * price AS price, \
              CASE WHEN extract(hour FROM date_time) >= 8 AND extract(hour FROM date_time) <= 18 THEN 'dayTime' \
                   WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime' \
                   ELSE 'otherTime' END AS bid_time_type, \
              date_time, extra, length(extra) - length(replace(extra, 'c', '')) AS c_counts \
              FROM bids WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
            min_rows: 1000,
        },
    },
    Query {
        name: "q15",
        sql: Q15,
        expect: Expect::Changelog {
            oracle: Q15,
            min_rows: 1,
        },
    },
    Query {
        name: "q16",
        sql: Q16,
        expect: Expect::Changelog {
            oracle: Q16,
            min_rows: 2,
        },
    },
    Query {
        name: "q17",
        sql: Q17,
        expect: Expect::Changelog {
            oracle: Q17,
            min_rows: 500,
        },
    },
    Query {
        name: "q18",
        sql: "SELECT auction, bidder, price, channel, url, date_time, extra FROM \
              (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number \
               FROM bids) WHERE rank_number <= 1",
        expect: Expect::Refused {
            code: "SQL003",
            says: &[
                "ROW_NUMBER() on a stream ranks rows by event time",
                "a changelog",
            ],
        },
    },
    Query {
        name: "q19",
        sql: "SELECT * FROM \
              (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bids) \
              WHERE rank_number <= 10",
        expect: Expect::Refused {
            code: "SQL003",
            says: &[
                "ROW_NUMBER() on a stream ranks rows by event time",
                "a changelog",
            ],
        },
    },
    Query {
        name: "q20",
        sql: "SELECT auction, bidder, price, channel, url, B.date_time, B.extra, item_name, description, \
              initial_bid, reserve, A.date_time AS auction_date_time, expires, seller, category, \
              A.extra AS auction_extra \
              FROM bids AS B INNER JOIN auctions AS A ON B.auction = A.id WHERE A.category = 10",
        expect: Expect::Refused {
            code: "SQL002",
            says: &["a join between two streams needs its time bounded on both ends"],
        },
    },
    Query {
        name: "q21",
        sql: Q21,
        expect: Expect::Runs {
            oracle: Q21,
            min_rows: 1000,
        },
    },
    Query {
        name: "q22",
        sql: "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1, \
              split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3 FROM bids",
        expect: Expect::Runs {
            oracle: "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1, \
                     split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3 FROM bids",
            min_rows: 15000,
        },
    },
];

const Q15: &str = "SELECT to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, \
    count(*) FILTER (WHERE price < 10000) AS rank1_bids, \
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, \
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, \
    count(DISTINCT bidder) AS total_bidders, \
    count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders, \
    count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders, \
    count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders, \
    count(DISTINCT auction) AS total_auctions, \
    count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions, \
    count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions, \
    count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions \
    FROM bids GROUP BY to_char(date_time, '%Y-%m-%d')";

const Q16: &str = "SELECT channel, to_char(date_time, '%Y-%m-%d') AS day, \
    max(to_char(date_time, '%H:%M')) AS minute, count(*) AS total_bids, \
    count(*) FILTER (WHERE price < 10000) AS rank1_bids, \
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, \
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, \
    count(DISTINCT bidder) AS total_bidders, \
    count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders, \
    count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders, \
    count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders, \
    count(DISTINCT auction) AS total_auctions, \
    count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions, \
    count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions, \
    count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions \
    FROM bids GROUP BY channel, to_char(date_time, '%Y-%m-%d')";

const Q17: &str = "SELECT auction, to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, \
    count(*) FILTER (WHERE price < 10000) AS rank1_bids, \
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, \
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, \
    min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price \
    FROM bids GROUP BY auction, to_char(date_time, '%Y-%m-%d')";

const Q21: &str = "SELECT auction, bidder, price, channel, \
    CASE WHEN lower(channel) = 'apple' THEN '0' WHEN lower(channel) = 'google' THEN '1' \
         WHEN lower(channel) = 'facebook' THEN '2' WHEN lower(channel) = 'baidu' THEN '3' \
         ELSE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] END AS channel_id \
    FROM bids WHERE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] IS NOT NULL \
    OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')";

/// Beyond Nexmark: what users write with several stateful operations — a
/// deduplication then a window, a join then a window, a window over another grouped by
/// its window column itself — and outer and anti joins of streams.
const EXTRA: &[Query] = &[
    Query {
        name: "window_by_its_window",
        sql: "SELECT w.start AS starttime, count(*) AS auctions, max(n) AS maxn FROM \
              (SELECT tumble(INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM bids GROUP BY w, auction) \
              GROUP BY w",
        expect: Expect::Runs {
            oracle: "SELECT starttime, count(*) AS auctions, max(n) AS maxn FROM \
                     (SELECT date_bin(INTERVAL '10' SECOND, date_time) AS starttime, auction, count(*) AS n \
                      FROM bids GROUP BY 1, 2) GROUP BY starttime",
            min_rows: 10,
        },
    },
    Query {
        name: "full_outer_window_join",
        sql: "SELECT a.w.start AS opened_in, b.w.start AS bid_in, a.id, b.auction, b.n FROM \
              (SELECT tumble(INTERVAL '10' SECOND) AS w, id FROM auctions GROUP BY w, id) a \
              FULL JOIN \
              (SELECT tumble(INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM bids GROUP BY w, auction) b \
              ON a.w = b.w AND a.id = b.auction",
        expect: Expect::Runs {
            oracle: "SELECT a.starttime AS opened_in, b.starttime AS bid_in, a.id, b.auction, b.n FROM \
                     (SELECT date_bin(INTERVAL '10' SECOND, date_time) AS starttime, id FROM auctions GROUP BY 1, 2) a \
                     FULL JOIN \
                     (SELECT date_bin(INTERVAL '10' SECOND, date_time) AS starttime, auction, count(*) AS n \
                      FROM bids GROUP BY 1, 2) b \
                     ON a.starttime = b.starttime AND a.id = b.auction",
            min_rows: 100,
        },
    },
    Query {
        name: "anti_join",
        sql: "SELECT a.id, a.seller, a.date_time FROM auctions a WHERE NOT EXISTS \
              (SELECT 1 FROM bids b WHERE b.auction = a.id \
               AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '5' SECOND)",
        expect: Expect::Runs {
            oracle: "SELECT a.id, a.seller, a.date_time FROM auctions a WHERE NOT EXISTS \
                     (SELECT 1 FROM bids b WHERE b.auction = a.id \
                      AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '5' SECOND)",
            min_rows: 10,
        },
    },
    Query {
        name: "left_outer_interval_join",
        sql: "SELECT b.auction, b.bidder, b.price, b.date_time, a.id, a.category FROM bids b \
              LEFT JOIN auctions a ON b.auction = a.id \
              AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '20' SECOND",
        expect: Expect::Runs {
            oracle: "SELECT b.auction, b.bidder, b.price, b.date_time, a.id, a.category FROM bids b \
                     LEFT JOIN auctions a ON b.auction = a.id \
                     AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '20' SECOND",
            min_rows: 15000,
        },
    },
    Query {
        name: "dedup_then_window",
        sql: "SELECT w.start AS starttime, auction, n FROM \
              (SELECT tumble(INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM \
               (SELECT auction, bidder, date_time, \
                 ROW_NUMBER() OVER (PARTITION BY auction, bidder ORDER BY date_time) AS rn FROM bids) \
               WHERE rn = 1 GROUP BY w, auction)",
        expect: Expect::Runs {
            oracle: "SELECT date_bin(INTERVAL '10' SECOND, date_time) AS starttime, auction, count(*) AS n FROM \
                     (SELECT auction, bidder, min(date_time) AS date_time FROM bids GROUP BY auction, bidder) \
                     GROUP BY 1, 2",
            min_rows: 100,
        },
    },
    Query {
        name: "join_then_window",
        sql: "SELECT w.start AS starttime, category, n FROM \
              (SELECT tumble(INTERVAL '10' SECOND, date_time) AS w, category, count(*) AS n FROM \
               (SELECT a.category, b.date_time FROM bids b JOIN auctions a ON b.auction = a.id \
                AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '20' SECOND) \
               GROUP BY w, category)",
        expect: Expect::Runs {
            oracle: "SELECT date_bin(INTERVAL '10' SECOND, b.date_time) AS starttime, a.category, count(*) AS n \
                     FROM bids b JOIN auctions a ON b.auction = a.id \
                     AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '20' SECOND GROUP BY 1, 2",
            min_rows: 10,
        },
    },
];

/// Seconds read as milliseconds (see the module docs).
fn scaled(sql: &str) -> String {
    sql.replace("' SECOND", "' MILLISECOND")
}

fn tables() -> String {
    let source = |name: &str, stream: &str, time: &str| {
        format!(
            "CREATE TABLE {name} WITH (connector = 'generator', world = 'nexmark', stream = '{stream}', \
             seed = '{SEED}', count = '{EVENTS}', {time});\n"
        )
    };
    let et = "event_time_field = 'date_time'";
    [
        source("bids", "bids", et),
        source("auctions", "auctions", et),
        source("persons", "persons", et),
        source("bids_p", "bids", "processing_time_field = 'p_time'"),
        "CREATE TABLE side_input (\"key\" BIGINT, \"value\" VARCHAR) WITH (connector = 'file', \
         path = 'side.jsonl', format = 'json', lookup = 'true');\n"
            .to_string(),
    ]
    .concat()
}

fn side_input() -> String {
    (0..10_000)
        .map(|k| format!("{{\"key\": {k}, \"value\": \"v{k}\"}}\n"))
        .collect()
}

/// Applies a changelog (rows with `_op`) in file order.
fn applied(rows: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut state: std::collections::BTreeMap<String, i64> = Default::default();
    for mut row in rows {
        let op = row["_op"].as_str().unwrap().to_string();
        row.as_object_mut().unwrap().remove("_op");
        *state.entry(row.to_string()).or_default() += if op.starts_with('+') { 1 } else { -1 };
    }
    state
        .into_iter()
        .flat_map(|(r, n)| {
            assert!(n >= 0, "retracted {r} more often than inserted");
            std::iter::repeat_n(serde_json::from_str(&r).unwrap(), n as usize)
        })
        .collect()
}

/// The oracle's session: the generated events as tables.
fn oracle_session(d: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for (table, stream) in [
        ("bids", "bids"),
        ("auctions", "auctions"),
        ("persons", "persons"),
    ] {
        let file = format!("{table}.jsonl");
        ok(&run(
            d,
            &[
                "generate", "--world", "nexmark", "--stream", stream, "--seed", SEED, "--count",
                EVENTS, "-o", &file,
            ],
        ));
        let schema = tributary::connectors::generator::stream_schema("nexmark", stream).unwrap();
        let (batches, bad) = good_rows(&std::fs::read_to_string(d.join(&file)).unwrap(), &schema);
        assert_eq!(bad, 0, "{file}");
        let mem = datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
        ctx.register_table(table, Arc::new(mem)).unwrap();
    }
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("key", arrow::datatypes::DataType::Int64, true),
        arrow::datatypes::Field::new("value", arrow::datatypes::DataType::Utf8, true),
    ]));
    let (batches, _) = good_rows(&side_input(), &schema);
    let mem = datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
    ctx.register_table("side_input", Arc::new(mem)).unwrap();
    ctx
}

/// Every query of the suite is planned: those listed as refused are refused with their
/// reason (each planned alone, at `tributary check`), the others run together in one
/// pipeline and each one's output equals its oracle's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q0_to_q22_run_as_the_batch_oracle_or_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("side.jsonl"), &side_input());
    let mut inserts = String::new();
    let mut sinks = String::new();
    for q in QUERIES.iter().chain(EXTRA) {
        match &q.expect {
            Expect::Refused { code, says } => {
                write(
                    &d.join(format!("{}.sql", q.name)),
                    &format!(
                        "{}CREATE TABLE out WITH (connector = 'blackhole');\nINSERT INTO out {};\n",
                        tables(),
                        q.sql
                    ),
                );
                let o = run(d, &["check", &format!("{}.sql", q.name)]);
                let err = stderr(&o);
                assert!(!o.status.success(), "{} was not refused", q.name);
                // The statement is the last line: tables() has one line per table.
                let at = format!("{}.sql:7:1: ", q.name);
                assert!(
                    err.contains(&at),
                    "{}: refused elsewhere than {at}:\n{err}",
                    q.name
                );
                assert!(err.contains(code), "{}: not {code}:\n{err}", q.name);
                for s in *says {
                    assert!(err.contains(s), "{}: expected '{s}' in:\n{err}", q.name);
                }
            }
            _ => {
                sinks.push_str(&format!(
                    "CREATE TABLE {0}_out WITH (connector = 'file', path = 'out/{0}.jsonl');\n",
                    q.name
                ));
                inserts.push_str(&format!("INSERT INTO {}_out {};\n", q.name, scaled(q.sql)));
            }
        }
    }
    write(&d.join("p.sql"), &format!("{}{sinks}{inserts}", tables()));
    let o = run(d, &["run", "p.sql"]);
    ok(&o);

    let ctx = oracle_session(d);
    for q in QUERIES.iter().chain(EXTRA) {
        let got = || json_lines(&d.join(format!("out/{}.jsonl", q.name)));
        match &q.expect {
            Expect::Refused { .. } => {}
            Expect::Runs { .. } if q.name == "q12" => q12_totals(&ctx, got()).await,
            Expect::Runs { oracle, min_rows } => {
                let expected = batches_as_json(&batch_sql(&ctx, &scaled(oracle)).await);
                assert!(
                    expected.len() >= *min_rows,
                    "{}: {} rows",
                    q.name,
                    expected.len()
                );
                assert_eq!(canonical(&got()), canonical(&expected), "{}", q.name);
            }
            Expect::Changelog { oracle, min_rows } => {
                let expected = batches_as_json(&batch_sql(&ctx, &scaled(oracle)).await);
                assert!(
                    expected.len() >= *min_rows,
                    "{}: {} rows",
                    q.name,
                    expected.len()
                );
                assert_eq!(
                    canonical(&applied(got())),
                    canonical(&expected),
                    "{}",
                    q.name
                );
            }
        }
    }
}

/// q12 counts bids per bidder in windows of processing time: each bidder's counts add
/// up to its bids.
async fn q12_totals(ctx: &SessionContext, rows: Vec<serde_json::Value>) {
    let mut totals: std::collections::BTreeMap<i64, i64> = Default::default();
    for r in &rows {
        *totals.entry(r["bidder"].as_i64().unwrap()).or_default() +=
            r["bid_count"].as_i64().unwrap();
    }
    let expected = batches_as_json(
        &batch_sql(
            ctx,
            "SELECT bidder, count(*) AS n FROM bids GROUP BY bidder",
        )
        .await,
    );
    let expected: std::collections::BTreeMap<i64, i64> = expected
        .iter()
        .map(|r| (r["bidder"].as_i64().unwrap(), r["n"].as_i64().unwrap()))
        .collect();
    assert!(expected.len() > 100);
    assert_eq!(totals, expected, "q12: bids per bidder");
}
