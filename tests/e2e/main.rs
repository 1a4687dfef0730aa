//! End-to-end tests: they run the real `tributary` binary on temporary directories and
//! check its outputs, exit codes and messages. One test binary on purpose (each test
//! binary links DataFusion; see docs/adr/0002-build-cost.md).

#![allow(unreachable_pub)]

mod common;

mod analytics;
mod checkpoints;
mod cli_errors;
mod cli_help;
mod cli_pipes;
mod custom_operator;
mod dead_letter_classes;
mod dead_letters;
mod doc_examples;
mod docker_config;
mod docs;
mod dynamodb;
mod fallback;
mod fallback_chaos;
mod kafka;
mod kafka_faults;
mod layout;
mod lifecycle;
mod lookup;
mod nexmark_suite;
mod operations;
mod query;
mod registry;
mod registry_outage;
mod scripts_run;
mod serving;
mod sinks;
mod source_outage;
mod sql_oracle;
mod webhook;
mod windows;
