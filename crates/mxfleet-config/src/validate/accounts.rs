//! Each `[accounts.<id>]`: its id and user, where it logs in, its credentials, its sync and
//! conversation settings; with its routes, a validated [`AccountSpec`].

use std::collections::BTreeMap;

use super::{
    Checker, default_device_id, is_room_ref, is_user_id, is_valid_account_id,
    routes::{self, Backends},
};
use crate::{
    AccessPolicy, AccountAuth, AccountConfig, AccountSpec, BackendSpec, Config, ConversationConfig,
    CredentialsConfig, OwnershipMode, ReloginMode, Secret,
};

/// The largest `max_media_bytes`: 1 GiB.
const MAX_MEDIA_BYTES: u64 = 1 << 30;

/// The valid accounts, by id (the invalid ones are reported).
pub(super) fn resolve(
    check: &mut Checker<'_>,
    raw: &Config,
    backends: &BTreeMap<String, BackendSpec>,
) -> BTreeMap<String, AccountSpec> {
    if raw.accounts.is_empty() {
        check.fail(
            "accounts",
            "no accounts are configured; add an [accounts.<id>] table",
        );
    }
    let backends = Backends {
        valid: backends,
        declared: &raw.backends,
    };
    let mut users: BTreeMap<&str, &str> = BTreeMap::new();
    let mut accounts = BTreeMap::new();
    for (id, account) in &raw.accounts {
        let key = format!("accounts.{id}");
        if let Some(user_id) = &account.login.user_id
            && let Some(other) = users.insert(user_id, id)
        {
            let message =
                format!("{user_id} is also used by account {other}; one account per user");
            check.fail(&format!("{key}.user_id"), &message);
        }
        if let Some(spec) = one(check, &key, id, account, &backends) {
            accounts.insert(id.clone(), spec);
        }
    }
    accounts
}

/// The account `id` at `key`, if it is valid.
fn one(
    check: &mut Checker<'_>,
    key: &str,
    id: &str,
    account: &AccountConfig,
    backends: &Backends<'_>,
) -> Option<AccountSpec> {
    let login = &account.login;
    check.require(
        is_valid_account_id(id),
        key,
        "account ids must be 1-64 characters of lower-case [a-z0-9_-] \
         (environment variables can only address lower-case ids)",
    );
    if let Some(user_id) = &login.user_id {
        check.require(
            is_user_id(user_id),
            &format!("{key}.user_id"),
            "must look like @name:server",
        );
    }
    let scheme_ok = matches!(login.homeserver.scheme(), "http" | "https");
    check.require(
        scheme_ok,
        &format!("{key}.homeserver"),
        "must be an http(s) URL",
    );
    let sync = &account.sync;
    check.require(
        (1..=300).contains(&sync.sync_timeout_secs),
        &format!("{key}.sync_timeout_secs"),
        "must be between 1 and 300",
    );
    check.range(
        &format!("{key}.sync_stall_secs"),
        sync.sync_stall_secs,
        1,
        86_400,
    );
    check.range(
        &format!("{key}.catch_up_max_age_secs"),
        sync.catch_up_max_age_secs,
        0,
        30 * 86_400,
    );
    check.require(
        (1..=1000).contains(&sync.sync_timeline_limit),
        &format!("{key}.sync_timeline_limit"),
        "must be between 1 and 1000",
    );
    check.require(
        sync.backfill_max_events <= 10_000,
        &format!("{key}.backfill_max_events"),
        "must be at most 10000",
    );
    let device_id = login
        .device_id
        .clone()
        .unwrap_or_else(|| default_device_id(id));
    check.require(
        !device_id.is_empty() && !device_id.chars().any(char::is_whitespace),
        &format!("{key}.device_id"),
        "must be non-empty and contain no whitespace",
    );
    let secrets = credentials(check, key, account);
    conversation(check, key, &account.conversation, login.enabled);
    let media = account.media.max_media_bytes;
    check.require(
        media == 0 || (1024..=MAX_MEDIA_BYTES).contains(&media),
        &format!("{key}.max_media_bytes"),
        &format!("must be 0 (no media at all) or between 1024 and {MAX_MEDIA_BYTES}"),
    );
    check.range(
        &format!("{key}.media_timeout_secs"),
        account.media.media_timeout_secs,
        1,
        3600,
    );
    check.range(
        &format!("{key}.verification_timeout_secs"),
        account.encryption.verification_timeout_secs,
        1,
        86_400,
    );
    let routes = routes::resolve(check, key, &account.answering, &account.media, backends);
    Some(AccountSpec {
        id: id.to_owned(),
        homeserver: login.homeserver.clone(),
        user_id: login.user_id.clone(),
        auth: secrets.auth?,
        device_id,
        device_display_name: login
            .device_display_name
            .clone()
            .unwrap_or_else(|| format!("mxfleet {id}")),
        encryption: account.encryption.clone(),
        recovery_key: secrets.recovery_key,
        store_passphrase: secrets.store_passphrase,
        backend_name: account.answering.backend.clone(),
        backend: routes.backend?,
        enabled: login.enabled,
        sync: sync.clone(),
        conversation: account.conversation.clone(),
        room_routes: routes.rooms,
        user_routes: routes.users,
        transcription: routes.transcription,
        max_media_bytes: account.media.max_media_bytes,
        media_timeout_secs: account.media.media_timeout_secs,
    })
}

