//! What a Matrix failure means for the supervisor: retry, wait, re-login, or give up.

use std::{fmt, time::Duration};

use matrix_sdk::{
    HttpError,
    ruma::api::error::{ErrorKind, RetryAfter},
};

/// The longest wait a homeserver's `retry_after` can impose; a larger one (or a date far ahead)
/// is taken as this, so no arithmetic on it can overflow and no account sleeps for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The retry meaning of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Network trouble or a server error: retry after a backoff.
    Transient,
    /// `M_LIMIT_EXCEEDED`: retry, not before the given delay.
    RateLimited(Option<Duration>),
    /// The credentials are no longer accepted. With `soft_logout`, a password login into the
    /// same device may recover; otherwise the account is `auth_failed`.
    Auth {
        /// The server's `soft_logout` flag.
        soft_logout: bool,
    },
    /// Local storage is exhausted (disk full, quota spent): the account is `degraded` and
    /// retries once space returns; nothing it claimed is lost.
    Storage,
    /// Something retrying will not fix (a corrupt or mismatched store, a bad request).
    Fatal,
}

/// A classified Matrix failure, with an operator-readable message free of secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MatrixFailure {
    /// How to react.
    pub class: FailureClass,
    /// What happened.
    pub message: String,
}

impl MatrixFailure {
    /// A failure of the given class.
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }

    /// Classifies a matrix-sdk error.
    pub fn from_sdk(context: &str, error: &matrix_sdk::Error) -> Self {
        let class = match error {
            // matrix-sdk's sqlite stores on a full disk: "database or disk is full".
            _ if storage_exhausted(error) => FailureClass::Storage,
            matrix_sdk::Error::Http(http) => classify_http(http),
            matrix_sdk::Error::AuthenticationRequired => FailureClass::Auth { soft_logout: false },
            matrix_sdk::Error::Io(_) => FailureClass::Transient,
            _ => FailureClass::Fatal,
        };
        Self::new(class, format!("{context}: {error}"))
    }

    /// Classifies a matrix-sdk HTTP error.
    pub fn from_http(context: &str, error: &HttpError) -> Self {
        Self::new(classify_http(error), format!("{context}: {error}"))
    }
}

/// Whether `error` (or one of its sources) says the disk or quota is full.
pub fn storage_exhausted(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if [
            "disk is full",
            "No space left on device",
            "os error 28",
            "Disk quota exceeded",
        ]
        .iter()
        .any(|needle| text.contains(needle))
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn classify_kind(kind: &ErrorKind, server_error: bool) -> FailureClass {
    match kind {
        ErrorKind::UnknownToken(data) => FailureClass::Auth {
            soft_logout: data.soft_logout,
        },
        ErrorKind::MissingToken | ErrorKind::UserDeactivated | ErrorKind::UserLocked => {
            FailureClass::Auth { soft_logout: false }
        }
        // A forbidden *login* means bad credentials; elsewhere it is a permission problem that
        // retrying will not fix either.
        ErrorKind::Forbidden => FailureClass::Auth { soft_logout: false },
        ErrorKind::LimitExceeded(data) => FailureClass::RateLimited(
            match &data.retry_after {
                Some(RetryAfter::Delay(delay)) => Some(*delay),
                Some(RetryAfter::DateTime(at)) => {
                    at.duration_since(std::time::SystemTime::now()).ok()
                }
                None => None,
            }
            .map(|wait| wait.min(MAX_RETRY_AFTER)),
        ),
        _ if server_error => FailureClass::Transient,
        _ => FailureClass::Fatal,
    }
}

fn classify_http(error: &HttpError) -> FailureClass {
    if let Some(kind) = error.client_api_error_kind() {
        let server_error = error
            .as_client_api_error()
            .is_some_and(|e| e.status_code.is_server_error());
        return classify_kind(kind, server_error);
    }
    match error {
        HttpError::Reqwest(_) => FailureClass::Transient,
        HttpError::RefreshToken(_) => FailureClass::Auth { soft_logout: false },
        // A proxy's 502, an HTML error page or a truncated body carries no Matrix error kind.
        HttpError::Api(_) => FailureClass::Transient,
        _ => FailureClass::Fatal,
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient => f.write_str("transient"),
            Self::RateLimited(Some(d)) => write!(f, "rate limited ({} ms)", d.as_millis()),
            Self::RateLimited(None) => f.write_str("rate limited"),
            Self::Auth { soft_logout: true } => f.write_str("soft logout"),
            Self::Auth { soft_logout: false } => f.write_str("authentication failed"),
            Self::Storage => f.write_str("storage exhausted"),
            Self::Fatal => f.write_str("fatal"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use matrix_sdk::ruma::api::error::LimitExceededErrorData;

    use super::*;

    fn limited(retry_after: Option<RetryAfter>) -> FailureClass {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = retry_after;
        classify_kind(&ErrorKind::LimitExceeded(data), false)
    }

    #[test]
    fn a_server_asking_for_forever_gets_an_hour_at_most() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100);
        for (retry_after, expected) in [
            (
                Some(RetryAfter::Delay(Duration::MAX)),
                Some(MAX_RETRY_AFTER),
            ),
            (
                Some(RetryAfter::Delay(Duration::from_secs(3))),
                Some(Duration::from_secs(3)),
            ),
            (Some(RetryAfter::DateTime(far)), Some(MAX_RETRY_AFTER)),
            (Some(RetryAfter::DateTime(SystemTime::UNIX_EPOCH)), None),
            (None, None),
        ] {
            assert_eq!(
                limited(retry_after),
                FailureClass::RateLimited(expected),
                "{retry_after:?}"
            );
        }
    }
}
