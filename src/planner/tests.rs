//! The planner's refusals, one test each: a minimal pipeline SQL text planned through
//! [`SqlPlanner::plan_pipeline`], asserting the error's code, the line:column it
//! points at and that its message says what to write instead. The refusals of a join's
//! time condition (`operators::join::time_bounds`) and of `CHECK`s (`check.rs`) are
//! tested where they are made.

use std::path::Path;
use std::time::Duration;

use super::{PlanSettings, SqlError, SqlPlanner, SqlText};

/// A stream with event time, and a sink that takes a changelog.
const SRC: &str = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', event_time_field = 'event_time');\n\
                   CREATE TABLE out WITH (connector = 'stdout');\n";

/// A second stream with event time.
const KITCHEN: &str = "CREATE TABLE kitchen WITH (connector = 'generator', stream = 'kitchen', event_time_field = 'event_time');\n";

/// A lookup table.
const RESTAURANTS: &str = "CREATE TABLE restaurants WITH (connector = 'generator', stream = 'restaurants', lookup = 'true');\n";

/// Plans `text` as `p.sql` with `settings`.
async fn plan(text: &str, settings: &PlanSettings) -> crate::Result<super::PlannedPipeline> {
    SqlPlanner::new()
        .plan_pipeline("p", &SqlText::file(text, "p.sql"), Path::new("."), settings)
        .await
}

/// Plans `text` as `p.sql` with `settings`; the error it is refused with.
async fn refusal(text: &str, settings: &PlanSettings) -> SqlError {
    match plan(text, settings).await {
        Ok(_) => panic!("planned, expected a refusal:\n{text}"),
        Err(crate::Error::Sql(e)) => e,
        Err(other) => panic!("refused with a non-SQL error: {other}"),
    }
}

/// Asserts that `text` is refused with `code` at `line:column` of `p.sql`, with a
/// message holding each of `says`.
async fn assert_refused_with(
    text: &str,
    settings: &PlanSettings,
    code: &str,
    (line, column): (usize, usize),
    says: &[&str],
) {
    let e = refusal(text, settings).await;
    let shown = e.to_string();
    assert_eq!(e.code(), code, "{shown}");
    let at = e.location();
    assert_eq!(
        (at.file.as_path(), at.line, at.column),
        (Path::new("p.sql"), line, column),
        "{shown}"
    );
    assert!(
        shown.starts_with(&format!("p.sql:{line}:{column}: ")),
        "{shown}"
    );
    for s in says {
        assert!(shown.contains(s), "expected '{s}' in: {shown}");
    }
}

async fn assert_refused(text: &str, code: &str, at: (usize, usize), says: &[&str]) {
    assert_refused_with(text, &PlanSettings::default(), code, at, says).await;
}

/// `SQL002`: refused by the planner; `SQL003`: not supported on a stream.
const PLAN: &str = "SQL002";
const NOT_STREAMABLE: &str = "SQL003";

// ---- Not streamable (`streamable.rs`) ----

#[tokio::test]
async fn order_by_over_a_stream_is_refused() {
    let text = format!("{SRC}INSERT INTO out SELECT order_id FROM orders ORDER BY order_id;\n");
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (3, 1),
        &[
            "not supported on a stream: ORDER BY",
            "Remove the ORDER BY and sort where the results are read",
        ],
    )
    .await;
}

#[tokio::test]
async fn limit_over_a_stream_is_refused() {
    let text = format!("{SRC}INSERT INTO out SELECT order_id FROM orders LIMIT 10;\n");
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (3, 1),
        &[
            "LIMIT on an unbounded stream",
            "filter rows with WHERE instead",
        ],
    )
    .await;
}

#[tokio::test]
async fn union_without_all_is_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT order_id FROM orders UNION SELECT order_id FROM orders;\n"
    );
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (3, 1),
        &["UNION (without ALL)", "write UNION ALL", "WHERE rn = 1"],
    )
    .await;
}

