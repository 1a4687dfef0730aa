//! `CHECK` constraints of the tables a pipeline reads: the contract a record must keep
//! beyond its format (`total >= 0`, `status IN ('placed', 'paid')`).
//!
//! Owns planning each `CHECK (expr)` of a `CREATE TABLE` against the table's columns
//! with DataFusion and applying the table's checks to every batch its source emits
//! (through [`RowValidator`], in the source task, before watermarks).
//!
//! Invariants:
//! - A row passes when every check is true or NULL (SQL's rule: a CHECK fails only
//!   when its condition is false).
//! - A row that fails is a bad record with reason `constraint`, its detail naming the
//!   table and the check (its name when declared with `CONSTRAINT name`), its raw form
//!   the row as JSON. A row whose check cannot be evaluated (an error for that row, e.g.
//!   a failed cast) is a bad record too. Neither stops the pipeline.
//! - Good rows keep their order; a batch where every row passes is passed on as is.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use super::SqlError;
use super::ddl::CheckDecl;
use crate::dlq::{BadRecordReason, BadRecords};
use crate::engine::RowValidator;

struct Check {
    /// `CHECK (total >= 0)` or `CHECK positive_total (total >= 0)`.
    label: String,
    expr: Arc<dyn PhysicalExpr>,
}

/// The checks of one table, planned.
pub struct TableChecks {
    table: String,
    checks: Vec<Check>,
}

impl TableChecks {
    /// Plans `decls` against `schema`; an expression that does not plan or is not a
    /// condition is refused at its position in the SQL file.
    pub fn plan(
        ctx: &SessionContext,
        table: &str,
        schema: &SchemaRef,
        decls: &[CheckDecl],
    ) -> Result<Self, SqlError> {
        let df_schema =
            DFSchema::try_from(schema.as_ref().clone()).map_err(|e| SqlError::Plan {
                location: decls[0].location.clone(),
                message: format!("table {table}: {e}"),
            })?;
        let mut checks = Vec::with_capacity(decls.len());
        for d in decls {
            let refuse = |message: String| SqlError::Plan {
                location: d.location.clone(),
                message: format!("table {table}: CHECK ({}): {message}", d.expr),
            };
            let logical = ctx
                .parse_sql_expr(&d.expr, &df_schema)
                .map_err(|e| refuse(e.to_string()))?;
            let ty = datafusion::logical_expr::ExprSchemable::get_type(&logical, &df_schema)
                .map_err(|e| refuse(e.to_string()))?;
            if ty != DataType::Boolean {
                return Err(refuse(format!("a check is a condition; this is {ty}")));
            }
            let expr = ctx
                .create_physical_expr(logical, &df_schema)
                .map_err(|e| refuse(e.to_string()))?;
            let label = match &d.name {
                Some(n) => format!("CHECK {n} ({})", d.expr),
                None => format!("CHECK ({})", d.expr),
            };
            checks.push(Check { label, expr });
        }
        Ok(TableChecks {
            table: table.to_string(),
            checks,
        })
    }
}

/// Why row `i` fails `check` in `batch`, or `None` when it passes (true or NULL).
fn row_failure(check: &Check, batch: &RecordBatch, i: usize) -> Option<String> {
    let row = batch.slice(i, 1);
    match check.expr.evaluate(&row).and_then(|v| v.into_array(1)) {
        Ok(a) => {
            let b = a.as_boolean();
            (b.is_valid(0) && !b.value(0)).then(|| format!("{} failed", check.label))
        }
        Err(e) => Some(format!("{} could not be evaluated: {e}", check.label)),
    }
}

