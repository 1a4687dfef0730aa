//! Domain topics and several clusters: where a Kafka table's records live when it
//! names a business domain instead of a cluster and a topic.
//!
//! Owns the `[kafka]` configuration section (clusters, which cluster holds each domain,
//! the topic naming pattern) and resolving a table's `domain`/`event`/`cluster`
//! options against it. Invariants:
//! - A table gives either `topic` or `domain` (+ `event` when the pattern uses it);
//!   the topic name is the pattern with `{domain}` and `{event}` replaced and must be a
//!   legal Kafka topic name.
//! - The cluster is, in order: the table's `bootstrap_servers` (no cluster at all), its
//!   `cluster`, the cluster `[kafka.domains]` maps its domain to, `default_cluster`.
//!   A name that is not in `[kafka.clusters]` is refused at plan time.
//! - A cluster's `properties` (librdkafka settings: TLS, SASL…) apply before the
//!   table's own `kafka.*` options, which win.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

use super::super::Options;

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// The `[kafka]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// How a domain's event is named as a topic; `{domain}` and `{event}` are replaced.
    pub topic_naming: String,
    /// The cluster of domains not listed in `domains`; empty: none.
    #[serde(default)]
    pub default_cluster: String,
    /// Clusters by name.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Domain → cluster name.
    #[serde(default)]
    pub domains: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            topic_naming: "{domain}.{event}".into(),
            default_cluster: String::new(),
            clusters: BTreeMap::new(),
            domains: BTreeMap::new(),
        }
    }
}

/// One Kafka cluster (any Kafka-API service: Apache Kafka, MSK, Confluent, Redpanda).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub bootstrap_servers: String,
    /// librdkafka properties for every client of this cluster, e.g.
    /// `"security.protocol" = "SASL_SSL"`, `"sasl.mechanisms" = "SCRAM-SHA-512"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Checks that every cluster named by `domains` and `default_cluster` exists and
    /// that the naming pattern names the domain.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.topic_naming.contains("{domain}") {
            return Err(format!(
                "kafka.topic_naming = {:?} must contain {{domain}}",
                self.topic_naming
            ));
        }
        let known = || self.clusters.keys().cloned().collect::<Vec<_>>().join(", ");
        for (domain, cluster) in &self.domains {
            if !self.clusters.contains_key(cluster) {
                return Err(format!(
                    "kafka.domains.{domain} = {cluster:?}: no such cluster in [kafka.clusters] (known: {})",
                    known()
                ));
            }
        }
        if !self.default_cluster.is_empty() && !self.clusters.contains_key(&self.default_cluster) {
            return Err(format!(
                "kafka.default_cluster = {:?}: no such cluster in [kafka.clusters] (known: {})",
                self.default_cluster,
                known()
            ));
        }
        Ok(())
    }
}

/// Where a Kafka table's records are: client settings (bootstrap servers and
/// properties) and the topic.
pub(super) struct Endpoint {
    pub config: ClientConfig,
    pub topic: String,
}

