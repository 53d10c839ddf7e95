//! Building an account's client and getting it a session: restore first, log in only when needed.
//!
//! Synapse lets a handful of logins through and then trickles them, and every password login
//! without a known device id makes a new device. So a stored session is always restored; a
//! password login happens only for a brand-new account or after a soft logout, and always into
//! the account's stable device id.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use matrix_sdk::{
    Client, SessionMeta, SessionTokens, SqliteCryptoStore, SqliteStateStore, SqliteStoreConfig,
    authentication::matrix::MatrixSession,
    config::RequestConfig,
    cross_process_lock::CrossProcessLockConfig,
    encryption::{BackupDownloadStrategy, EncryptionSettings},
    ruma::{
        OwnedDeviceId, OwnedUserId,
        api::client::{
            session::login,
            uiaa::{MatrixUserIdentifier, UserIdentifier},
        },
    },
    store::StoreConfig,
};
use mxfleet_config::{AccountAuth, AccountSpec};
use mxfleet_store::{DirLock, Store, StoreError, StoredSession, now_ms};
use serde::Deserialize;
use tracing::{info, warn};

use crate::{FailureClass, MatrixFailure, login_pace, opening};

/// Per-request timeout; a sync adds its long-poll timeout on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Retries matrix-sdk does on its own (429 with `retry_after`, 5xx) before we see the error.
const SDK_RETRY_LIMIT: usize = 2;

/// A client with a live session.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client.
    pub client: Client,
    /// The bot's user id.
    pub user_id: OwnedUserId,
    /// The bot's device id.
    pub device_id: OwnedDeviceId,
    /// Whether this connection made a `/login` call (false when a session was restored).
    pub logged_in: bool,
}

/// Where an account keeps its matrix-sdk stores.
pub fn account_dir(data_dir: &std::path::Path, account: &str) -> PathBuf {
    data_dir.join("accounts").join(account)
}

/// Builds the client of `spec` and restores or creates its session.
///
/// The account's store directory is locked for as long as the returned client (or any clone of
/// it) lives: a second client of the same account, such as one built while a replaced one is
/// still shutting down, fails with a transient error instead of running a second Olm machine
/// on the same device.
pub async fn connect(
    spec: &AccountSpec,
    store: &Store,
    data_dir: &std::path::Path,
) -> Result<Connection, MatrixFailure> {
    let lock = lock_account(data_dir, &spec.id)?;
    let store_dir = account_dir(data_dir, &spec.id).join("matrix");
    // Checked before the client is built: building creates the store files, and a fresh crypto
    // store under a known device would give that device a second identity.
    let crypto_store_existed = store_dir.join(CRYPTO_STORE_FILE).exists();
    let stored = store.session(&spec.id).await.map_err(store_error)?;
    let relogin = store
        .relogin_requested(&spec.id)
        .await
        .map_err(store_error)?
        .is_some();
    if let (AccountAuth::Password(_), Some(session), false, false) = (
        &spec.auth,
        &stored,
        crypto_store_existed,
        spec.encryption.allow_new_device,
    ) {
        return Err(MatrixFailure::new(
            FailureClass::Fatal,
            format!(
                "the crypto store of device {} is missing ({} has no {CRYPTO_STORE_FILE}): the \
                 device's encryption keys are lost. Restore the store from a backup, run \
                 `mxfleet relogin {}` to log in as a new device, or set allow_new_device = true",
                session.device_id,
                store_dir.display(),
                spec.id,
            ),
        ));
    }
    // Opening the stores and, for a restored session, loading the device's keys: a place among
    // the few accounts doing that at once. A login gives its place back before it waits for
    // the homeserver.
    let opening = opening::place().await;
    let client = build_client(spec, store, &store_dir).await?;
    // The lock lives as long as the client's last clone.
    client.add_event_handler_context(AccountLock(Arc::new(lock)));
    save_rotated_tokens(&client, store, &spec.id)?;

    let login = |device_id: String, fresh_keys: bool| Login {
        device_id,
        fresh_keys,
    };
    match (&spec.auth, stored) {
        (AccountAuth::Password(password), Some(session)) if !crypto_store_existed => {
            drop(opening);
            let device_id = new_device_id(&spec.device_id);
            warn!(
                old_device = %session.device_id,
                new_device = %device_id,
                "crypto store lost; allow_new_device is set: logging in as a new device"
            );
            store.delete_session(&spec.id).await.map_err(store_error)?;
            // The new stores know no room yet: a full sync teaches them.
            store
                .forget_sync_position(&spec.id)
                .await
                .map_err(store_error)?;
            let login = login(device_id, false);
            login_with_password(spec, store, client, password.expose(), login).await
        }
        (AccountAuth::Password(_), Some(session)) if !session.needs_relogin => {
            let restored = restore(client, session).await;
            drop(opening);
            restored
        }
        (AccountAuth::Password(password), Some(session)) => {
            drop(opening);
            // After a soft logout, log into the device we already have keys for.
            let login = login(session.device_id, false);
            login_with_password(spec, store, client, password.expose(), login).await
        }
        (AccountAuth::Password(password), None) if relogin => {
            drop(opening);
            let device_id = new_device_id(&spec.device_id);
            info!(new_device = %device_id, "re-login requested: logging in as a new device");
            let login = login(device_id, false);
            login_with_password(spec, store, client, password.expose(), login).await
        }
        (AccountAuth::Password(password), None) => {
            drop(opening);
            // No session: whatever crypto store there is holds no keys of ours for the device
            // (at most an empty one from an attempt that failed), so the device must be free.
            let login = login(spec.device_id.clone(), true);
            login_with_password(spec, store, client, password.expose(), login).await
        }
        (AccountAuth::AccessToken(token), Some(session))
            if session.access_token == token.expose() =>
        {
            let restored = restore(client, session).await;
            drop(opening);
            restored
        }
        (AccountAuth::AccessToken(token), _) => {
            drop(opening);
            adopt_access_token(spec, store, client, token.expose()).await
        }
    }
}

