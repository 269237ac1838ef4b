//! The indexer's one error type.

/// What can go wrong in the indexer; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ledger (SQLite) refused an operation.
    #[error("ledger: {0}")]
    Ledger(String),
    /// The ledger's disk (or its `--ledger-max-mb` quota) is full: nothing was committed and
    /// nothing is lost — nodes keep what was not acknowledged and send it again.
    #[error(
        "the ledger is full ({0}): free disk space under it or raise --ledger-max-mb; nodes keep \
         their reports and send them again"
    )]
    LedgerFull(String),
    /// The ledger was written under other tally rules; its epochs would not match.
    #[error(
        "the ledger was written under other tally rules ({ledger}); these are {given}. Start with the \
         same --epoch-ms/--slot-ms/reward flags, or point --ledger at a new file"
    )]
    RulesChanged {
        /// Rules stored in the ledger (JSON).
        ledger: String,
        /// Rules given now (JSON).
        given: String,
    },
    /// The orchestrator (the node registry) cannot be reached.
    #[error("orchestrator: {0}")]
    Orchestrator(String),
    /// A request field is wrong; names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such epoch or payout.
    #[error("{0} not found")]
    NotFound(String),
}

/// Results in the indexer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::Orchestrator(_) => tonic::Status::unavailable(msg),
            Error::LedgerFull(_) => tonic::Status::resource_exhausted(msg),
            Error::Ledger(_) | Error::RulesChanged { .. } => tonic::Status::internal(msg),
        }
    }
}
