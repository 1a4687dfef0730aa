//! Parsing a pipeline's SQL into declarations: tables (with their connector options),
//! views and `INSERT INTO` statements, each with its position in the user's file.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{
    CreateTableOptions, Expr, ObjectName, SqlOption, Statement, TableObject, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Span;

use super::{SqlError, SqlText};
use crate::types::Location;

/// `CREATE TABLE name (cols) WITH (connector = '…', …)`.
#[derive(Debug, Clone)]
pub struct TableDecl {
    pub name: String,
    /// The statement without its `WITH` clause, planned by DataFusion for the schema;
    /// `None` when no column was declared.
    pub columns_ddl: Option<Statement>,
    pub connector: String,
    pub options: BTreeMap<String, String>,
    pub location: Location,
    /// Where each option's key was written (`connector`: where its value was), so an
    /// error about one option points at it.
    pub option_locations: BTreeMap<String, Location>,
    /// `CHECK (…)` constraints, on a column or the table, in the order written.
    pub checks: Vec<CheckDecl>,
}

/// One `CHECK (expr)` of a table: rows for which `expr` is false are bad records.
#[derive(Debug, Clone)]
pub struct CheckDecl {
    /// `CONSTRAINT name CHECK (…)`; `None` when unnamed.
    pub name: Option<String>,
    /// The expression as SQL text, planned against the table's columns.
    pub expr: String,
    pub location: Location,
}

impl TableDecl {
    /// Where an error about this table's connector or options should point: the
    /// option it names, else the table.
    pub fn locate(&self, error: &crate::Error) -> Location {
        use crate::connectors::ConnectorError as C;
        let option = match error {
            crate::Error::Connector(C::UnknownConnector { .. }) => Some("connector"),
            crate::Error::Connector(C::UnknownOption { option, .. })
            | crate::Error::Connector(C::InvalidOption { option, .. }) => Some(option.as_str()),
            _ => None,
        };
        option
            .and_then(|o| self.option_locations.get(o))
            .cloned()
            .unwrap_or_else(|| self.location.clone())
    }
}

/// `INSERT INTO sink SELECT …`.
#[derive(Debug, Clone)]
pub struct InsertDecl {
    pub sink: String,
    pub query: Statement,
    pub location: Location,
}

/// The declarations of one SQL text, in order.
#[derive(Debug, Clone, Default)]
pub struct ParsedSql {
    pub tables: Vec<TableDecl>,
    /// `CREATE VIEW` statements, planned in order before the inserts.
    pub views: Vec<(String, Statement, Location)>,
    pub inserts: Vec<InsertDecl>,
}

fn name_of(name: &ObjectName) -> String {
    // Unquoted identifiers are case-insensitive, as in DataFusion.
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(id) if id.quote_style.is_some() => id.value.clone(),
            Some(id) => id.value.to_lowercase(),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn option_value(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(id) => Some(id.value.clone()),
        _ => None,
    }
}

/// Turns the parser's "... at Line: 3, Column: 7" into a location.
fn parser_location(sql: &SqlText, message: &str) -> (Location, String) {
    let find = |key: &str| -> Option<u64> {
        let at = message.find(key)? + key.len();
        let digits: String = message[at..]
            .chars()
            .skip_while(|c| c.is_whitespace())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let line = find("Line:").unwrap_or(1);
    let column = find("Column:").unwrap_or(1);
    let clean = match message.find(" at Line:") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    };
    (sql.locate(line, column), clean)
}

/// Removes the `CHECK` constraints (column options and table constraints) from a
/// `CREATE TABLE`, leaving the columns for DataFusion to plan.
fn take_checks(
    ct: &mut datafusion::sql::sqlparser::ast::CreateTable,
    sql: &SqlText,
) -> Vec<CheckDecl> {
    use datafusion::sql::sqlparser::ast::{ColumnOption, Spanned, TableConstraint};
    let mut checks = Vec::new();
    let mut found = |name: Option<&datafusion::sql::sqlparser::ast::Ident>, expr: &Expr| {
        checks.push(CheckDecl {
            name: name.map(|n| n.value.clone()),
            expr: expr.to_string(),
            location: span_location(sql, expr.span()),
        })
    };
    for column in &mut ct.columns {
        column.options.retain(|o| match &o.option {
            ColumnOption::Check(c) => {
                found(c.name.as_ref().or(o.name.as_ref()), &c.expr);
                false
            }
            _ => true,
        });
    }
    ct.constraints.retain(|c| match c {
        TableConstraint::Check(c) => {
            found(c.name.as_ref(), &c.expr);
            false
        }
        _ => true,
    });
    checks
}

pub(crate) fn span_location(sql: &SqlText, span: Span) -> Location {
    sql.locate(span.start.line, span.start.column)
}