impl RowValidator for TableChecks {
    fn validate(&self, batch: RecordBatch, bad: &mut BadRecords) -> crate::Result<RecordBatch> {
        let n = batch.num_rows();
        // Why each failed row failed; `None`: it passes so far.
        let mut failures: Vec<Option<String>> = Vec::new();
        for check in &self.checks {
            let whole = check.expr.evaluate(&batch).and_then(|v| v.into_array(n));
            match whole {
                Ok(a) => {
                    let b = a.as_boolean();
                    if b.false_count() == 0 {
                        continue;
                    }
                    failures.resize(n, None);
                    for (i, f) in failures.iter_mut().enumerate() {
                        if f.is_none() && b.is_valid(i) && !b.value(i) {
                            *f = Some(format!("{} failed", check.label));
                        }
                    }
                }
                // Some row makes the expression fail: find which, row by row.
                Err(_) => {
                    failures.resize(n, None);
                    for (i, f) in failures.iter_mut().enumerate() {
                        if f.is_none() {
                            *f = row_failure(check, &batch, i);
                        }
                    }
                }
            }
        }
        if failures.iter().all(Option::is_none) {
            return Ok(batch);
        }
        for (i, f) in failures.iter().enumerate() {
            if let Some(why) = f {
                let detail = format!("table {}: {why}", self.table);
                bad.report_row(BadRecordReason::Constraint, &detail, &batch, i, None);
            }
        }
        let keep: BooleanArray = failures.iter().map(|f| Some(f.is_none())).collect();
        arrow::compute::filter_record_batch(&batch, &keep)
            .map_err(|e| crate::engine::EngineError::arrow("applying CHECK constraints", e))
    }

    fn describe(&self) -> String {
        let labels: Vec<&str> = self.checks.iter().map(|c| c.label.as_str()).collect();
        format!("rows must pass {}", labels.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::SqlText;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn decl(sql: &str) -> CheckDecl {
        CheckDecl {
            name: None,
            expr: sql.into(),
            location: SqlText::file(sql, "t.sql").locate(1, 1),
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("total", DataType::Float64, true),
        ]))
    }

    fn batch(ids: &[&str], totals: &[Option<f64>]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(Float64Array::from(totals.to_vec())),
            ],
        )
        .unwrap()
    }

    fn ids(b: &RecordBatch) -> Vec<String> {
        b.column(0)
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap().to_string())
            .collect()
    }

    #[test]
    fn false_rows_are_bad_records_null_and_true_pass_in_order() {
        let ctx = SessionContext::new();
        let checks = TableChecks::plan(
            &ctx,
            "orders",
            &schema(),
            &[decl("total >= 0"), decl("id <> 'x'")],
        )
        .unwrap();
        let mut bad = BadRecords::detached("t");
        let out = checks
            .validate(
                batch(
                    &["a", "b", "c", "x", "e"],
                    &[Some(1.0), Some(-2.0), None, Some(3.0), Some(0.0)],
                ),
                &mut bad,
            )
            .unwrap();
        assert_eq!(ids(&out), ["a", "c", "e"]);
        assert_eq!(bad.count(), 2);
    }

    #[test]
    fn a_batch_that_passes_is_returned_whole() {
        let ctx = SessionContext::new();
        let checks = TableChecks::plan(&ctx, "orders", &schema(), &[decl("total >= 0")]).unwrap();
        let mut bad = BadRecords::detached("t");
        let b = batch(&["a", "b"], &[Some(1.0), None]);
        let out = checks.validate(b.clone(), &mut bad).unwrap();
        assert_eq!(out, b);
        assert_eq!(bad.count(), 0);
    }

    #[test]
    fn a_row_whose_check_errors_is_a_bad_record_and_the_rest_pass() {
        let ctx = SessionContext::new();
        let checks =
            TableChecks::plan(&ctx, "orders", &schema(), &[decl("CAST(id AS INT) > 0")]).unwrap();
        let mut bad = BadRecords::detached("t");
        let out = checks
            .validate(batch(&["1", "oops", "2", "-4"], &[None; 4]), &mut bad)
            .unwrap();
        assert_eq!(ids(&out), ["1", "2"]);
        assert_eq!(bad.count(), 2);
    }

    #[test]
    fn checks_that_are_not_conditions_or_name_unknown_columns_are_refused() {
        let ctx = SessionContext::new();
        let not_bool = TableChecks::plan(&ctx, "orders", &schema(), &[decl("total + 1")]);
        let msg = not_bool.err().unwrap().to_string();
        assert!(msg.contains("a check is a condition"), "{msg}");
        let unknown = TableChecks::plan(&ctx, "orders", &schema(), &[decl("amount > 0")]);
        let msg = unknown.err().unwrap().to_string();
        assert!(msg.contains("amount"), "{msg}");
    }
}