/// Gets an account ready for `mxfleet relogin`: its matrix-sdk stores are moved aside (kept
/// for forensics as `matrix.replaced-<unix secs>`), its session is dropped, and its next
/// connect logs in as a new device. Fails with a transient error while a client of the
/// account still runs.
pub async fn prepare_relogin(
    store: &Store,
    data_dir: &std::path::Path,
    account: &str,
) -> Result<(), MatrixFailure> {
    let _lock = lock_account(data_dir, account)?;
    let store_dir = account_dir(data_dir, account).join("matrix");
    if store_dir.exists() {
        let aside = store_dir.with_file_name(format!("matrix.replaced-{}", now_ms() / 1000));
        std::fs::rename(&store_dir, &aside).map_err(|e| {
            MatrixFailure::new(
                FailureClass::Fatal,
                format!("moving {} aside: {e}", store_dir.display()),
            )
        })?;
        info!(moved_to = %aside.display(), "the old device's stores are kept aside");
    }
    store
        .request_relogin(account, now_ms())
        .await
        .map_err(store_error)
}

/// The account's store lock, kept in its client (see [`connect`]).
#[derive(Debug, Clone)]
struct AccountLock(#[allow(dead_code)] Arc<DirLock>);

/// How a password login goes.
struct Login {
    /// The device to log into.
    device_id: String,
    /// Whether the crypto store is new: the device must not have keys on the server yet.
    fresh_keys: bool,
}

/// Takes the account's store lock.
fn lock_account(data_dir: &std::path::Path, account: &str) -> Result<DirLock, MatrixFailure> {
    DirLock::acquire(&account_dir(data_dir, account), ACCOUNT_LOCK_FILE).map_err(|e| match e {
        StoreError::Locked { path } => MatrixFailure::new(
            FailureClass::Transient,
            format!(
                "the account's stores are still in use by a previous client ({} is locked); \
                 waiting for it to stop",
                path.display()
            ),
        ),
        other => store_error(other),
    })
}

/// The holder name matrix-sdk's own builder gives its cross-process store locks.
const STORE_LOCK_HOLDER: &str = "main";

/// Builds the account's client on its encrypted sqlite stores.
async fn build_client(
    spec: &AccountSpec,
    store: &Store,
    store_dir: &std::path::Path,
) -> Result<Client, MatrixFailure> {
    let mut store_config = SqliteStoreConfig::with_low_memory_config(store_dir)
        .cache_size(crate::sqlite_tuning::page_cache_bytes());
    store_config = match &spec.store_passphrase {
        Some(passphrase) => store_config.passphrase(Some(passphrase.expose())),
        None => {
            let secret = store
                .store_passphrase(&spec.id, generate_store_key)
                .await
                .map_err(store_error)?;
            match parse_store_key(&secret) {
                Some(key) => store_config.key(Some(&key)),
                None => store_config.passphrase(Some(&secret)),
            }
        }
    };
    let mut builder = Client::builder().http_client(shared_http_client()?);
    if matches!(spec.auth, AccountAuth::Password(_)) {
        // Expired access tokens are refreshed (and the new ones saved before use, below).
        builder = builder.handle_refresh_tokens();
    }
    builder
        .homeserver_url(spec.homeserver.as_str())
        // The configured URL is authoritative: a fresh login must not switch to the server's
        // advertised base URL while restored sessions use the configured one.
        .respect_login_well_known(false)
        // Keys for a message that fails to decrypt are fetched from the server-side key backup
        // (once the backup key is known, after a recovery-key import).
        .with_encryption_settings(EncryptionSettings {
            backup_download_strategy: BackupDownloadStrategy::AfterDecryptionFailure,
            ..EncryptionSettings::default()
        })
        .store_config(open_stores(&store_config, store_dir).await?)
        .request_config(
            RequestConfig::new()
                .timeout(REQUEST_TIMEOUT)
                .retry_limit(SDK_RETRY_LIMIT),
        )
        .build()
        .await
        .map_err(|e| cannot_open_store(store_dir, &e))
}

/// The account's stores: state and crypto in sqlite, where a restart finds them; the event
/// cache and the media cache in memory. A bot subscribes to neither (its history comes from the
/// sync and `/messages`, its media downloads bypass matrix-sdk's cache), so those two stay
/// empty, and not opening them saves two sqlite pools per account — about half an account's
/// sqlite memory (docs/benchmarks.md, run 6).
async fn open_stores(
    config: &SqliteStoreConfig,
    store_dir: &std::path::Path,
) -> Result<StoreConfig, MatrixFailure> {
    crate::sqlite_tuning::tune_once();
    let (state, crypto) = tokio::try_join!(
        SqliteStateStore::open_with_config(config),
        SqliteCryptoStore::open_with_config(config),
    )
    .map_err(|e| cannot_open_store(store_dir, &e))?;
    Ok(
        StoreConfig::new(CrossProcessLockConfig::multi_process(STORE_LOCK_HOLDER))
            .state_store(state)
            .crypto_store(crypto),
    )
}

/// The failure of opening the stores in `store_dir`: fatal, the account cannot run without them.
fn cannot_open_store(store_dir: &std::path::Path, error: &dyn std::fmt::Display) -> MatrixFailure {
    MatrixFailure::new(
        FailureClass::Fatal,
        format!(
            "cannot open the matrix store at {}: {error}",
            store_dir.display()
        ),
    )
}

/// The HTTP client every account's Matrix client uses: one connection pool per homeserver and
/// one TLS configuration (the parsed root certificates) for the whole process, instead of one
/// of each per account. Configured as matrix-sdk configures its own (TLS 1.2 at least); the
/// per-request timeouts and retries stay in each client's `RequestConfig`.
fn shared_http_client() -> Result<reqwest::Client, MatrixFailure> {
    static SHARED: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = SHARED.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!("mxfleet/", env!("CARGO_PKG_VERSION")))
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .map_err(|e| {
            MatrixFailure::new(
                FailureClass::Fatal,
                format!("cannot set up the HTTP client: {e}"),
            )
        })?;
    Ok(SHARED.get_or_init(|| client).clone())
}

