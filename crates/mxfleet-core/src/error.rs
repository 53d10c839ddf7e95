//! The one error type of an account's actors: what went wrong, with its source, and what the
//! supervisor should do about it.
//!
//! Matrix failures carry their own class (retry, wait, re-login, give up); the others are
//! classified here, once, so the `AccountActor` decides from the type and never from a message.

use std::time::Duration;

use mxfleet_matrix::{FailureClass, MatrixFailure};
use mxfleet_store::{StoreError, StoreFault};

/// Why an account's work failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The homeserver or matrix-sdk failed; the failure says how to react.
    #[error(transparent)]
    Matrix(#[from] MatrixFailure),
    /// mxfleet's own database failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A child actor (or the account actor) is not there to take a request.
    #[error("the {0} is gone")]
    ChildGone(&'static str),
    /// A child actor did not answer a request in time.
    #[error("the {child} did not answer within {} s", after.as_secs())]
    ChildTimeout {
        /// Which child.
        child: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// A task of the account panicked.
    #[error("{0} panicked")]
    Panicked(&'static str),
}

impl AccountError {
    /// How the supervisor reacts: the Matrix class, or that of the other kinds. A full disk or
    /// an I/O failure of the database is a storage fault (the account waits `degraded`, with
    /// everything it claimed kept); a corrupt store ends the account; a missing, slow or
    /// crashed child is restarted after a backoff.
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Matrix(failure) => failure.class,
            Self::Store(e) => match e.fault() {
                StoreFault::Exhausted | StoreFault::Unavailable => FailureClass::Storage,
                StoreFault::Corrupt | StoreFault::Permanent => FailureClass::Fatal,
            },
            Self::ChildGone(_) | Self::ChildTimeout { .. } | Self::Panicked(_) => {
                FailureClass::Transient
            }
        }
    }

    /// Whether trying again (after a backoff) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.class(),
            FailureClass::Transient | FailureClass::RateLimited(_) | FailureClass::Storage
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn each_kind_says_whether_to_retry() {
        let cases = [
            (
                AccountError::from(MatrixFailure::new(FailureClass::Transient, "net")),
                true,
            ),
            (
                AccountError::from(MatrixFailure::new(FailureClass::RateLimited(None), "429")),
                true,
            ),
            (
                AccountError::from(MatrixFailure::new(
                    FailureClass::Auth { soft_logout: false },
                    "401",
                )),
                false,
            ),
            (
                AccountError::from(StoreError::Locked {
                    path: PathBuf::from("x"),
                }),
                false,
            ),
            (AccountError::ChildGone("stream editor"), true),
            (
                AccountError::ChildTimeout {
                    child: "OTP gate",
                    after: Duration::from_secs(10),
                },
                true,
            ),
            (AccountError::Panicked("the sync loop"), true),
        ];
        for (error, retry) in cases {
            assert_eq!(error.is_retryable(), retry, "{error}");
        }
        let full = StoreError::Io {
            path: PathBuf::from("x"),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(AccountError::from(full).class(), FailureClass::Storage);
        let corrupt = StoreError::CorruptDatabase {
            path: PathBuf::from("x"),
            detail: "bad".into(),
        };
        assert_eq!(AccountError::from(corrupt).class(), FailureClass::Fatal);
        let store = AccountError::from(StoreError::Task("cancelled".into()));
        assert_eq!(store.class(), FailureClass::Storage);
        assert!(
            std::error::Error::source(&store).is_some(),
            "keeps its source"
        );
    }
}
