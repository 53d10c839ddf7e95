//! `sdk-echo`: the benchmark's first anchor — a bare matrix-sdk echo fleet, the least a Rust bot
//! on the same SDK can do. Every account of `accounts.json` logs in (or restores its session),
//! opens matrix-sdk's sqlite stores with encryption on (the low-memory settings mxfleet uses),
//! joins the rooms it is invited to, and answers each text message from someone else with the
//! same text, from its own `sync_once` loop that long-polls at once after each response — the
//! loop mxfleet drives. After an account's first sync its user id is appended to the ready
//! file, which is how the benchmark driver sees the fleet up.
//!
//! Nothing here is mxfleet: no gate, no queue, no outbox, no cues, no history. It is the floor
//! the benchmark compares mxfleet against.
//!
//! ```text
//! sdk-echo <accounts.json> <ready-file>
//! accounts.json: [{"homeserver": "...", "user_id": "...", "password": "...", "store_dir": "..."}]
//! ```

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use matrix_sdk::{
    Client, Room, RoomState, SqliteStoreConfig,
    authentication::matrix::MatrixSession,
    config::SyncSettings,
    ruma::{
        api::client::filter::FilterDefinition,
        events::room::{
            member::StrippedRoomMemberEvent,
            message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
        },
    },
};
use serde::Deserialize;

/// One account of the anchor fleet.
#[derive(Debug, Deserialize)]
struct Account {
    homeserver: String,
    user_id: String,
    password: String,
    store_dir: PathBuf,
}

/// The long-poll timeout of every sync after the first.
const LONG_POLL: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(accounts), Some(ready)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: sdk-echo <accounts.json> <ready-file>");
    };
    let accounts: Vec<Account> = serde_json::from_str(&std::fs::read_to_string(&accounts)?)?;
    let ready = PathBuf::from(ready);
    let mut tasks = tokio::task::JoinSet::new();
    for account in accounts {
        let ready = ready.clone();
        tasks.spawn(async move {
            let user = account.user_id.clone();
            if let Err(e) = run(account, &ready).await {
                eprintln!("{user}: {e:#}");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Runs one account until its sync fails.
async fn run(account: Account, ready: &Path) -> Result<()> {
    let client = connect(&account).await?;
    client.add_event_handler(echo);
    client.add_event_handler(join_on_invite);
    let mut filter = FilterDefinition::with_lazy_loading();
    filter.room.timeline.limit = Some(50u32.into());
    let settings = SyncSettings::default().filter(filter.into());
    let mut response = client
        .sync_once(settings.clone().timeout(Duration::ZERO))
        .await?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ready)?;
    writeln!(file, "{}", account.user_id)?;
    loop {
        let next = settings
            .clone()
            .timeout(LONG_POLL)
            .token(response.next_batch.clone());
        response = client.sync_once(next).await?;
    }
}

/// A client on the account's stores, with its session restored or a fresh login saved.
async fn connect(account: &Account) -> Result<Client> {
    let stores = SqliteStoreConfig::with_low_memory_config(&account.store_dir);
    let client = Client::builder()
        .homeserver_url(&account.homeserver)
        .sqlite_store_with_config_and_cache_path(stores, None::<&Path>)
        .build()
        .await?;
    let session_file = account.store_dir.join("session.json");
    if let Ok(saved) = std::fs::read_to_string(&session_file) {
        let session: MatrixSession = serde_json::from_str(&saved)?;
        client.restore_session(session).await?;
    } else {
        client
            .matrix_auth()
            .login_username(&account.user_id, &account.password)
            .initial_device_display_name("sdk-echo")
            .await?;
        let session = client.matrix_auth().session().context("no session")?;
        std::fs::write(&session_file, serde_json::to_string(&session)?)?;
    }
    Ok(client)
}

/// Answers a text message from someone else with its own text.
async fn echo(event: OriginalSyncRoomMessageEvent, room: Room) {
    let MessageType::Text(text) = &event.content.msgtype else {
        return;
    };
    if Some(event.sender.as_ref()) == room.client().user_id() {
        return;
    }
    let content = RoomMessageEventContent::text_plain(text.body.clone());
    if let Err(e) = room.send(content).await {
        eprintln!("send failed: {e}");
    }
}

/// Joins the rooms the account is invited to.
async fn join_on_invite(event: StrippedRoomMemberEvent, room: Room, client: Client) {
    if Some(event.state_key.as_ref()) != client.user_id() || room.state() != RoomState::Invited {
        return;
    }
    if let Err(e) = room.join().await {
        eprintln!("join failed: {e}");
    }
}