async fn restore(client: Client, session: StoredSession) -> Result<Connection, MatrixFailure> {
    let user_id = parse_user_id(&session.user_id)?;
    let device_id: OwnedDeviceId = session.device_id.as_str().into();
    let matrix_session = MatrixSession {
        meta: SessionMeta {
            user_id: user_id.clone(),
            device_id: device_id.clone(),
        },
        tokens: SessionTokens {
            access_token: session.access_token,
            refresh_token: session.refresh_token,
        },
    };
    client
        .restore_session(matrix_session)
        .await
        .map_err(|e| store_failure("restoring the session", &e))?;
    info!(user_id = %user_id, device_id = %device_id, "restored stored session");
    Ok(Connection {
        client,
        user_id,
        device_id,
        logged_in: false,
    })
}

/// Logs in with the password and hands the new session to `client`. The login is a plain
/// request, not matrix-sdk's: the client's Olm machine is only created once the device is known
/// to be free of someone else's keys.
async fn login_with_password(
    spec: &AccountSpec,
    store: &Store,
    client: Client,
    password: &str,
    login: Login,
) -> Result<Connection, MatrixFailure> {
    let Some(user) = spec.user_id.as_deref() else {
        return Err(MatrixFailure::new(
            FailureClass::Fatal,
            "password login needs user_id in the account's config",
        ));
    };
    let mut session = password_login(&client, spec, user, password, &login.device_id).await?;
    if login.fresh_keys && device_has_keys(&client, &session).await? {
        if !spec.encryption.allow_new_device {
            return Err(MatrixFailure::new(
                FailureClass::Fatal,
                format!(
                    "device {} of {} already has encryption keys on the homeserver, but this \
                     data_dir has no crypto store for it (a lost data_dir, or another process \
                     owns the device). Restore the data_dir, run `mxfleet relogin {}` to log \
                     in as a new device, or set allow_new_device = true",
                    session.device_id, session.user_id, spec.id
                ),
            ));
        }
        let device_id = new_device_id(&spec.device_id);
        warn!(
            old_device = %session.device_id,
            new_device = %device_id,
            "the device already has keys on the server; allow_new_device is set: logging in \
             as a new device"
        );
        session = password_login(&client, spec, user, password, &device_id).await?;
    }
    store
        .save_session(&spec.id, &session)
        .await
        .map_err(store_error)?;
    info!(user_id = %session.user_id, device_id = %session.device_id, "logged in with password");
    let mut connection = restore(client, session).await?;
    connection.logged_in = true;
    Ok(connection)
}

