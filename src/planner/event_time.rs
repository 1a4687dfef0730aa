//! Event time in a table's options and in queries: reading (and removing)
//! `event_time_field`, `watermark_delay` and `idle_timeout`, and giving `tumble`, `hop`
//! and `session` calls without a time argument the event-time column of the table read.

use datafusion::sql::sqlparser::tokenizer::Span;
use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::Statement;

use crate::connectors;
use crate::engine::EventTime;

/// Reads (and removes) a source table's event-time options: `event_time_field`,
/// `watermark_delay` (bounded out-of-orderness, default 0s) and `idle_timeout`.
pub(crate) fn take_event_time(
    options: &mut BTreeMap<String, String>,
) -> std::result::Result<Option<(EventTime, Option<std::time::Duration>)>, String> {
    let column = options.remove("event_time_field");
    let delay = options.remove("watermark_delay");
    let idle = options.remove("idle_timeout");
    let duration = |key: &str, v: &str| {
        connectors::parse_duration(v).map_err(|e| format!("{key} = '{v}': {e}"))
    };
    let Some(column) = column else {
        if delay.is_some() || idle.is_some() {
            return Err(
                "watermark_delay and idle_timeout need event_time_field (the column holding each event's time)"
                    .into(),
            );
        }
        return Ok(None);
    };
    let delay = match delay {
        Some(v) => duration("watermark_delay", &v)?,
        None => std::time::Duration::ZERO,
    };
    let idle = idle.map(|v| duration("idle_timeout", &v)).transpose()?;
    if idle.is_some_and(|d| d.is_zero()) {
        return Err(
            "idle_timeout must be longer than 0s (leave it out to never treat inputs as idle)"
                .into(),
        );
    }
    Ok(Some((EventTime { column, delay }, idle)))
}

/// Gives `tumble(width)` and `hop(slide, width)` calls without a time argument the
/// event-time column of the table the query reads (`times`: table → column). With no
/// such column, the first such call is refused (its message and place): a window
/// without a time would otherwise fail on every row.
pub(super) fn add_window_time_args(
    query: &mut Statement,
    times: &BTreeMap<String, String>,
) -> std::result::Result<(), (String, Span)> {
    use datafusion::sql::sqlparser::ast::{
        Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Spanned,
        visit_expressions, visit_expressions_mut, visit_relations,
    };
    let mut read: Vec<String> = Vec::new();
    let _ = visit_relations(query, |name| {
        read.push(name.to_string());
        std::ops::ControlFlow::<()>::Continue(())
    });
    let column = read
        .iter()
        .find_map(|t| times.get(t))
        .or_else(|| {
            // A view: use the event-time column if every source names it alike.
            let mut all = times.values();
            let first = all.next()?;
            all.all(|c| c == first).then_some(first)
        })
        .cloned();
    let Some(column) = column else {
        let untimed = visit_expressions(query, |e| match e {
            SqlExpr::Function(f)
                if matches!(&f.args, FunctionArguments::List(l)
                    if l.args.len() == window_args(&f.name.to_string()).unwrap_or(usize::MAX)) =>
            {
                std::ops::ControlFlow::Break((f.name.to_string().to_lowercase(), e.span()))
            }
            _ => std::ops::ControlFlow::Continue(()),
        });
        return match untimed {
            std::ops::ControlFlow::Break((name, span)) => Err((
                format!(
                    "{name}() has no time to place rows by: declare event_time_field on the table \
                     it reads ({}), or pass the time column as its last argument",
                    read.join(", ")
                ),
                span,
            )),
            std::ops::ControlFlow::Continue(()) => Ok(()),
        };
    };
    let _ = visit_expressions_mut(query, |e| {
        if let SqlExpr::Function(f) = e {
            let Some(wanted) = window_args(&f.name.to_string()) else {
                return std::ops::ControlFlow::<()>::Continue(());
            };
            if let FunctionArguments::List(list) = &mut f.args
                && list.args.len() == wanted
            {
                list.args.push(FunctionArg::Unnamed(FunctionArgExpr::Expr(
                    SqlExpr::Identifier(Ident::new(column.clone())),
                )));
            }
        }
        std::ops::ControlFlow::Continue(())
    });
    Ok(())
}

/// How many arguments a window function takes before its time: `tumble(width)`,
/// `session(gap)`, `hop(slide, width)`.
fn window_args(name: &str) -> Option<usize> {
    match name.to_lowercase().as_str() {
        "tumble" | "session" => Some(1),
        "hop" => Some(2),
        _ => None,
    }
}