/// An account's secrets, read.
struct Secrets {
    auth: Option<AccountAuth>,
    recovery_key: Option<Secret>,
    store_passphrase: Option<Secret>,
}

/// Reads the credentials of the account table `key`: exactly one of a password and an access
/// token, and the secrets beside them.
fn credentials(check: &mut Checker<'_>, key: &str, account: &AccountConfig) -> Secrets {
    let c: &CredentialsConfig = &account.credentials;
    let password = check.secret(key, "password", &c.password, &c.password_file);
    let has_password = c.password.is_some() || c.password_file.is_some();
    if account.encryption.ownership_mode == OwnershipMode::BotOwned && !has_password {
        check.fail(
            &format!("{key}.ownership_mode"),
            "bot_owned needs password login (the password answers the cross-signing upload)",
        );
    }
    if account.encryption.relogin == ReloginMode::Auto && !has_password {
        check.fail(
            &format!("{key}.relogin"),
            "auto needs password login (an access token cannot log in again by itself)",
        );
    }
    let token = check.secret(key, "access_token", &c.access_token, &c.access_token_file);
    let store_passphrase = check.secret(
        key,
        "store_passphrase",
        &c.store_passphrase,
        &c.store_passphrase_file,
    );
    let recovery_key = check.secret(key, "recovery_key", &c.recovery_key, &c.recovery_key_file);
    if let (Some(recovery), Some(password)) = (&recovery_key, &password)
        && recovery.expose() == password.expose()
    {
        check.fail(
            &format!("{key}.recovery_key"),
            "must not be the account password (a recovery key is its own secret)",
        );
    }
    let auth = match (password, token) {
        (Some(p), None) => {
            if account.login.user_id.is_none() {
                check.fail(&format!("{key}.user_id"), "is required for password login");
            }
            Some(AccountAuth::Password(p))
        }
        (None, Some(t)) => Some(AccountAuth::AccessToken(t)),
        (Some(_), Some(_)) => {
            check.fail(key, "set either a password or an access token, not both");
            None
        }
        (None, None) => {
            if c.password_file.is_none() && c.access_token_file.is_none() {
                check.fail(
                    key,
                    "needs credentials: password, password_file, access_token or access_token_file",
                );
            }
            None
        }
    };
    Secrets {
        auth,
        recovery_key,
        store_passphrase,
    }
}