/// `POST /login` with the password into `device_id`, asking for a refresh token.
async fn password_login(
    client: &Client,
    spec: &AccountSpec,
    user: &str,
    password: &str,
    device_id: &str,
) -> Result<StoredSession, MatrixFailure> {
    let identifier = UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_owned()));
    let mut request = login::v3::Request::new(login::v3::LoginInfo::Password(
        login::v3::Password::new(identifier, password.to_owned()),
    ));
    request.device_id = Some(device_id.into());
    request.initial_device_display_name = Some(spec.device_display_name.clone());
    request.refresh_token = true;
    // Paced per homeserver; a 429 comes back at once (no retry of matrix-sdk's own) so that it
    // holds every login waiting for the homeserver.
    let once = RequestConfig::new()
        .timeout(REQUEST_TIMEOUT)
        .disable_retry();
    let response = login_pace::paced(spec.homeserver.as_str(), || {
        let request = request.clone();
        async move {
            client
                .send(request)
                .with_request_config(Some(once))
                .await
                .map_err(|e| MatrixFailure::from_http("password login", &e))
        }
    })
    .await?;
    Ok(StoredSession {
        user_id: response.user_id.to_string(),
        device_id: response.device_id.to_string(),
        access_token: response.access_token,
        refresh_token: response.refresh_token,
        needs_relogin: false,
    })
}