/// Parses a pipeline's SQL: any number of `CREATE TABLE … WITH (…)`, `CREATE VIEW` and
/// `INSERT INTO … SELECT …` statements.
pub fn parse_sql(sql: &SqlText) -> Result<ParsedSql, SqlError> {
    use datafusion::sql::sqlparser::ast::Spanned;
    let statements = Parser::new(&GenericDialect {})
        .try_with_sql(&sql.text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| {
            let raw = e.to_string();
            let raw = raw.strip_prefix("sql parser error: ").unwrap_or(&raw);
            let (location, message) = parser_location(sql, raw);
            SqlError::Syntax { location, message }
        })?;
    let mut parsed = ParsedSql::default();
    for stmt in statements {
        let location = span_location(sql, stmt.span());
        match stmt {
            Statement::CreateTable(mut ct) => {
                let name = name_of(&ct.name);
                let opts = match std::mem::take(&mut ct.table_options) {
                    CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o,
                    CreateTableOptions::None => vec![],
                    other => {
                        return Err(SqlError::Plan {
                            location,
                            message: format!(
                                "table {name}: options must be written WITH (key = 'value', …), not {other}"
                            ),
                        });
                    }
                };
                if ct.query.is_some() {
                    return Err(SqlError::Plan {
                        location,
                        message: format!(
                            "table {name}: CREATE TABLE … AS SELECT is not supported; declare the table, then INSERT INTO {name} SELECT …"
                        ),
                    });
                }
                let mut options = BTreeMap::new();
                let mut option_locations = BTreeMap::new();
                for o in opts {
                    match o {
                        SqlOption::KeyValue { key, value } => {
                            let Some(v) = option_value(&value) else {
                                return Err(SqlError::Plan {
                                    location: span_location(sql, value.span()),
                                    message: format!(
                                        "table {name}: option {} must be a string, number or boolean literal",
                                        key.value
                                    ),
                                });
                            };
                            let k = key.value.to_lowercase();
                            let at = if k == "connector" {
                                value.span()
                            } else {
                                key.span
                            };
                            option_locations.insert(k.clone(), span_location(sql, at));
                            if options.insert(k.clone(), v).is_some() {
                                return Err(SqlError::Plan {
                                    location: span_location(sql, key.span),
                                    message: format!("table {name}: option {k} is given twice"),
                                });
                            }
                        }
                        other => {
                            return Err(SqlError::Plan {
                                location,
                                message: format!(
                                    "table {name}: unsupported option {other}; write key = 'value'"
                                ),
                            });
                        }
                    }
                }
                let Some(connector) = options.remove("connector") else {
                    return Err(SqlError::Plan {
                        location,
                        message: format!(
                            "table {name} has no connector: add WITH (connector = 'generator' | 'file' | 'stdout' | 'parquet' | 'blackhole', …)"
                        ),
                    });
                };
                if parsed.tables.iter().any(|t| t.name == name) {
                    return Err(SqlError::Plan {
                        location,
                        message: format!("table {name} is declared twice"),
                    });
                }
                let checks = take_checks(&mut ct, sql);
                let columns_ddl = if ct.columns.is_empty() {
                    None
                } else {
                    Some(Statement::CreateTable(ct))
                };
                parsed.tables.push(TableDecl {
                    name,
                    columns_ddl,
                    connector,
                    options,
                    location,
                    option_locations,
                    checks,
                });
            }
            Statement::CreateView(ref cv) => {
                let name = name_of(&cv.name);
                parsed.views.push((name, stmt, location));
            }
            Statement::Insert(ref insert) => {
                let sink = match &insert.table {
                    TableObject::TableName(n) => name_of(n),
                    other => {
                        return Err(SqlError::Plan {
                            location,
                            message: format!("INSERT INTO {other}: the target must be a table"),
                        });
                    }
                };
                if !insert.columns.is_empty() {
                    return Err(SqlError::Plan {
                        location,
                        message: format!(
                            "INSERT INTO {sink} (columns…) is not supported: select the sink's columns in order"
                        ),
                    });
                }
                let Some(source) = insert.source.clone() else {
                    return Err(SqlError::Plan {
                        location,
                        message: format!("INSERT INTO {sink} needs a SELECT"),
                    });
                };
                parsed.inserts.push(InsertDecl {
                    sink,
                    query: Statement::Query(source),
                    location,
                });
            }
            Statement::Query(_) => {
                return Err(SqlError::Plan {
                    location,
                    message: "a SELECT on its own has nowhere to go: write INSERT INTO <sink> SELECT …, with the sink declared by CREATE TABLE … WITH (connector = 'stdout')".into(),
                });
            }
            other => {
                let first: String = other.to_string().chars().take(40).collect();
                return Err(SqlError::Plan {
                    location,
                    message: format!(
                        "unsupported statement '{first}…': a pipeline holds CREATE TABLE, CREATE VIEW and INSERT INTO statements"
                    ),
                });
            }
        }
    }
    if parsed.inserts.is_empty() {
        return Err(SqlError::Plan {
            location: sql.locate(1, 1),
            message: "no INSERT INTO statement: a pipeline must write its results to a sink".into(),
        });
    }
    Ok(parsed)
}
