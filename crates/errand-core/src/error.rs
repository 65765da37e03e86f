use thiserror::Error;

/// Why a raw queue entry is not a job Errand can run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadError {
    /// The text is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The JSON is valid but not an object.
    #[error("payload is not a JSON object")]
    NotAnObject,
    /// The `class` key is missing or not a string.
    #[error("payload has no string \"class\"")]
    MissingClass,
    /// The `args` key is missing or not an array.
    #[error("payload has no \"args\" array")]
    MissingArgs,
    /// Arguments could not be turned into JSON.
    #[error("arguments are not JSON-serializable: {0}")]
    NotSerializable(String),
    /// The encoded payload is larger than the configured limit.
    #[error("payload is {size} bytes, above the limit of {limit} bytes")]
    TooLarge {
        /// Size of the encoded payload.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The queue name is empty.
    #[error("queue name is empty")]
    EmptyQueue,
}

/// An infrastructure failure in a backend (not a job's own failure).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The backend could not be reached or the connection broke.
    #[error("backend connection")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered with an error.
    #[error("backend command failed")]
    Command(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A payload could not be encoded or decoded.
    #[error("payload")]
    Payload(#[from] PayloadError),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The backend does not provide this topic of the contract (see
    /// [`crate::broker::Coordination::capabilities`]).
    #[error("this backend does not support {0}")]
    Unsupported(&'static str),
    /// A batch cannot take new members: it does not exist (or expired), or it has completed.
    #[error("batch {0} does not exist or has completed")]
    BatchClosed(String),
}

/// Result of a backend operation.
pub type BrokerResult<T> = Result<T, BrokerError>;

impl BrokerError {
    /// True when retrying the operation after reconnecting may succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, BrokerError::Connection(_))
    }
}