#[tokio::test]
async fn a_recursive_query_is_refused() {
    let text = format!(
        "{SRC}INSERT INTO out WITH RECURSIVE r AS (SELECT order_id FROM orders \
         UNION ALL SELECT order_id + 1 FROM r WHERE order_id < 3) SELECT order_id FROM r;\n"
    );
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (3, 1),
        &["recursive queries do not run on streams"],
    )
    .await;
}

#[tokio::test]
async fn a_subquery_over_a_stream_is_refused() {
    let text = format!(
        "{SRC}{KITCHEN}INSERT INTO out SELECT order_id, (SELECT max(order_id) FROM kitchen) AS m \
         FROM orders;\n"
    );
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (4, 1),
        &[
            "subqueries and DISTINCT over a stream are not supported",
            "write the subquery as a join",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_group_by_over_the_changelog_of_another_is_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT n, count(*) FROM \
         (SELECT restaurant_id, count(*) AS n FROM orders GROUP BY restaurant_id) GROUP BY n;\n"
    );
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (3, 1),
        &[
            "a GROUP BY reads the results of a GROUP BY without a window, which update as rows arrive",
            "only takes rows that append",
            "GROUP BY tumble(…)",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_right_join_with_a_lookup_table_is_refused() {
    let text = format!(
        "{SRC}{RESTAURANTS}INSERT INTO out SELECT o.order_id, r.name FROM orders o \
         RIGHT JOIN restaurants r ON o.restaurant_id = r.restaurant_id;\n"
    );
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (4, 1),
        &["use JOIN or LEFT JOIN with the stream on the left"],
    )
    .await;
}

#[tokio::test]
async fn outer_semi_and_anti_joins_of_two_streams_are_planned_and_a_mark_join_is_refused() {
    let planned = |query: &str, describes: &'static str| {
        let text = format!("{SRC}{KITCHEN}INSERT INTO out {query};\n");
        async move {
            let planned = plan(&text, &PlanSettings::default())
                .await
                .unwrap_or_else(|e| panic!("{describes} is planned: {e}"));
            assert!(
                planned.graph.nodes.iter().any(|n| matches!(&n.kind,
                    crate::engine::NodeKind::Operator(f) if f.describe().contains(describes))),
                "{describes}"
            );
        }
    };
    let within = "k.event_time BETWEEN o.event_time AND o.event_time + INTERVAL '1' HOUR";
    planned(
        &format!(
            "SELECT o.order_id, k.station FROM orders o LEFT JOIN kitchen k \
             ON o.order_id = k.order_id AND {within}"
        ),
        "interval join (left outer)",
    )
    .await;
    planned(
        &format!(
            "SELECT o.order_id FROM orders o WHERE NOT EXISTS \
             (SELECT 1 FROM kitchen k WHERE o.order_id = k.order_id AND {within})"
        ),
        "anti)",
    )
    .await;
    planned(
        &format!(
            "SELECT o.order_id FROM orders o WHERE EXISTS \
             (SELECT 1 FROM kitchen k WHERE o.order_id = k.order_id AND {within})"
        ),
        "semi)",
    )
    .await;
    // NOT IN over nullable columns is null-aware: refused, NOT EXISTS said instead.
    let text = format!(
        "{SRC}{KITCHEN}INSERT INTO out SELECT o.order_id FROM orders o \
         WHERE o.customer_id NOT IN (SELECT k.item_count FROM kitchen k WHERE {within});\n"
    );
    assert_refused(
        &text,
        "SQL002",
        (4, 1),
        &["NOT IN (subquery) over a stream", "write NOT EXISTS"],
    )
    .await;
    let text = format!(
        "{SRC}{KITCHEN}INSERT INTO out SELECT o.order_id FROM orders o \
         WHERE o.total > 100 OR EXISTS (SELECT 1 FROM kitchen k WHERE o.order_id = k.order_id \
         AND {within});\n"
    );
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (4, 1),
        &[
            "a subquery under OR (a mark join) is not supported yet",
            "EXISTS / NOT EXISTS",
        ],
    )
    .await;
}

#[tokio::test]
async fn over_without_a_window_other_than_row_number_is_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT order_id, sum(total) OVER (PARTITION BY restaurant_id \
         ORDER BY event_time) FROM orders;\n"
    );
    assert_refused(
        &text,
        NOT_STREAMABLE,
        (3, 1),
        &["ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time)"],
    )
    .await;
}