/// Checks the conversation keys of the account table `key`; warns about settings that admit
/// nobody (only for an `enabled` account).
fn conversation(check: &mut Checker<'_>, key: &str, c: &ConversationConfig, enabled: bool) {
    for (i, user) in c.user_allowlist.iter().enumerate() {
        check.require(
            is_user_id(user),
            &format!("{key}.user_allowlist.{i}"),
            &format!("{user:?} is not a user id (@name:server)"),
        );
    }
    for (i, room) in c.room_allowlist.iter().enumerate() {
        check.require(
            is_room_ref(room),
            &format!("{key}.room_allowlist.{i}"),
            &format!(
                "{room:?} is not a room id (!id:server, or !id in room version 12) or alias \
                 (#name:server)"
            ),
        );
    }
    let ranges: [(bool, &str, &str); 14] = [
        (
            (1..=10_000).contains(&c.limits.per_sender_per_minute),
            "limits.per_sender_per_minute",
            "must be between 1 and 10000",
        ),
        (
            (1..=10_000).contains(&c.limits.per_room_per_minute),
            "limits.per_room_per_minute",
            "must be between 1 and 10000",
        ),
        (
            (10..=86_400).contains(&c.otp_ttl_secs),
            "otp_ttl_secs",
            "must be between 10 and 86400",
        ),
        (
            // Without a lockout, wrong codes could be tried as fast as messages can be sent.
            (1..=86_400).contains(&c.otp_cooldown_secs),
            "otp_cooldown_secs",
            "must be between 1 and 86400",
        ),
        (
            (1..=10_000).contains(&c.otp_challenges_per_hour),
            "otp_challenges_per_hour",
            "must be between 1 and 10000",
        ),
        (
            c.stream_min_initial_chars <= 10_000,
            "stream_min_initial_chars",
            "must be at most 10000",
        ),
        (
            (50..=60_000).contains(&c.edit_throttle_ms),
            "edit_throttle_ms",
            "must be between 50 and 60000",
        ),
        (
            (1..=1000).contains(&c.max_edits_per_message),
            "max_edits_per_message",
            "must be between 1 and 1000",
        ),
        (
            c.cue_delay_ms <= 600_000,
            "cue_delay_ms",
            "must be between 0 and 600000",
        ),
        (
            c.utd_notice_cooldown_secs <= 30 * 86_400,
            "utd_notice_cooldown_secs",
            "must be between 0 and 2592000",
        ),
        (
            (100..=1_000_000).contains(&c.max_answer_chars),
            "max_answer_chars",
            "must be between 100 and 1000000",
        ),
        (
            (1..=100).contains(&c.max_answer_parts),
            "max_answer_parts",
            "must be between 1 and 100",
        ),
        (
            c.history_max_messages <= 200,
            "history_max_messages",
            "must be at most 200",
        ),
        (
            c.ack_reaction.trim().chars().count() <= 16
                && !c.ack_reaction.trim().chars().any(char::is_control),
            "ack_reaction",
            "must be a short reaction key (an emoji) or empty",
        ),
    ];
    for (ok, field, message) in ranges {
        check.require(ok, &format!("{key}.{field}"), message);
    }
    if c.otp_self_approval && c.dm_policy != AccessPolicy::Allowlist {
        check.warn(
            &format!("{key}.otp_self_approval"),
            "has no effect unless dm_policy is \"allowlist\"",
        );
    }
    if enabled
        && c.dm_policy == AccessPolicy::Allowlist
        && c.user_allowlist.is_empty()
        && !c.otp_self_approval
    {
        check.warn(
            &format!("{key}.dm_policy"),
            "is \"allowlist\" but user_allowlist is empty: nobody can DM this bot",
        );
    }
    if enabled && c.room_policy == AccessPolicy::Allowlist && c.room_allowlist.is_empty() {
        check.warn(
            &format!("{key}.room_policy"),
            "is \"allowlist\" but room_allowlist is empty: the bot answers in no group room",
        );
    }
}
