//! The DynamoDB client every user of DynamoDB shares — the `dynamodb` connector
//! (sink, lookup tables), the checkpoint store, the broker-outage fallback store —
//! through the official SDK (`aws-sdk-dynamodb`), against Amazon DynamoDB or any
//! DynamoDB-API server (dynalite in the tests).
//!
//! Owns the parsed connection settings ([`DynamoSettings`]; the `[dynamodb]` section
//! that makes them is `connectors::dynamodb::DynamoConfig`), the client built from
//! them ([`Dynamo`]: region, endpoint override, credentials from the SDK's default
//! chain, the SDK's retries and timeouts, our outage loop on top), table creation on
//! first use ([`TableSpec`]), and the errors ([`DynamoError`], `DDB…`).
//!
//! Invariants:
//! - An unreachable or throttling DynamoDB is an outage, never lost data: every call
//!   goes through [`Dynamo::call`], which retries with backoff (after the SDK's own
//!   retries) and reports the component retrying in the health table, until
//!   `outage_timeout` passes; only then does the caller fail (DDB002; with
//!   checkpoints, the restart replays from the last committed one).
//! - A refusal that retrying cannot change (a validation error, a missing table
//!   without `create_tables`, a key of other types than the table's) is returned at
//!   once, naming the table.
//! - Conditional-check failures are answers, not errors: callers see them as such.

#[cfg(test)]
pub(crate) mod chaos;

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

/// How to reach DynamoDB: `connectors::dynamodb::DynamoConfig` checked and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamoSettings {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub table_prefix: String,
    pub create_tables: bool,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
    pub outage_timeout: Duration,
}

/// Errors of DynamoDB's users (connector, checkpoint store) and of its configuration.
#[derive(Debug, thiserror::Error)]
pub enum DynamoError {
    #[error("{0}")]
    Config(String),
    /// A request DynamoDB refused, or that failed for longer than `outage_timeout`.
    #[error("dynamodb {what} on table {table}: {message}")]
    Request {
        table: String,
        what: &'static str,
        message: String,
        /// Retrying might succeed (throttled, unreachable, 5xx).
        retriable: bool,
    },
    /// The table is missing (and not created) or its key schema does not fit.
    #[error("dynamodb table {table}: {message}")]
    Table { table: String, message: String },
    /// Unavailable for longer than `outage_timeout`.
    #[error("dynamodb unavailable for longer than dynamodb.outage_timeout ({timeout:?}): {last}")]
    Outage {
        timeout: Duration,
        last: Box<DynamoError>,
    },
}

impl DynamoError {
    pub fn code(&self) -> &'static str {
        match self {
            DynamoError::Config(_) => "DDB001",
            DynamoError::Outage { .. } => "DDB002",
            DynamoError::Request { .. } => "DDB003",
            DynamoError::Table { .. } => "DDB004",
        }
    }

    /// A request to `table` (`what`: the operation) that failed with `e`: retriable
    /// or not as [`retriable`] judges it, described by [`describe`].
    pub(crate) fn request<E>(
        table: &str,
        what: &'static str,
        e: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    ) -> DynamoError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        DynamoError::Request {
            table: table.to_string(),
            what,
            retriable: retriable(e),
            message: describe(e),
        }
    }

    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            DynamoError::Request {
                retriable: true,
                ..
            }
        )
    }
}

/// Whether an SDK error is worth retrying: the service was unreachable, slow,
/// throttling or failing (5xx), as opposed to refusing the request.
pub(crate) fn retriable<E>(
    e: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    use aws_sdk_dynamodb::error::SdkError;
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            matches!(
                code,
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
                    | "LimitExceededException"
                    | "TransactionInProgressException"
            ) || s.raw().status().is_server_error()
        }
        _ => false,
    }
}

/// The error code of a service error (`ConditionalCheckFailedException`, …).
pub(crate) fn error_code<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> Option<String>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .map(str::to_string)
}