fn legal_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Resolves `topic` or `domain`/`event`, and `bootstrap_servers` or `cluster`, of a
/// table against the configuration.
pub(super) fn endpoint(opts: &mut Options, kafka: &KafkaConfig) -> Result<Endpoint> {
    let topic = opts.get("topic");
    let domain = opts.get("domain");
    let event = opts.get("event");
    let topic = match (topic, &domain) {
        (Some(_), Some(d)) => {
            return Err(opts.invalid("domain", d, "give topic or domain (with event), not both"));
        }
        (Some(t), None) => {
            if let Some(e) = &event {
                return Err(opts.invalid("event", e, "event names a topic with domain"));
            }
            t
        }
        (None, Some(d)) => {
            let name = match (&event, kafka.topic_naming.contains("{event}")) {
                (Some(e), _) => kafka
                    .topic_naming
                    .replace("{domain}", d)
                    .replace("{event}", e),
                (None, false) => kafka.topic_naming.replace("{domain}", d),
                (None, true) => {
                    return Err(opts.invalid(
                        "domain",
                        d,
                        format!(
                            "topics are named {:?}: give the event too, e.g. event = 'placed'",
                            kafka.topic_naming
                        ),
                    ));
                }
            };
            if !legal_topic(&name) {
                return Err(opts.invalid(
                    "domain",
                    d,
                    format!(
                        "makes topic {name:?}, not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"
                    ),
                ));
            }
            name
        }
        (None, None) => {
            return Err(crate::connectors::ConnectorError::MissingOption {
                table: opts.table.clone(),
                connector: opts.connector.clone(),
                option: "topic (or domain and event)".into(),
            }
            .into());
        }
    };
    let servers = opts.get("bootstrap_servers");
    let named = opts.get("cluster");
    let mut config = ClientConfig::new();
    match (servers, named) {
        (Some(s), None) => {
            config.set("bootstrap.servers", s);
        }
        (Some(_), Some(c)) => {
            return Err(opts.invalid("cluster", &c, "give bootstrap_servers or cluster, not both"));
        }
        (None, named) => {
            let (name, option) = match (named, &domain) {
                (Some(c), _) => (c, "cluster"),
                (None, Some(d)) => match kafka.domains.get(d) {
                    Some(c) => (c.clone(), "domain"),
                    None if !kafka.default_cluster.is_empty() => {
                        (kafka.default_cluster.clone(), "domain")
                    }
                    None => {
                        return Err(opts.invalid(
                            "domain",
                            d,
                            "no cluster for this domain: map it in [kafka.domains], set \
                             kafka.default_cluster, or give cluster or bootstrap_servers",
                        ));
                    }
                },
                (None, None) if !kafka.default_cluster.is_empty() => {
                    (kafka.default_cluster.clone(), "cluster")
                }
                (None, None) => {
                    return Err(crate::connectors::ConnectorError::MissingOption {
                        table: opts.table.clone(),
                        connector: opts.connector.clone(),
                        option: "bootstrap_servers (or cluster)".into(),
                    }
                    .into());
                }
            };
            let Some(c) = kafka.clusters.get(&name) else {
                let known = kafka
                    .clusters
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(opts.invalid(
                    option,
                    &name,
                    format!("no cluster {name:?} in [kafka.clusters] (known: {known})"),
                ));
            };
            config.set("bootstrap.servers", &c.bootstrap_servers);
            for (k, v) in &c.properties {
                config.set(k, v);
            }
        }
    }
    Ok(Endpoint { config, topic })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KafkaConfig {
        let mut k = KafkaConfig::default();
        for (name, servers) in [("core", "core:9092"), ("mkt", "mkt:9092")] {
            k.clusters.insert(
                name.into(),
                ClusterConfig {
                    bootstrap_servers: servers.into(),
                    properties: [("security.protocol".to_string(), "SASL_SSL".to_string())].into(),
                },
            );
        }
        k.domains.insert("orders".into(), "core".into());
        k.domains.insert("marketing".into(), "mkt".into());
        k
    }

    fn opts(pairs: &[(&str, &str)]) -> Options {
        Options::new(
            "t",
            "kafka",
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_domain_names_the_topic_and_picks_its_cluster() {
        let k = config();
        let e = endpoint(
            &mut opts(&[("domain", "marketing"), ("event", "offer_triggered")]),
            &k,
        )
        .unwrap();
        assert_eq!(e.topic, "marketing.offer_triggered");
        assert_eq!(e.config.get("bootstrap.servers"), Some("mkt:9092"));
        assert_eq!(e.config.get("security.protocol"), Some("SASL_SSL"));
        let e = endpoint(
            &mut opts(&[
                ("domain", "orders"),
                ("event", "placed"),
                ("cluster", "mkt"),
            ]),
            &k,
        )
        .unwrap();
        assert_eq!(e.topic, "orders.placed");
        assert_eq!(
            e.config.get("bootstrap.servers"),
            Some("mkt:9092"),
            "cluster wins"
        );
        let mut custom = config();
        custom.topic_naming = "prod-{domain}-{event}-v1".into();
        let e = endpoint(
            &mut opts(&[("domain", "orders"), ("event", "paid")]),
            &custom,
        )
        .unwrap();
        assert_eq!(e.topic, "prod-orders-paid-v1");
    }

    #[test]
    fn explicit_servers_and_topic_need_no_configuration() {
        let e = endpoint(
            &mut opts(&[("bootstrap_servers", "h:1"), ("topic", "x")]),
            &KafkaConfig::default(),
        )
        .unwrap();
        assert_eq!(e.topic, "x");
        assert_eq!(e.config.get("bootstrap.servers"), Some("h:1"));
    }

    #[test]
    fn unknown_clusters_unmapped_domains_and_bad_names_are_refused() {
        let k = config();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("domain", "payments"), ("event", "paid")],
                "no cluster for this domain",
            ),
            (
                &[("topic", "x"), ("cluster", "nope")],
                "no cluster \"nope\"",
            ),
            (
                &[("domain", "orders"), ("event", "placed"), ("topic", "x")],
                "not both",
            ),
            (&[("domain", "orders")], "give the event too"),
            (
                &[("domain", "orders"), ("event", "pla ced")],
                "not a legal Kafka topic name",
            ),
            (&[("cluster", "core")], "topic (or domain and event)"),
        ];
        for (pairs, expected) in cases {
            let err = endpoint(&mut opts(pairs), &k).err().unwrap().to_string();
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn configuration_naming_missing_clusters_is_refused() {
        let mut k = config();
        k.domains.insert("app".into(), "ghost".into());
        assert!(k.validate().unwrap_err().contains("kafka.domains.app"));
        let mut k = config();
        k.default_cluster = "ghost".into();
        assert!(k.validate().unwrap_err().contains("default_cluster"));
        assert!(config().validate().is_ok());
    }
}
