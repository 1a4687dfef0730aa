//! Queries with several stateful operations planned as chains of stages
//! (`super::chain`): which nodes each becomes, and the refusals where streaming
//! semantics forbid a chain, at the statement's line and column with the real reason.

use std::path::Path;

use super::{PlanSettings, SqlError, SqlPlanner, SqlText};

/// Nexmark's three streams with event time, and a sink that takes a changelog.
const NEXMARK: &str = "CREATE TABLE bids WITH (connector = 'generator', world = 'nexmark', stream = 'bids', event_time_field = 'date_time', watermark_delay = '1s');\n\
    CREATE TABLE auctions WITH (connector = 'generator', world = 'nexmark', stream = 'auctions', event_time_field = 'date_time', watermark_delay = '1s');\n\
    CREATE TABLE persons WITH (connector = 'generator', world = 'nexmark', stream = 'persons', event_time_field = 'date_time', watermark_delay = '1s');\n\
    CREATE TABLE out WITH (connector = 'stdout');\n";

/// The names of the nodes `query` (inserted into `out`) plans into, in order.
async fn nodes(query: &str) -> Vec<String> {
    let text = format!("{NEXMARK}INSERT INTO out {query};\n");
    let planned = SqlPlanner::new()
        .plan_pipeline(
            "p",
            &SqlText::file(text.as_str(), "p.sql"),
            Path::new("."),
            &PlanSettings::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{query}"));
    planned.graph.nodes.iter().map(|n| n.name.clone()).collect()
}

/// The error `query` is refused with.
async fn refusal(query: &str) -> SqlError {
    let text = format!("{NEXMARK}INSERT INTO out {query};\n");
    match SqlPlanner::new()
        .plan_pipeline(
            "p",
            &SqlText::file(text.as_str(), "p.sql"),
            Path::new("."),
            &PlanSettings::default(),
        )
        .await
    {
        Ok(_) => panic!("planned, expected a refusal:\n{query}"),
        Err(crate::Error::Sql(e)) => e,
        Err(other) => panic!("refused with a non-SQL error: {other}"),
    }
}

/// `e`'s text, once checked to have `code` and to name the INSERT of [`refusal`]'s file
/// (`p.sql`, line 5, column 1).
fn refused_at_the_insert(e: &SqlError, code: &str) -> String {
    let shown = e.to_string();
    assert_eq!(e.code(), code, "{shown}");
    assert!(shown.starts_with("p.sql:5:1: "), "{shown}");
    shown
}

/// The graph `query` (inserted into `out`) plans into.
async fn graph(query: &str) -> crate::engine::Graph {
    let text = format!("{NEXMARK}INSERT INTO out {query};\n");
    SqlPlanner::new()
        .plan_pipeline(
            "p",
            &SqlText::file(text.as_str(), "p.sql"),
            Path::new("."),
            &PlanSettings::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{query}"))
        .graph
}

/// The names of the nodes node `name` of `graph` reads, in order.
fn inputs_of(graph: &crate::engine::Graph, name: &str) -> Vec<String> {
    let id = graph
        .find(name)
        .unwrap_or_else(|| panic!("no node {name} in {}", graph.explain()));
    graph.nodes[id]
        .inputs
        .iter()
        .map(|(i, _)| graph.nodes[*i].name.clone())
        .collect()
}

fn assert_has(nodes: &[String], wanted: &[&str]) {
    for w in wanted {
        assert!(nodes.iter().any(|n| n == w), "no node {w} in {nodes:?}");
    }
}

#[tokio::test]
async fn dedup_then_window_is_a_rank_stage_feeding_a_window_stage() {
    let nodes = nodes(
        "SELECT tumble(INTERVAL '10' SECOND) AS w, auction, count(*) AS bids FROM \
         (SELECT auction, bidder, date_time, ROW_NUMBER() OVER (PARTITION BY auction, bidder ORDER BY date_time) AS rn FROM bids) \
         WHERE rn = 1 GROUP BY w, auction",
    )
    .await;
    assert_has(
        &nodes,
        &[
            "bids",
            "out_stage1_select_pre",
            "out_stage1_select_rank",
            "out_stage1_select",
            "out_select_pre",
            "out_select_window",
            "out_select",
            "out",
        ],
    );
}

#[tokio::test]
async fn join_then_aggregate_is_a_join_stage_feeding_an_aggregate_stage() {
    let nodes = nodes(
        "SELECT a.category, count(*) AS bids FROM bids b JOIN auctions a ON b.auction = a.id \
         AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '10' SECOND GROUP BY a.category",
    )
    .await;
    assert_has(
        &nodes,
        &[
            "out_stage1_select_join",
            "out_select_aggregate",
            "out_select",
        ],
    );
}

#[tokio::test]
async fn a_windowed_aggregate_over_a_join_is_planned() {
    let nodes = nodes(
        "SELECT tumble(INTERVAL '10' SECOND, date_time) AS w, category, count(*) AS bids FROM \
         (SELECT a.category, b.date_time FROM bids b JOIN auctions a ON b.auction = a.id \
         AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '10' SECOND) GROUP BY w, category",
    )
    .await;
    assert_has(&nodes, &["out_stage1_select_join", "out_select_window"]);
}

#[tokio::test]
async fn a_windowed_aggregate_over_another_by_its_window_is_a_window_stage() {
    // Per window, the most bids any auction got (q5's right side).
    let nodes = nodes(
        "SELECT max(num) AS maxn, starttime FROM \
         (SELECT w.start AS starttime, num FROM \
          (SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS num FROM bids GROUP BY w, auction)) \
         GROUP BY starttime",
    )
    .await;
    assert_has(&nodes, &["out_stage1_select_window", "out_select_window"]);
}

#[tokio::test]
async fn a_windowed_aggregate_over_another_by_its_window_struct_is_a_window_stage() {
    // Distinct bidders per auction and window, then per window: the outer query groups
    // by the inner's window column itself, as Arroyo's and Flink's users write it.
    let nodes = nodes(
        "SELECT w, count(*) AS pairs, sum(n) AS bids FROM \
         (SELECT tumble(INTERVAL '10' SECOND) AS w, auction, bidder, count(*) AS n FROM bids GROUP BY w, auction, bidder) \
         GROUP BY w",
    )
    .await;
    assert_has(&nodes, &["out_stage1_select_window", "out_select_window"]);
}

#[tokio::test]
async fn a_rollup_of_windows_by_window_time_is_planned() {
    // 10-second counts rolled up per minute: the inner window's end − 1 ms places each
    // row in the minute it came from.
    let nodes = nodes(
        "SELECT tumble(INTERVAL '1' MINUTE, t) AS m, auction, sum(n) AS bids FROM \
         (SELECT w['end'] - INTERVAL '1' MILLISECOND AS t, auction, n FROM \
          (SELECT tumble(INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM bids GROUP BY w, auction)) \
         GROUP BY m, auction",
    )
    .await;
    assert_has(&nodes, &["out_stage1_select_window", "out_select_window"]);
}

#[tokio::test]
async fn nexmark_q5_joins_two_windowed_aggregates_on_their_window() {
    let nodes = nodes(Q5).await;
    assert_has(
        &nodes,
        &[
            "out_stage1_select_window",
            "out_stage2_select_window",
            "out_stage3_select_window",
            "out_select_join",
        ],
    );
}

#[tokio::test]
async fn nexmark_q7_joins_bids_with_the_max_of_their_window() {
    let nodes = nodes(Q7).await;
    assert_has(&nodes, &["out_stage1_select_window", "out_select_join"]);
}

#[tokio::test]
async fn top_n_per_window_with_the_event_time_in_the_group_by_is_planned() {
    let nodes = nodes(
        "SELECT auction, bidder, price, date_time FROM \
         (SELECT *, RANK() OVER (PARTITION BY w ORDER BY price DESC) AS rk FROM \
          (SELECT tumble(INTERVAL '10' SECOND) AS w, auction, bidder, price, date_time FROM bids \
           GROUP BY w, auction, bidder, price, date_time)) \
         WHERE rk = 1",
    )
    .await;
    assert_has(
        &nodes,
        &["out_select_window", "out_select_gather", "out_select"],
    );
}

#[tokio::test]
async fn a_window_over_the_changelog_of_a_group_by_is_refused_for_that_reason() {
    let e = refusal(
        "SELECT tumble(INTERVAL '10' SECOND, date_time) AS w, count(*) FROM \
         (SELECT auction, max(date_time) AS date_time FROM bids GROUP BY auction) GROUP BY w",
    )
    .await;
    let shown = refused_at_the_insert(&e, "SQL003");
    assert!(
        shown.contains(
            "a windowed GROUP BY reads the results of a GROUP BY without a window, which update"
        ),
        "{shown}"
    );
    assert!(shown.contains("only takes rows that append"), "{shown}");
}

#[tokio::test]
async fn an_unbounded_inner_join_of_two_streams_is_refused_for_its_missing_time_bound() {
    // Nexmark q3: an inner join, refused because nothing bounds its state in time.
    let e = refusal(Q3).await;
    let shown = refused_at_the_insert(&e, "SQL002");
    assert!(
        shown.contains("needs its time bounded on both ends"),
        "{shown}"
    );
    assert!(!shown.contains("outer"), "{shown}");
}

/// Nexmark q3 (Flink's), local item suggestion.
pub(crate) const Q3: &str = "SELECT P.name, P.city, P.state, A.id FROM auctions AS A \
    INNER JOIN persons AS P ON A.seller = P.id \
    WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')";

/// Nexmark q5 (Flink's), hot items: the auctions with the most bids per hopping window.
pub(crate) const Q5: &str = "SELECT AuctionBids.auction, AuctionBids.num FROM \
    (SELECT auction, num, w.start AS starttime, w['end'] AS endtime FROM \
     (SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS num FROM bids GROUP BY w, auction)) AS AuctionBids \
    JOIN \
    (SELECT max(num) AS maxn, starttime, endtime FROM \
     (SELECT w.start AS starttime, w['end'] AS endtime, num FROM \
      (SELECT hop(INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, auction, count(*) AS num FROM bids GROUP BY w, auction)) \
     GROUP BY starttime, endtime) AS MaxBids \
    ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime \
    AND AuctionBids.num >= MaxBids.maxn";

/// Nexmark q7 (Flink's), highest bid: the bids at the highest price of their 10 s window.
pub(crate) const Q7: &str = "SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bids B \
    JOIN (SELECT w['end'] AS date_time, maxprice FROM \
          (SELECT tumble(INTERVAL '10' SECOND) AS w, max(price) AS maxprice FROM bids GROUP BY w)) B1 \
    ON B.price = B1.maxprice \
    WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time";

#[tokio::test]
async fn the_builder_api_plans_one_stateful_operation_per_stage() {
    let bids = crate::connectors::generator::stream_schema("nexmark", "bids").unwrap();
    let e = SqlPlanner::new()
        .plan_query(
            "SELECT n, count(*) AS c FROM (SELECT tumble(INTERVAL '1' SECOND) AS w, auction, count(*) AS n \
             FROM bids GROUP BY w, auction) GROUP BY n",
            &[("bids", bids, Some("date_time"))],
            Default::default(),
        )
        .await
        .err()
        .expect("refused");
    let shown = e.to_string();
    assert_eq!(e.code(), "SQL003", "{shown}");
    assert!(
        shown.contains("a stage of the Rust builder API holds one stateful operation"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_union_all_of_two_streams_is_one_stage_per_input_feeding_its_reader() {
    let graph = graph(
        "SELECT auction, date_time FROM bids WHERE price > 10 \
         UNION ALL SELECT id, date_time FROM auctions",
    )
    .await;
    assert_eq!(
        inputs_of(&graph, "out_stage1_1_select"),
        ["bids"],
        "{}",
        graph.explain()
    );
    assert_eq!(inputs_of(&graph, "out_stage1_2_select"), ["auctions"]);
    // The reader reads both inputs' stages, as one side.
    assert_eq!(
        inputs_of(&graph, "out_select"),
        ["out_stage1_1_select", "out_stage1_2_select"]
    );
    let reader = &graph.nodes[graph.find("out_select").unwrap()];
    assert_eq!(reader.side_of(0), reader.side_of(1));
}

#[tokio::test]
async fn a_dedup_over_a_union_all_reading_one_table_twice_is_a_rank_stage_over_both_inputs() {
    let graph = graph(
        "SELECT auction, bidder, date_time FROM \
         (SELECT auction, bidder, date_time, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY date_time) AS rn FROM \
          (SELECT auction, bidder, date_time FROM bids WHERE price > 100 \
           UNION ALL SELECT auction, bidder, date_time FROM bids WHERE bidder % 2 = 0)) \
         WHERE rn = 1",
    )
    .await;
    assert_eq!(inputs_of(&graph, "out_stage1_1_select"), ["bids"]);
    assert_eq!(inputs_of(&graph, "out_stage1_2_select"), ["bids"]);
    assert_eq!(
        inputs_of(&graph, "out_select_pre"),
        ["out_stage1_1_select", "out_stage1_2_select"],
        "{}",
        graph.explain()
    );
    assert_has(&nodes_of(&graph), &["out_select_rank", "out_select"]);
}

#[tokio::test]
async fn a_window_over_a_union_all_of_chains_is_planned() {
    // One input deduplicates its stream (a stage of its own); a window counts both.
    let graph = graph(
        "SELECT tumble(INTERVAL '10' SECOND) AS w, count(*) AS n FROM \
         (SELECT auction AS id, date_time FROM \
           (SELECT auction, date_time, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY date_time) AS rn FROM bids) \
           WHERE rn = 1 \
          UNION ALL SELECT id, date_time FROM auctions) \
         GROUP BY w",
    )
    .await;
    let nodes = nodes_of(&graph);
    assert_has(
        &nodes,
        &[
            "out_stage1_1_select_rank",
            "out_stage1_1_select",
            "out_stage1_2_select",
            "out_select_window",
        ],
    );
    assert_eq!(
        inputs_of(&graph, "out_select_pre"),
        ["out_stage1_1_select", "out_stage1_2_select"],
        "{}",
        graph.explain()
    );
}

#[tokio::test]
async fn a_dedup_over_a_union_all_without_a_common_event_time_is_refused_for_that_reason() {
    let e = refusal(
        "SELECT t, auction FROM \
         (SELECT t, auction, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY t) AS rn FROM \
          (SELECT date_time AS t, auction FROM bids UNION ALL SELECT expires AS t, id FROM auctions)) \
         WHERE rn = 1",
    )
    .await;
    let shown = e.to_string();
    assert!(shown.starts_with("p.sql:5:1: "), "{shown}");
    assert!(
        shown.contains("UNION ALL whose inputs do not all pass an event-time column"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_union_all_of_a_changelog_is_refused_for_that_reason() {
    let e = refusal(
        "SELECT auction, count(*) AS n FROM bids GROUP BY auction \
         UNION ALL SELECT id, 1 FROM auctions",
    )
    .await;
    let shown = refused_at_the_insert(&e, "SQL003");
    assert!(
        shown.contains("UNION ALL reads the results of a GROUP BY without a window"),
        "{shown}"
    );
}

fn nodes_of(graph: &crate::engine::Graph) -> Vec<String> {
    graph.nodes.iter().map(|n| n.name.clone()).collect()
}

#[tokio::test]
async fn a_union_all_of_an_input_holding_a_chain_is_planned() {
    // The first input is a chain itself: a windowed count over a dedup.
    let graph = graph(
        "SELECT auction, n FROM \
          (SELECT tumble(INTERVAL '10' SECOND) AS w, auction, count(*) AS n FROM \
           (SELECT auction, date_time, ROW_NUMBER() OVER (PARTITION BY auction, bidder ORDER BY date_time) AS rn FROM bids) \
           WHERE rn = 1 GROUP BY w, auction) \
         UNION ALL SELECT id, 1 FROM auctions",
    )
    .await;
    assert_has(
        &nodes_of(&graph),
        &[
            "out_stage1_select_rank",
            "out_stage2_1_select_window",
            "out_stage2_2_select",
        ],
    );
    assert_eq!(
        inputs_of(&graph, "out_select"),
        ["out_stage2_1_select", "out_stage2_2_select"],
        "{}",
        graph.explain()
    );
}