/// A readable message for an SDK error (the service's code and message when there
/// is one, else the whole error chain).
pub(crate) fn describe<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(s) = e.as_service_error()
        && let Some(code) = s.code()
    {
        return format!("{code}: {}", s.message().unwrap_or_default());
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One DynamoDB item: attribute name → value.
pub(crate) type Item = std::collections::HashMap<String, AttributeValue>;

/// The outcome of a conditional write: `Ok(true)` when it was made, `Ok(false)` when
/// its condition did not hold (an answer, not an error), else the request's error.
pub(crate) fn conditional<O, E>(
    table: &str,
    what: &'static str,
    sent: Result<
        O,
        aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    >,
) -> Result<bool, DynamoError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match sent {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e).as_deref() == Some("ConditionalCheckFailedException") => Ok(false),
        Err(e) => Err(DynamoError::request(table, what, &e)),
    }
}

/// A table's key and indexes, for creating it on first use.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    /// (attribute, type) of the partition key and, if any, the sort key.
    pub partition_key: (String, ScalarAttributeType),
    pub sort_key: Option<(String, ScalarAttributeType)>,
    /// Global secondary indexes: (name, partition key, sort key), projecting all.
    pub indexes: Vec<(
        String,
        (String, ScalarAttributeType),
        Option<(String, ScalarAttributeType)>,
    )>,
}

/// A DynamoDB client with the installation's settings.
#[derive(Debug, Clone)]
pub struct Dynamo {
    pub client: Client,
    pub settings: DynamoSettings,
}

impl Dynamo {
    /// [`Dynamo::connect`], then [`Dynamo::ensure_table`] for `spec`: the client of a
    /// store that keeps everything in one table.
    pub async fn connect_to(
        settings: &DynamoSettings,
        spec: TableSpec,
    ) -> Result<Dynamo, DynamoError> {
        let d = Dynamo::connect(settings).await?;
        d.ensure_table(&spec).await?;
        Ok(d)
    }

    /// Builds the client: the SDK's default credential chain, the configured region
    /// (or the chain's; `us-east-1` for a local endpoint without one), HTTPS through
    /// rustls with ring (no aws-lc build), the SDK's standard retries.
    pub async fn connect(settings: &DynamoSettings) -> Result<Dynamo, DynamoError> {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts)
                    .with_initial_backoff(settings.initial_backoff)
                    .with_max_backoff(settings.max_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(settings.request_timeout)
                    .connect_timeout(settings.request_timeout)
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let mut config = loader.load().await;
        if config.region().is_none() {
            if settings.endpoint.is_none() {
                return Err(DynamoError::Config(
                    "dynamodb.region: no region configured and none in the environment \
                     (set dynamodb.region or AWS_REGION)"
                        .into(),
                ));
            }
            config = config
                .into_builder()
                .region(aws_config::Region::new("us-east-1"))
                .build();
        }
        Ok(Dynamo {
            client: Client::new(&config),
            settings: settings.clone(),
        })
    }

    /// `name` with the configured prefix.
    pub fn table_name(&self, name: &str) -> String {
        format!("{}{name}", self.settings.table_prefix)
    }