#[tokio::test]
async fn a_query_reading_no_table_is_refused() {
    let text = format!("{SRC}INSERT INTO out SELECT 1 AS n;\n");
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &[
            "the query reads no table",
            "select FROM a source declared with CREATE TABLE",
        ],
    )
    .await;
}

// ---- Inserts (`inserts.rs`, `plan.rs`) ----

#[tokio::test]
async fn an_insert_into_an_undeclared_table_is_refused() {
    let text = format!("{SRC}INSERT INTO nowhere SELECT order_id FROM orders;\n");
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &[
            "INSERT INTO nowhere: no such table",
            "declare it with CREATE TABLE nowhere (…)",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_changelog_into_a_sink_that_only_appends_is_refused() {
    let text = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
                CREATE TABLE out WITH (connector = 'parquet', path = 'out');\n\
                INSERT INTO out SELECT restaurant_id, count(*) AS n FROM orders GROUP BY restaurant_id;\n";
    assert_refused(
        text,
        NOT_STREAMABLE,
        (3, 1),
        &[
            "only appends",
            "Write it to a sink that takes a changelog",
            "GROUP BY tumble(INTERVAL '1' MINUTE)",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_query_returning_other_columns_than_the_sink_declares_is_refused() {
    let text = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
                CREATE TABLE out (id BIGINT) WITH (connector = 'stdout');\n\
                INSERT INTO out SELECT order_id, total FROM orders;\n";
    assert_refused(
        text,
        PLAN,
        (3, 1),
        &["the query returns 2 columns but out declares 1 (id)"],
    )
    .await;
}

// ---- Tables (`tables.rs`, `event_time.rs`) ----

/// `orders` declared with `options` added, read by an insert on line 3.
fn orders_with(options: &str) -> String {
    format!(
        "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', {options});\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT order_id FROM orders;\n"
    )
}

#[tokio::test]
async fn connector_options_for_an_undeclared_table_are_refused() {
    let settings = PlanSettings {
        table_options: [("ordres".to_string(), Default::default())].into(),
        ..PlanSettings::default()
    };
    assert_refused_with(
        &orders_with("count = '1'"),
        &settings,
        PLAN,
        (1, 1),
        &["connectors: no table named ordres", "tables: orders, out"],
    )
    .await;
}

#[tokio::test]
async fn a_parallelism_that_is_not_a_positive_integer_is_refused() {
    assert_refused(
        &orders_with("parallelism = '0'"),
        PLAN,
        (1, 14),
        &["table orders: parallelism = '0' must be a positive integer"],
    )
    .await;
}

#[tokio::test]
async fn watermark_options_without_event_time_are_refused() {
    assert_refused(
        &orders_with("watermark_delay = '5s'"),
        PLAN,
        (1, 14),
        &["table orders: watermark_delay and idle_timeout need event_time_field"],
    )
    .await;
}

#[tokio::test]
async fn a_watermark_delay_that_is_not_a_duration_is_refused() {
    assert_refused(
        &orders_with("event_time_field = 'event_time', watermark_delay = 'soon'"),
        PLAN,
        (1, 14),
        &["table orders: watermark_delay = 'soon': "],
    )
    .await;
}

#[tokio::test]
async fn a_zero_idle_timeout_is_refused() {
    assert_refused(
        &orders_with("event_time_field = 'event_time', idle_timeout = '0s'"),
        PLAN,
        (1, 14),
        &[
            "idle_timeout must be longer than 0s",
            "leave it out to never treat inputs as idle",
        ],
    )
    .await;
}

#[tokio::test]
async fn event_and_processing_time_on_one_table_are_refused() {
    assert_refused(
        &orders_with("event_time_field = 'event_time', processing_time_field = 'arrived'"),
        PLAN,
        (1, 14),
        &["read in event time (event_time_field) or in processing time (processing_time_field), not both"],
    )
    .await;
}

#[tokio::test]
async fn a_lookup_option_that_is_not_a_boolean_is_refused() {
    assert_refused(
        &orders_with("lookup = 'maybe'"),
        PLAN,
        (1, 14),
        &["table orders: lookup = 'maybe': expected 'true' or 'false'"],
    )
    .await;
}

#[tokio::test]
async fn an_on_miss_without_lookup_or_of_an_unknown_kind_is_refused() {
    assert_refused(
        &orders_with("on_miss = 'dead-letter'"),
        PLAN,
        (1, 14),
        &["on_miss applies to lookup tables (lookup = 'true')"],
    )
    .await;
    assert_refused(
        &orders_with("lookup = 'true', on_miss = 'panic'"),
        PLAN,
        (1, 14),
        &["on_miss = 'panic': expected 'dead-letter'"],
    )
    .await;
}

#[tokio::test]
async fn a_refresh_interval_without_lookup_is_refused() {
    assert_refused(
        &orders_with("refresh_interval = '1m'"),
        PLAN,
        (1, 14),
        &["refresh_interval applies to lookup tables (lookup = 'true')"],
    )
    .await;
}

#[tokio::test]
async fn a_refresh_interval_that_is_not_a_duration_is_refused() {
    assert_refused(
        &orders_with("count = '1', lookup = 'true', refresh_interval = 'often'"),
        PLAN,
        (1, 14),
        &["table orders: refresh_interval = 'often': "],
    )
    .await;
}

#[tokio::test]
async fn a_zero_refresh_interval_is_refused() {
    assert_refused(
        &orders_with("count = '1', lookup = 'true', refresh_interval = '0s'"),
        PLAN,
        (1, 14),
        &["refresh_interval must be longer than 0s"],
    )
    .await;
}

#[tokio::test]
async fn an_unbounded_lookup_table_is_refused() {
    assert_refused(
        &orders_with("lookup = 'true'"),
        PLAN,
        (1, 14),
        &["a lookup table is read whole", "must be a bounded source (a file, or a generator reference stream such as restaurants) without event time"],
    )
    .await;
}

#[tokio::test]
async fn a_check_on_a_sink_is_refused() {
    let text = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
                CREATE TABLE out (id BIGINT CHECK (id > 0)) WITH (connector = 'stdout');\n\
                INSERT INTO out SELECT order_id FROM orders;\n";
    assert_refused(
        text,
        PLAN,
        (2, 36),
        &[
            "table out is a sink: CHECK constraints apply to the tables a pipeline reads",
            "filter a sink's rows with WHERE",
        ],
    )
    .await;
}

#[tokio::test]
async fn source_options_on_a_sink_are_refused() {
    let text = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
                CREATE TABLE out WITH (connector = 'stdout', event_time_field = 'event_time');\n\
                INSERT INTO out SELECT order_id FROM orders;\n";
    assert_refused(
        text,
        PLAN,
        (2, 14),
        &["table out is a sink: event_time_field, watermark_delay, idle_timeout, processing_time_field and lookup apply to sources"],
    )
    .await;
}

// ---- The join cut (`cuts/join.rs`) ----

#[tokio::test]
async fn two_streams_combined_without_join_on_are_refused() {
    let text = format!(
        "{SRC}{KITCHEN}INSERT INTO out SELECT o.order_id, k.station FROM orders o, kitchen k;\n"
    );
    assert_refused(
        &text,
        PLAN,
        (4, 1),
        &[
            "this combination of two streams",
            "is not supported: join them with JOIN … ON",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_join_bounded_by_other_columns_than_the_event_time_is_refused() {
    let text = format!(
        "{SRC}{KITCHEN}INSERT INTO out SELECT o.order_id, k.station FROM orders o \
         JOIN kitchen k ON o.order_id = k.order_id \
         AND k.queued_at BETWEEN o.event_time AND o.event_time + INTERVAL '1' HOUR;\n"
    );
    assert_refused(
        &text,
        PLAN,
        (4, 1),
        &[
            "the join's time condition uses kitchen.queued_at, but kitchen's event time is event_time",
            "bound the join by the event-time columns",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_join_of_a_stream_without_event_time_is_refused() {
    let text = format!(
        "{SRC}CREATE TABLE kitchen WITH (connector = 'generator', stream = 'kitchen');\n\
         INSERT INTO out SELECT o.order_id, k.station FROM orders o \
         JOIN kitchen k ON o.order_id = k.order_id \
         AND k.event_time BETWEEN o.event_time AND o.event_time + INTERVAL '1' HOUR;\n"
    );
    assert_refused(
        &text,
        PLAN,
        (4, 1),
        &["kitchen has no event time: declare event_time_field on it"],
    )
    .await;
}

// ---- The aggregate cut (`cuts/aggregate.rs`) ----

#[tokio::test]
async fn grouping_sets_are_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT restaurant_id, channel, count(*) AS n FROM orders \
         GROUP BY ROLLUP (restaurant_id, channel);\n"
    );
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &["GROUPING SETS, CUBE and ROLLUP are not supported on streams"],
    )
    .await;
}

#[tokio::test]
async fn two_window_functions_in_one_group_by_are_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT count(*) AS n FROM orders \
         GROUP BY tumble(INTERVAL '1' MINUTE), tumble(INTERVAL '5' MINUTE);\n"
    );
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &["GROUP BY holds more than one window function"],
    )
    .await;
}

/// Allowed lateness of one second.
fn lateness() -> PlanSettings {
    PlanSettings {
        allowed_lateness: Some(Duration::from_secs(1)),
        ..PlanSettings::default()
    }
}

#[tokio::test]
async fn top_n_per_window_with_allowed_lateness_is_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT w, restaurant_id, n FROM (SELECT w, restaurant_id, n, \
         row_number() OVER (PARTITION BY w ORDER BY n DESC) AS rn FROM \
         (SELECT tumble(INTERVAL '1' MINUTE) AS w, restaurant_id, count(*) AS n FROM orders \
         GROUP BY tumble(INTERVAL '1' MINUTE), restaurant_id)) WHERE rn <= 3;\n"
    );
    assert_refused_with(
        &text,
        &lateness(),
        PLAN,
        (3, 1),
        &[
            "window functions over whole windows (Top-N) need each window once",
            "they do not run with windows.allowed_lateness",
        ],
    )
    .await;
}

#[tokio::test]
async fn session_windows_with_allowed_lateness_are_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT restaurant_id, count(*) AS n FROM orders \
         GROUP BY session(INTERVAL '5' MINUTE), restaurant_id;\n"
    );
    assert_refused_with(
        &text,
        &lateness(),
        PLAN,
        (3, 1),
        &["windows.allowed_lateness applies to tumble and hop windows; session windows wait for the watermark"],
    )
    .await;
}

// ---- The row_number cut (`cuts/row_number.rs`) ----

#[tokio::test]
async fn row_number_without_event_time_is_refused() {
    let text = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
                CREATE TABLE out WITH (connector = 'stdout');\n\
                INSERT INTO out SELECT order_id FROM (SELECT order_id, row_number() OVER \
                (PARTITION BY restaurant_id ORDER BY event_time) AS rn FROM orders) WHERE rn = 1;\n";
    assert_refused(
        text,
        PLAN,
        (3, 1),
        &["ROW_NUMBER() on a stream is ordered by event time: declare event_time_field on the source table"],
    )
    .await;
}

#[tokio::test]
async fn row_number_ordered_by_another_column_is_refused() {
    let text = format!(
        "{SRC}INSERT INTO out SELECT order_id FROM (SELECT order_id, row_number() OVER \
         (PARTITION BY restaurant_id ORDER BY order_id) AS rn FROM orders) WHERE rn = 1;\n"
    );
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &["ROW_NUMBER() on a stream must be ordered by the event-time column ascending (ORDER BY event_time)"],
    )
    .await;
}

