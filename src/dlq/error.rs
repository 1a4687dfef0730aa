//! The dead-letter module's error type.

/// The dead-letter module's errors, each with a stable code (docs/errors.md).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DlqError {
    /// The store cannot be read or written (a file, a database, a broker).
    #[error("dead-letter store {store}: {message}")]
    Store { store: String, message: String },
    #[error("no dead letter {0}")]
    NotFound(String),
    /// The record cannot be replayed: it is not a record of a source table, or it was
    /// discarded.
    #[error("dead letter {id} cannot be replayed: {reason}")]
    NotReplayable { id: String, reason: String },
    /// An edited record that its table refuses.
    #[error("the edited record is refused: {0}")]
    InvalidEdit(String),
    /// An operation that changes data without the admin token, or with a wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// A filter or argument that means nothing (an unknown class, a bad time).
    #[error("{0}")]
    BadRequest(String),
    /// A bad record under the `fail` policy: the pipeline stops, naming it.
    #[error("bad record ({class}) at {node}: {message}")]
    Failed {
        node: String,
        class: &'static str,
        message: String,
    },
}

impl DlqError {
    pub fn code(&self) -> &'static str {
        match self {
            DlqError::Store { .. } => "DLQ001",
            DlqError::NotFound(_) => "DLQ002",
            DlqError::NotReplayable { .. } => "DLQ003",
            DlqError::InvalidEdit(_) => "DLQ004",
            DlqError::Unauthorized(_) => "DLQ005",
            DlqError::BadRequest(_) => "DLQ006",
            DlqError::Failed { .. } => "DLQ007",
        }
    }

    pub fn store(store: &str, message: impl std::fmt::Display) -> Self {
        DlqError::Store {
            store: store.to_string(),
            message: message.to_string(),
        }
    }
}