    /// Runs `attempt` until it succeeds, fails for good, or has failed retriably for
    /// longer than `outage_timeout`; `probe` (if any) is told of the outage and of
    /// its end. Backoff doubles from `initial_backoff` to `max_backoff`.
    pub async fn call<T, F, Fut>(
        &self,
        probe: Option<&crate::health::Probe>,
        mut attempt: F,
    ) -> Result<T, DynamoError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DynamoError>>,
    {
        let started = Instant::now();
        let mut backoff = self.settings.initial_backoff.max(Duration::from_millis(10));
        loop {
            match attempt().await {
                Ok(v) => {
                    if let Some(p) = probe {
                        p.up();
                    }
                    return Ok(v);
                }
                Err(e) if e.is_retriable() && started.elapsed() < self.settings.outage_timeout => {
                    if let Some(p) = probe {
                        p.retrying(&e);
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "dynamodb unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.settings.max_backoff.max(backoff));
                }
                Err(e) if e.is_retriable() => {
                    return Err(DynamoError::Outage {
                        timeout: self.settings.outage_timeout,
                        last: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every page of a query or scan, up to `limit` items (all without one):
    /// `page(start, left)` sends one page's request from the key to start after, with
    /// at most `left` items wanted, and returns its items and the key to go on from.
    /// Each page goes through [`Dynamo::call`].
    pub(crate) async fn pages<F, Fut>(
        &self,
        limit: Option<usize>,
        mut page: F,
    ) -> Result<Vec<Item>, DynamoError>
    where
        F: FnMut(Option<Item>, Option<usize>) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<Item>, Option<Item>), DynamoError>>,
    {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let left = limit.map(|l| l - out.len());
            let (items, next) = self.call(None, || page(start.clone(), left)).await?;
            out.extend(items);
            start = next.filter(|k| !k.is_empty());
            if start.is_none() || limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
        }
    }

    /// Writes (or deletes) `requests` on `table` with `BatchWriteItem`s of 25, the
    /// items DynamoDB leaves unprocessed sent again with backoff, outages waited out
    /// ([`Dynamo::call`]). For items whose writes need no condition (a batch takes
    /// none): each is named by its key alone, so writing it again changes nothing.
    pub async fn batch_write(
        &self,
        table: &str,
        requests: Vec<aws_sdk_dynamodb::types::WriteRequest>,
    ) -> Result<(), DynamoError> {
        for chunk in requests.chunks(25) {
            let mut left = chunk.to_vec();
            let mut backoff = Duration::from_millis(20);
            while !left.is_empty() {
                let out = self
                    .call(None, || async {
                        self.client
                            .batch_write_item()
                            .request_items(table, left.clone())
                            .send()
                            .await
                            .map_err(|e| DynamoError::request(table, "BatchWriteItem", &e))
                    })
                    .await?;
                left = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
                if !left.is_empty() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.settings.max_backoff.max(backoff));
                }
            }
        }
        Ok(())
    }

    /// Makes sure `spec`'s table exists: described, or created (on-demand billing)
    /// when missing and `create_tables` is on; waits until it is active. A table
    /// whose key schema differs from `spec` is refused.
    pub async fn ensure_table(&self, spec: &TableSpec) -> Result<(), DynamoError> {
        let name = spec.name.clone();
        let described = self
            .call(None, || async {
                match self.client.describe_table().table_name(&name).send().await {
                    Ok(out) => Ok(out.table),
                    Err(e) if error_code(&e).as_deref() == Some("ResourceNotFoundException") => {
                        Ok(None)
                    }
                    Err(e) => Err(DynamoError::request(&name, "DescribeTable", &e)),
                }
            })
            .await?;
        if let Some(table) = described {
            let keys: Vec<(String, KeyType)> = table
                .key_schema()
                .iter()
                .map(|k| (k.attribute_name().to_string(), k.key_type().clone()))
                .collect();
            let mut want = vec![(spec.partition_key.0.clone(), KeyType::Hash)];
            if let Some((s, _)) = &spec.sort_key {
                want.push((s.clone(), KeyType::Range));
            }
            if keys != want {
                return Err(DynamoError::Table {
                    table: name,
                    message: format!(
                        "its key is {keys:?}, expected {want:?} (partition key, then sort key)"
                    ),
                });
            }
            // And of the types the columns make (a string id in an N key would make
            // every row a refusal).
            for (attribute, want) in std::iter::once(&spec.partition_key).chain(&spec.sort_key) {
                let found = table
                    .attribute_definitions()
                    .iter()
                    .find(|d| d.attribute_name() == attribute)
                    .map(|d| d.attribute_type().clone());
                if let Some(found) = found
                    && found != *want
                {
                    return Err(DynamoError::Table {
                        table: name,
                        message: format!(
                            "key attribute {attribute} is of type {}, but its column makes {} \
                             (cast the column in the query, or recreate the table)",
                            found.as_str(),
                            want.as_str()
                        ),
                    });
                }
            }
            return self.wait_active(&name).await;
        }
        if !self.settings.create_tables {
            return Err(DynamoError::Table {
                table: name,
                message: "does not exist (create it, see docker/dynamodb-tables.yaml, or set \
                          dynamodb.create_tables = true)"
                    .into(),
            });
        }
        let mut attributes = std::collections::BTreeMap::new();
        let mut key = |(n, t): &(String, ScalarAttributeType), kind: KeyType| {
            attributes.insert(n.clone(), t.clone());
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(kind)
                .build()
                .expect("name and type set")
        };
        let mut schema = vec![key(&spec.partition_key, KeyType::Hash)];
        if let Some(s) = &spec.sort_key {
            schema.push(key(s, KeyType::Range));
        }
        let mut indexes = Vec::new();
        for (index, pk, sk) in &spec.indexes {
            let mut ks = vec![key(pk, KeyType::Hash)];
            if let Some(sk) = sk {
                ks.push(key(sk, KeyType::Range));
            }
            indexes.push(
                GlobalSecondaryIndex::builder()
                    .index_name(index)
                    .set_key_schema(Some(ks))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .expect("index name, key and projection set"),
            );
        }
        let definitions: Vec<AttributeDefinition> = attributes
            .into_iter()
            .map(|(n, t)| {
                AttributeDefinition::builder()
                    .attribute_name(n)
                    .attribute_type(t)
                    .build()
                    .expect("name and type set")
            })
            .collect();
        tracing::info!(table = %name, "creating dynamodb table");
        self.call(None, || async {
            let mut req = self
                .client
                .create_table()
                .table_name(&name)
                .billing_mode(BillingMode::PayPerRequest)
                .set_key_schema(Some(schema.clone()))
                .set_attribute_definitions(Some(definitions.clone()));
            if !indexes.is_empty() {
                req = req.set_global_secondary_indexes(Some(indexes.clone()));
            }
            match req.send().await {
                Ok(_) => Ok(()),
                // Another task or process created it meanwhile.
                Err(e) if error_code(&e).as_deref() == Some("ResourceInUseException") => Ok(()),
                Err(e) => Err(DynamoError::request(&name, "CreateTable", &e)),
            }
        })
        .await?;
        self.wait_active(&name).await
    }

    /// Waits (polling DescribeTable, up to the outage timeout) until `name` is active.
    async fn wait_active(&self, name: &str) -> Result<(), DynamoError> {
        use aws_sdk_dynamodb::types::TableStatus;
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let status = self
                .call(None, || async {
                    self.client
                        .describe_table()
                        .table_name(name)
                        .send()
                        .await
                        .map(|o| o.table.and_then(|t| t.table_status))
                        .map_err(|e| DynamoError::request(name, "DescribeTable", &e))
                })
                .await?;
            if status == Some(TableStatus::Active) {
                return Ok(());
            }
            if started.elapsed() > self.settings.outage_timeout {
                return Err(DynamoError::Table {
                    table: name.to_string(),
                    message: format!(
                        "not active after {:?} (status {status:?})",
                        started.elapsed()
                    ),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// The endpoint of the test server (`scripts/dynamodb start`), from
/// `TRIBUTARY_TEST_DYNAMODB`; tests needing DynamoDB fail with how to start it.
#[cfg(test)]
pub(crate) fn test_settings() -> DynamoSettings {
    let endpoint = std::env::var("TRIBUTARY_TEST_DYNAMODB").unwrap_or_else(|_| {
        panic!(
            "TRIBUTARY_TEST_DYNAMODB is not set: start the test server with \
             export TRIBUTARY_TEST_DYNAMODB=\"$(scripts/dynamodb start | tail -n 1)\" \
             (scripts/test does this)"
        )
    });
    // Credentials come from the SDK's default chain, as in production: scripts/test
    // exports AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (dynalite accepts any).
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    DynamoSettings {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
        table_prefix: format!("t{}_{nanos}_{n}_", std::process::id()),
        create_tables: true,
        max_attempts: 2,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
        outage_timeout: Duration::from_secs(30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unreachable endpoint is an outage (retried, then DDB002), not a refusal.
    #[tokio::test]
    async fn an_unreachable_endpoint_is_retried_until_the_outage_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let settings = DynamoSettings {
            endpoint: Some(format!("http://{addr}")),
            region: Some("us-east-1".into()),
            max_attempts: 1,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            outage_timeout: Duration::from_millis(200),
            table_prefix: String::new(),
            create_tables: false,
            request_timeout: Duration::from_secs(2),
        };
        let d = Dynamo::connect(&settings).await.unwrap();
        let probe = crate::health::Probe::detached("dynamodb");
        let mut attempts = 0;
        let e = d
            .call(Some(&probe), || {
                attempts += 1;
                async {
                    d.client
                        .list_tables()
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| DynamoError::request("-", "ListTables", &e))
                }
            })
            .await
            .unwrap_err();
        assert!(attempts > 2, "{attempts}");
        assert_eq!(e.code(), "DDB002", "{e}");
        assert!(e.to_string().contains("outage_timeout"), "{e}");
        assert!(matches!(
            probe.state(),
            crate::health::State::Retrying { .. }
        ));
    }
}