/// Whether the homeserver already holds device keys for the session's device.
async fn device_has_keys(client: &Client, session: &StoredSession) -> Result<bool, MatrixFailure> {
    let url = client
        .homeserver()
        .join("_matrix/client/v3/keys/query")
        .map_err(|e| MatrixFailure::new(FailureClass::Fatal, format!("homeserver URL: {e}")))?;
    let body = serde_json::json!({ "device_keys": { &session.user_id: [&session.device_id] } });
    let transient =
        |e: String| MatrixFailure::new(FailureClass::Transient, format!("keys query: {e}"));
    let response = client
        .http_client()
        .post(url)
        .bearer_auth(&session.access_token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| transient(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(transient(format!("HTTP {status}")));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transient(e.without_url().to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| transient(format!("bad response: {e}")))?;
    Ok(value["device_keys"][&session.user_id][&session.device_id].is_object())
}

async fn adopt_access_token(
    spec: &AccountSpec,
    store: &Store,
    client: Client,
    token: &str,
) -> Result<Connection, MatrixFailure> {
    #[derive(Deserialize)]
    struct WhoAmI {
        user_id: OwnedUserId,
        device_id: Option<OwnedDeviceId>,
    }
    let url = client
        .homeserver()
        .join("_matrix/client/v3/account/whoami")
        .map_err(|e| MatrixFailure::new(FailureClass::Fatal, format!("homeserver URL: {e}")))?;
    let response = client
        .http_client()
        .get(url)
        .bearer_auth(token)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            MatrixFailure::new(
                FailureClass::Transient,
                format!("whoami: {}", e.without_url()),
            )
        })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| {
        MatrixFailure::new(
            FailureClass::Transient,
            format!("whoami: {}", e.without_url()),
        )
    })?;
    if status.as_u16() == 401 || status.as_u16() == 403 {
        return Err(MatrixFailure::new(
            FailureClass::Auth { soft_logout: false },
            format!("whoami: the access token was rejected (HTTP {status})"),
        ));
    }
    if !status.is_success() {
        let class = if status.is_server_error() {
            FailureClass::Transient
        } else {
            FailureClass::Fatal
        };
        return Err(MatrixFailure::new(class, format!("whoami: HTTP {status}")));
    }
    let who: WhoAmI = serde_json::from_slice(&body).map_err(|e| {
        MatrixFailure::new(
            FailureClass::Transient,
            format!("whoami: bad response: {e}"),
        )
    })?;
    if let Some(expected) = spec
        .user_id
        .as_ref()
        .filter(|e| who.user_id.as_str() != e.as_str())
    {
        return Err(MatrixFailure::new(
            FailureClass::Fatal,
            format!(
                "the access token belongs to {}, not to the configured {expected}",
                who.user_id
            ),
        ));
    }
    let Some(device_id) = who.device_id else {
        return Err(MatrixFailure::new(
            FailureClass::Fatal,
            "the access token has no device (appservice tokens are not supported)",
        ));
    };
    warn!(
        user_id = %who.user_id,
        device_id = %device_id,
        "access-token login: this device's encryption keys are not ours, so encrypted rooms \
         cannot be read; use password login for encryption"
    );
    let session = StoredSession {
        user_id: who.user_id.to_string(),
        device_id: device_id.to_string(),
        access_token: token.to_owned(),
        refresh_token: None,
        needs_relogin: false,
    };
    store
        .save_session(&spec.id, &session)
        .await
        .map_err(store_error)?;
    restore(client, session).await
}

/// Makes matrix-sdk save every rotation of the session's tokens (a refresh) to mxfleet's store
/// the moment it happens, before the new access token is used: a process killed right after a
/// refresh restores the new tokens, not the old ones the homeserver no longer accepts.
fn save_rotated_tokens(client: &Client, store: &Store, account: &str) -> Result<(), MatrixFailure> {
    let (saver, reloader) = (store.clone(), store.clone());
    let (save_as, reload_as) = (account.to_owned(), account.to_owned());
    let save = Box::new(move |client: Client| {
        let (Some(meta), Some(tokens)) = (client.session_meta(), client.session_tokens()) else {
            return Ok(());
        };
        let session = StoredSession {
            user_id: meta.user_id.to_string(),
            device_id: meta.device_id.to_string(),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            needs_relogin: false,
        };
        saver.save_session_now(&save_as, &session)?;
        info!(account = %save_as, "access token refreshed; the new tokens are saved");
        Ok(())
    });
    let reload = Box::new(move |_client: Client| {
        let session = reloader
            .session_now(&reload_as)?
            .ok_or("no stored session to reload")?;
        Ok(SessionTokens {
            access_token: session.access_token,
            refresh_token: session.refresh_token,
        })
    });
    client
        .set_session_callbacks(reload, save)
        .map_err(|e| MatrixFailure::new(FailureClass::Fatal, format!("session callbacks: {e}")))
}

