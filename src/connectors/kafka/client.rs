//! The context the connector's Kafka clients are created with.
//!
//! librdkafka retries a refused authentication forever and reports it only to the
//! client's error callback; the calls that wait on the cluster just see a broken
//! transport or a timeout. [`Watch`] keeps that report, so the source fails at once
//! naming it instead of waiting as if the cluster were down, and the sink's errors
//! name it. Logging is librdkafka's default.

use std::sync::{Arc, Mutex};

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Keeps the latest refused authentication a client saw (see the module docs).
#[derive(Clone, Default)]
pub(super) struct Watch {
    refused: Arc<Mutex<Option<String>>>,
}

impl Watch {
    /// Why the cluster refused this client's credentials, if it did.
    pub(super) fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    /// `e`, with the refused authentication appended when there was one: a timeout
    /// then says why.
    pub(super) fn explain(&self, e: impl std::fmt::Display) -> String {
        match self.refused() {
            Some(why) => format!("{e} (the cluster refused authentication: {why})"),
            None => e.to_string(),
        }
    }
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication)
            && let Ok(mut refused) = self.refused.lock()
        {
            *refused = Some(reason.to_string());
        }
        DefaultClientContext.error(error, reason);
    }
}

impl ConsumerContext for Watch {}
