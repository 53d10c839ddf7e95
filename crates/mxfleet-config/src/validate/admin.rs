//! The admin API: on when a token is set.

use super::Checker;
use crate::{AdminConfig, AdminSpec};

/// The admin API's settings, if it is on.
pub(super) fn resolve(check: &mut Checker<'_>, admin: &AdminConfig) -> Option<AdminSpec> {
    let token = check.secret("admin", "token", &admin.token, &admin.token_file);
    let bind = admin.bind.parse::<std::net::SocketAddr>();
    if bind.is_err() {
        check.fail(
            "admin.bind",
            "must be an address with a port, e.g. 127.0.0.1:8787",
        );
    }
    if let Ok(bind) = &bind
        && !bind.ip().is_loopback()
        && token.is_some()
    {
        check.warn(
            "admin.bind",
            "is not a loopback address: the admin API is plain HTTP; put it behind TLS",
        );
    }
    match (bind, token) {
        (Ok(bind), Some(token)) => Some(AdminSpec { bind, token }),
        _ => None,
    }
}