fn parse_user_id(raw: &str) -> Result<OwnedUserId, MatrixFailure> {
    raw.try_into().map_err(|e| {
        MatrixFailure::new(
            FailureClass::Fatal,
            format!("stored user id {raw:?} is invalid: {e}"),
        )
    })
}

/// Restore failures come from the local stores, not the network: the classic one is a crypto
/// store that belongs to another device.
fn store_failure(context: &str, error: &matrix_sdk::Error) -> MatrixFailure {
    let mut failure = MatrixFailure::from_sdk(context, error);
    if matches!(
        error,
        matrix_sdk::Error::CryptoStoreError(_) | matrix_sdk::Error::StateStore(_)
    ) {
        failure.class = FailureClass::Fatal;
        failure.message.push_str(
            " (the account's store under data_dir/accounts/<id>/matrix does not match its session; \
             see docs/operations.md)",
        );
    }
    failure
}

/// The lock file inside an account's directory.
const ACCOUNT_LOCK_FILE: &str = "account.lock";

/// A store failure while connecting: nothing the homeserver can fix.
fn store_error(error: StoreError) -> MatrixFailure {
    MatrixFailure::new(FailureClass::Fatal, error.to_string())
}

/// The crypto store's file inside an account's store directory.
const CRYPTO_STORE_FILE: &str = "matrix-sdk-crypto.sqlite3";

/// A fresh device id next to `base` (`<base>_<6 hex digits>`), for a replaced device.
fn new_device_id(base: &str) -> String {
    format!("{base}_{:06X}", rand::random::<u32>() & 0xFF_FFFF)
}

/// Prefix of a generated store key as kept in the database (`key:` + 64 hex digits).
const STORE_KEY_PREFIX: &str = "key:";

/// A random 256-bit store key. A random key needs no stretching, so the stores open without
/// PBKDF2 (200,000 rounds per store, four stores per account, at every start).
fn generate_store_key() -> String {
    let key: [u8; 32] = rand::random();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{STORE_KEY_PREFIX}{hex}")
}

/// The key in a stored `key:<hex>` secret; `None` for anything else (an older generated
/// passphrase, which keeps working as a passphrase).
fn parse_store_key(secret: &str) -> Option<[u8; 32]> {
    let hex = secret.strip_prefix(STORE_KEY_PREFIX)?;
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_account_in_use_is_neither_connected_twice_nor_moved_aside() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let matrix = account_dir(dir.path(), "a").join("matrix");
        std::fs::create_dir_all(&matrix).expect("store dir");

        let held = lock_account(dir.path(), "a").expect("first lock");
        let second = lock_account(dir.path(), "a").expect_err("a second client");
        assert_eq!(second.class, FailureClass::Transient);
        assert!(second.message.contains("still in use"), "{second}");
        let refused = prepare_relogin(&store, dir.path(), "a").await;
        assert!(refused.is_err_and(|e| e.class == FailureClass::Transient));
        assert!(matrix.exists(), "stores in use were moved");
        assert!(lock_account(dir.path(), "b").is_ok(), "accounts lock apart");

        drop(held);
        prepare_relogin(&store, dir.path(), "a")
            .await
            .expect("free now");
        assert!(!matrix.exists());
        assert!(store.relogin_requested("a").await.expect("read").is_some());
    }

    #[test]
    fn generated_store_keys_round_trip() {
        let secret = generate_store_key();
        let key = parse_store_key(&secret);
        assert!(key.is_some());
        assert_ne!(
            parse_store_key(&generate_store_key()),
            key,
            "keys are random"
        );
        assert_eq!(parse_store_key("an old alphanumeric passphrase"), None);
        assert_eq!(parse_store_key("key:zz"), None);
        assert_eq!(parse_store_key(&format!("key:{}", "g".repeat(64))), None);
    }
}
