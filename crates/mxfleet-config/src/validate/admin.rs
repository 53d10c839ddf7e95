//! The admin API (on when a token is set) and the unauthenticated probe and metrics listeners
//! (on when they have an address).

use std::net::SocketAddr;

use super::Checker;
use crate::{AdminConfig, AdminSpec, ListenerConfig};

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

/// The address of an optional listener (`key`), if it has a valid one.
pub(super) fn listener(
    check: &mut Checker<'_>,
    key: &str,
    listener: &ListenerConfig,
) -> Option<SocketAddr> {
    let bind = listener.bind.as_deref()?;
    match bind.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            check.fail(key, "must be an address with a port, e.g. 0.0.0.0:9090");
            None
        }
    }
}

/// The admin API cannot share a port with the unauthenticated listeners (the probes and the
/// metrics may share one).
pub(super) fn check_ports(
    check: &mut Checker<'_>,
    admin: Option<&AdminSpec>,
    probes: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) {
    let Some(admin) = admin.filter(|a| a.bind.port() != 0) else {
        return;
    };
    for (key, addr) in [("probes.bind", probes), ("metrics.bind", metrics)] {
        if addr.is_some_and(|a| a.port() == admin.bind.port()) {
            check.fail(key, "must not use the admin API's port");
        }
    }
}