// ---- Statements (`ddl.rs`) ----

#[tokio::test]
async fn create_table_as_select_is_refused() {
    let text = format!(
        "{SRC}CREATE TABLE copy AS SELECT * FROM orders;\nINSERT INTO out SELECT order_id FROM orders;\n"
    );
    assert_refused(
        &text,
        PLAN,
        (3, 14),
        &[
            "CREATE TABLE … AS SELECT is not supported",
            "declare the table, then INSERT INTO copy SELECT …",
        ],
    )
    .await;
}

#[tokio::test]
async fn an_option_that_is_not_a_literal_is_refused() {
    let text = "CREATE TABLE out WITH (connector = NULL);\nINSERT INTO out SELECT 1;\n";
    assert_refused(
        text,
        PLAN,
        (1, 36),
        &["table out: option connector must be a string, number or boolean literal"],
    )
    .await;
}

#[tokio::test]
async fn an_option_given_twice_is_refused() {
    let text = "CREATE TABLE out WITH (connector = 'stdout', connector = 'stdout');\nINSERT INTO out SELECT 1;\n";
    assert_refused(
        text,
        PLAN,
        (1, 46),
        &["table out: option connector is given twice"],
    )
    .await;
}

#[tokio::test]
async fn a_table_without_connector_is_refused() {
    let text = "CREATE TABLE out WITH (path = 'x');\nINSERT INTO out SELECT 1;\n";
    assert_refused(
        text,
        PLAN,
        (1, 14),
        &["table out has no connector: add WITH (connector = 'generator' | 'file' | 'stdout' | 'parquet' | 'blackhole', …)"],
    )
    .await;
}

