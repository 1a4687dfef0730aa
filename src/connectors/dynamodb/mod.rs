//! The `dynamodb` connector: DynamoDB tables as sinks and as lookup tables read by
//! key, on the shared client ([`crate::dynamodb`]).
//!
//! Owns the `[dynamodb]` configuration section ([`DynamoConfig`], checked into the
//! client's `DynamoSettings`), the Arrow ⇄ DynamoDB type mapping (`types.rs`), the
//! sink (`sink.rs`: versioned epochs, ADR 0015) and the point-lookup table
//! (`lookup.rs`). The checkpoint store on DynamoDB is `checkpoint/dynamodb.rs`.

pub(crate) mod lookup;
pub(crate) mod sink;
pub mod types;

use serde::Deserialize;

pub use crate::dynamodb::{Dynamo, DynamoError, DynamoSettings, TableSpec};
pub(crate) use lookup::lookup_table;
pub(crate) use sink::sink;

/// `[dynamodb]`: how Tributary reaches DynamoDB (default.toml documents each key).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DynamoConfig {
    /// The AWS region; "" for the SDK's default chain (`AWS_REGION`, the profile).
    pub region: String,
    /// A DynamoDB-API server to use instead of AWS's (`http://127.0.0.1:8000`); "".
    pub endpoint: String,
    /// Put before every table name Tributary derives or is given.
    pub table_prefix: String,
    /// Create a missing table (on-demand billing) on first use, instead of failing.
    pub create_tables: bool,
    /// Attempts per request by the SDK (throttling and transient errors), then ours.
    pub max_attempts: u32,
    pub initial_backoff: String,
    pub max_backoff: String,
    /// The longest one attempt of a request may take.
    pub request_timeout: String,
    /// How long an unreachable DynamoDB is retried before the pipeline fails.
    pub outage_timeout: String,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        DynamoConfig {
            region: String::new(),
            endpoint: String::new(),
            table_prefix: String::new(),
            create_tables: true,
            max_attempts: 3,
            initial_backoff: "50ms".into(),
            max_backoff: "5s".into(),
            request_timeout: "10s".into(),
            outage_timeout: "5m".into(),
        }
    }
}

impl DynamoConfig {
    /// Checks every value; errors name the key (`dynamodb.max_backoff: …`).
    pub fn settings(&self) -> Result<DynamoSettings, DynamoError> {
        let duration = |key: &str, v: &str| {
            super::parse_duration(v)
                .map_err(|e| DynamoError::Config(format!("dynamodb.{key}: {e}")))
        };
        if self.max_attempts == 0 {
            return Err(DynamoError::Config(
                "dynamodb.max_attempts: must be at least 1".into(),
            ));
        }
        if !(self.endpoint.is_empty()
            || self.endpoint.starts_with("http://")
            || self.endpoint.starts_with("https://"))
        {
            return Err(DynamoError::Config(format!(
                "dynamodb.endpoint: '{}' is not an http:// or https:// URL",
                self.endpoint
            )));
        }
        if !self
            .table_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(DynamoError::Config(format!(
                "dynamodb.table_prefix: '{}' may hold only letters, digits, '_', '-' and '.'",
                self.table_prefix
            )));
        }
        let request_timeout = duration("request_timeout", &self.request_timeout)?;
        if request_timeout.is_zero() {
            return Err(DynamoError::Config(
                "dynamodb.request_timeout: must be more than 0".into(),
            ));
        }
        Ok(DynamoSettings {
            region: Some(self.region.clone()).filter(|r| !r.is_empty()),
            endpoint: Some(self.endpoint.clone()).filter(|e| !e.is_empty()),
            table_prefix: self.table_prefix.clone(),
            create_tables: self.create_tables,
            max_attempts: self.max_attempts,
            initial_backoff: duration("initial_backoff", &self.initial_backoff)?,
            max_backoff: duration("max_backoff", &self.max_backoff)?,
            request_timeout,
            outage_timeout: duration("outage_timeout", &self.outage_timeout)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn settings_are_checked_naming_the_key() {
        let ok = DynamoConfig::default().settings().unwrap();
        assert_eq!(ok.region, None);
        assert_eq!(ok.outage_timeout, Duration::from_secs(300));
        for (bad, key) in [
            (
                DynamoConfig {
                    max_attempts: 0,
                    ..Default::default()
                },
                "dynamodb.max_attempts",
            ),
            (
                DynamoConfig {
                    endpoint: "localhost:8000".into(),
                    ..Default::default()
                },
                "dynamodb.endpoint",
            ),
            (
                DynamoConfig {
                    table_prefix: "a b".into(),
                    ..Default::default()
                },
                "dynamodb.table_prefix",
            ),
            (
                DynamoConfig {
                    max_backoff: "soon".into(),
                    ..Default::default()
                },
                "dynamodb.max_backoff",
            ),
            (
                DynamoConfig {
                    request_timeout: "0s".into(),
                    ..Default::default()
                },
                "dynamodb.request_timeout",
            ),
        ] {
            let e = bad.settings().unwrap_err();
            assert_eq!(e.code(), "DDB001");
            assert!(e.to_string().starts_with(key), "{e}");
        }
    }
}
