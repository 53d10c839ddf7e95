//! Validation after merging: named passes over the raw configuration, each reporting every
//! problem it finds with its key and origin, together building the [`ValidConfig`].
//!
//! - [`restart`]: the restart schedule and the shutdown deadline;
//! - [`backends`]: each `[backends.<name>]`, secrets read;
//! - [`accounts`]: each `[accounts.<id>]`: identity, credentials, sync, conversation, media;
//! - [`routes`]: which backend answers an account, a room, a user, and who transcribes;
//! - [`admin`]: the admin API;
//! - [`shard`]: which accounts this replica runs, and the other replicas' bots.

mod accounts;
mod admin;
mod backends;
mod restart;
mod routes;
mod shard;

use std::path::{Path, PathBuf};

use figment::Figment;

use crate::{BackendSpec, Config, ConfigIssue, Secret, ValidConfig, origin::describe_origin};

/// Runs every pass over `raw`; problems go to `issues`, warnings into the result.
pub(crate) fn validate(
    raw: &Config,
    figment: &Figment,
    config_file: &Option<PathBuf>,
    issues: &mut Vec<ConfigIssue>,
) -> ValidConfig {
    let mut check = Checker {
        figment,
        issues,
        warnings: Vec::new(),
        secret_files: Vec::new(),
    };
    restart::check(&mut check, raw);
    let backends = backends::resolve(&mut check, &raw.backends);
    let accounts = accounts::resolve(&mut check, raw, &backends);
    let admin = admin::resolve(&mut check, &raw.admin);
    let probes = admin::listener(&mut check, "probes.bind", &raw.probes);
    let metrics = admin::listener(&mut check, "metrics.bind", &raw.metrics);
    admin::check_ports(&mut check, admin.as_ref(), probes, metrics);
    let (mut accounts, peers) = shard::split(&mut check, raw.shard, accounts);
    let hidden = hidden_from_agents(raw, config_file, &check.secret_files);
    for account in accounts.values_mut() {
        for spec in account.backends_mut() {
            if let BackendSpec::Command { isolation, .. } = spec {
                isolation.hidden.clone_from(&hidden);
            }
        }
    }
    ValidConfig {
        data_dir: raw.data_dir.clone(),
        log: raw.log.clone(),
        shutdown_timeout_secs: raw.shutdown_timeout_secs,
        shutdown_drain_secs: raw.shutdown_drain_secs,
        inbox_retention_days: raw.inbox_retention_days,
        blocking_threads: raw.blocking_threads,
        store_page_cache_kib: raw.store_page_cache_kib,
        restart: raw.restart.clone(),
        admin,
        probes,
        metrics,
        accounts,
        shard: raw.shard,
        peers,
        config_file: config_file.clone(),
        warnings: std::mem::take(&mut check.warnings),
    }
}

/// What the passes report through: problems (with origins looked up in the merged layers) and
/// warnings.
pub(crate) struct Checker<'a> {
    figment: &'a Figment,
    issues: &'a mut Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
    /// Every secret file read, to be hidden from sandboxed agents.
    secret_files: Vec<PathBuf>,
}

impl Checker<'_> {
    /// Reports a problem with `key`.
    pub(crate) fn fail(&mut self, key: &str, message: &str) {
        let origin = self.origin(key);
        self.issues.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
            origin,
        });
    }

    /// Reports a problem with `key` unless `ok`.
    pub(crate) fn require(&mut self, ok: bool, key: &str, message: &str) {
        if !ok {
            self.fail(key, message);
        }
    }

    /// Requires `lo <= value <= hi` ("must be between lo and hi"): every number the runtime
    /// turns into a duration, a size or a count has an upper bound, so none overflows.
    pub(crate) fn range<T: PartialOrd + std::fmt::Display>(
        &mut self,
        key: &str,
        value: T,
        lo: T,
        hi: T,
    ) {
        let ok = lo <= value && value <= hi;
        self.require(ok, key, &format!("must be between {lo} and {hi}"));
    }

    /// Warns about `key`: valid, but probably not what was meant.
    pub(crate) fn warn(&mut self, key: &str, message: &str) {
        let origin = self.origin(key);
        self.warnings.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
            origin,
        });
    }

    /// Resolves a secret given inline or as `<name>_file`; reports both-set, unreadable, empty.
    pub(crate) fn secret(
        &mut self,
        table: &str,
        name: &str,
        inline: &Option<Secret>,
        file: &Option<PathBuf>,
    ) -> Option<Secret> {
        let key = format!("{table}.{name}");
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.fail(&key, &format!("set either {name} or {name}_file, not both"));
                None
            }
            (Some(secret), None) if secret.is_empty() => {
                self.fail(&key, "is empty");
                None
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => {
                self.secret_files.push(path.clone());
                match read_secret_file(path) {
                    Ok(secret) => Some(secret),
                    Err(message) => {
                        self.fail(&format!("{table}.{name}_file"), &message);
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }

    /// Where `key`'s value came from; a list item (`….room_allowlist.0`) from where its list did.
    fn origin(&self, key: &str) -> String {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let mut lookup = key;
        loop {
            if let Some(md) = self.figment.find_metadata(lookup) {
                return describe_origin(md, &path);
            }
            match lookup.rsplit_once('.') {
                Some((parent, last)) if last.chars().all(|c| c.is_ascii_digit()) => lookup = parent,
                _ => return "built-in default".to_owned(),
            }
        }
    }
}

/// The paths a sandboxed agent must not see, made absolute: the data directory, the
/// configuration file and every secret file.
fn hidden_from_agents(
    raw: &Config,
    config_file: &Option<PathBuf>,
    secret_files: &[PathBuf],
) -> Vec<PathBuf> {
    let mut hidden: Vec<PathBuf> = std::iter::once(&raw.data_dir)
        .chain(config_file)
        .chain(secret_files)
        .map(|path| std::path::absolute(path).unwrap_or_else(|_| path.clone()))
        .collect();
    hidden.sort();
    hidden.dedup();
    hidden
}

/// The replica (of `count`) that runs `account_id`: FNV-1a (64 bit) of the id, modulo `count`.
/// Stable across versions and machines, so every replica agrees without talking to the others.
pub fn shard_of(account_id: &str, count: u32) -> u32 {
    let hash = account_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

/// The device id a password account uses unless `device_id` is set.
pub fn default_device_id(account_id: &str) -> String {
    format!(
        "MXFLEET_{}",
        account_id.to_ascii_uppercase().replace('-', "_")
    )
}

/// Whether `id` is a valid account id: 1–64 characters of `[a-z0-9_-]`.
pub fn is_valid_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `s` looks like a Matrix user id.
pub(crate) fn is_user_id(s: &str) -> bool {
    s.len() > 3 && s.strip_prefix('@').is_some_and(|rest| rest.contains(':'))
}

/// A room alias (`#name:server`) or room id: `!opaque:server`, or `!` and the unpadded
/// URL-safe base64 hash that room version 12 ids are made of.
pub(crate) fn is_room_ref(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('!').or_else(|| s.strip_prefix('#')) else {
        return false;
    };
    let has_server = rest
        .split_once(':')
        .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty());
    let v12_id = s.starts_with('!')
        && rest.len() >= 16
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    !s.contains(char::is_whitespace) && (has_server || v12_id)
}

/// The secret in `path`, without its trailing newline.
fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(trimmed))
}