#[tokio::test]
async fn a_table_declared_twice_is_refused() {
    let text = format!(
        "{SRC}CREATE TABLE out WITH (connector = 'stdout');\nINSERT INTO out SELECT order_id FROM orders;\n"
    );
    assert_refused(&text, PLAN, (3, 14), &["table out is declared twice"]).await;
}

#[tokio::test]
async fn an_insert_naming_columns_is_refused() {
    let text = format!("{SRC}INSERT INTO out (order_id) SELECT order_id FROM orders;\n");
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &["INSERT INTO out (columns…) is not supported: select the sink's columns in order"],
    )
    .await;
}

#[tokio::test]
async fn an_insert_without_select_is_refused() {
    let text = format!("{SRC}INSERT INTO out DEFAULT VALUES;\n");
    assert_refused(&text, PLAN, (3, 1), &["INSERT INTO out needs a SELECT"]).await;
}

#[tokio::test]
async fn a_select_on_its_own_is_refused() {
    let text = format!(
        "{SRC}SELECT order_id FROM orders;\nINSERT INTO out SELECT order_id FROM orders;\n"
    );
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &["a SELECT on its own has nowhere to go: write INSERT INTO <sink> SELECT …"],
    )
    .await;
}

#[tokio::test]
async fn an_unsupported_statement_is_refused() {
    let text = format!("{SRC}DELETE FROM orders;\nINSERT INTO out SELECT order_id FROM orders;\n");
    assert_refused(
        &text,
        PLAN,
        (3, 1),
        &[
            "unsupported statement 'DELETE FROM orders…'",
            "a pipeline holds CREATE TABLE, CREATE VIEW and INSERT INTO statements",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_pipeline_without_insert_is_refused() {
    assert_refused(
        SRC,
        PLAN,
        (1, 1),
        &["no INSERT INTO statement: a pipeline must write its results to a sink"],
    )
    .await;
}

/// Plans a Kafka Avro source whose `schema_file` is `file`, in the SQL file `sql_file`,
/// with the working directory (`base_dir`) elsewhere.
async fn plan_schema_file(sql_file: &Path, file: &str) -> crate::Result<()> {
    let text = format!(
        "CREATE TABLE orders (id BIGINT) WITH (connector = 'kafka', \
         bootstrap_servers = '127.0.0.1:1', topic = 'orders', format = 'avro', \
         schema_registry_url = 'http://127.0.0.1:1', schema_file = '{file}');\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT id FROM orders;\n"
    );
    SqlPlanner::new()
        .plan_pipeline(
            "p",
            &SqlText::file(text, sql_file),
            Path::new("."),
            &PlanSettings::default(),
        )
        .await
        .map(|_| ())
}

/// A Kafka table's `schema_file` is resolved from the directory of the SQL file that
/// names it (not the working directory); an absolute path is kept as it is.
#[tokio::test]
async fn a_relative_schema_file_is_read_next_to_the_sql_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sql")).unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    let schema = dir.path().join("schemas/order.avsc");
    std::fs::write(
        &schema,
        r#"{"type": "record", "name": "order", "fields": [{"name": "id", "type": "long"}]}"#,
    )
    .unwrap();
    let sql_file = dir.path().join("sql/p.sql");
    plan_schema_file(&sql_file, "../schemas/order.avsc")
        .await
        .expect("relative to sql/p.sql");
    plan_schema_file(&sql_file, &schema.display().to_string())
        .await
        .expect("an absolute path");
    let e = plan_schema_file(&sql_file, "schemas/order.avsc")
        .await
        .expect_err("not relative to the SQL file: not found");
    assert!(e.to_string().contains("schema_file"), "{e}");
}

#[tokio::test]
async fn a_window_without_a_time_is_refused_at_its_call() {
    let text = "CREATE TABLE kitchen WITH (connector = 'generator', stream = 'kitchen');\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT w.start, count(*) AS n FROM (\n  SELECT tumble(INTERVAL '1' MINUTE) AS w FROM kitchen\n) GROUP BY w;\n";
    assert_refused(
        text,
        PLAN,
        (4, 10),
        &["tumble() has no time to place rows by: declare event_time_field on the table it reads (kitchen)"],
    )
    .await;
}

/// Several INSERTs into one sink plan into a valid graph: the sink after every stage.
#[tokio::test]
async fn several_inserts_write_one_sink() {
    let text = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders');\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT order_id, event_time FROM orders WHERE total > 10;\n\
         INSERT INTO out SELECT order_id, event_time FROM orders WHERE total < 5;\n";
    let planned = SqlPlanner::new()
        .plan_pipeline(
            "p",
            &SqlText::file(text, "p.sql"),
            Path::new("."),
            &PlanSettings::default(),
        )
        .await
        .unwrap();
    let g = planned.graph;
    let sink = g.nodes.iter().position(|n| n.name == "out").unwrap();
    assert_eq!(g.nodes[sink].inputs.len(), 2);
    assert!(g.nodes[sink].inputs.iter().all(|(i, _)| *i < sink));
    let mut g = g;
    g.finalize().unwrap();
}

/// A pipeline file's Rust operator reads a view of the SQL, and a view reads the
/// operator's side output: both plan, the view after the operator.
#[tokio::test]
async fn views_feed_and_read_rust_operators() {
    let text = "CREATE TABLE orders WITH (connector = 'generator', stream = 'orders', event_time_field = 'event_time');\n\
         CREATE VIEW events AS SELECT event_id, event_type, event_time, order_id, customer_id, restaurant_id FROM orders;\n\
         CREATE VIEW alerted AS SELECT order_id, status FROM tracked_sla_alerts;\n\
         CREATE TABLE out WITH (connector = 'stdout');\n\
         CREATE TABLE alerts WITH (connector = 'stdout');\n\
         INSERT INTO out SELECT order_id, status FROM tracked;\n\
         INSERT INTO alerts SELECT * FROM alerted;\n";
    let settings = PlanSettings {
        operators: vec![crate::planner::OperatorDecl {
            name: "tracked".into(),
            function: "order_tracking".into(),
            input: "events".into(),
            key: vec!["order_id".into()],
            options: Default::default(),
            parallelism: Some(2),
            location: SqlText::file("", "p.yaml").locate(1, 1),
        }],
        ..PlanSettings::default()
    };
    let planned = SqlPlanner::new()
        .plan_pipeline(
            "p",
            &SqlText::file(text, "p.sql"),
            Path::new("."),
            &settings,
        )
        .await
        .unwrap();
    let g = planned.graph;
    let op = g.nodes.iter().position(|n| n.name == "tracked").unwrap();
    assert_eq!(g.nodes[op].parallelism, 2);
    let alerts = g.nodes.iter().position(|n| n.name == "alerts").unwrap();
    // The alerts' stage reads the operator's side output (port 1).
    let stage = g.nodes[alerts].inputs[0].0;
    assert_eq!(g.nodes[stage].inputs[0].0, op);
    assert_eq!(g.nodes[stage].port_of(0), 1);
}
