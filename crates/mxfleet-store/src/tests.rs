//! Unit tests of the store.

use super::*;

fn entry(id: &str) -> InboxEntry<String> {
    InboxEntry {
        event_id: id.into(),
        claimed_at_ms: now_ms(),
        seq: 0,
        attempts: 0,
        seen_at_ms: None,
        state: InboxState::Pending,
        message: format!("body of {id}"),
    }
}

#[tokio::test]
async fn sync_batches_claim_each_event_once() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = Store::open(&dir.path().join("db.redb"))?;
    assert_eq!(store.sync_position("a").await?, None);
    let fresh = store
        .commit_sync("a", "s1", vec![entry("$1"), entry("$2")])
        .await?;
    assert_eq!(fresh.len(), 2);
    // The same batch replayed after a crash claims nothing new.
    let fresh = store
        .commit_sync("a", "s2", vec![entry("$2"), entry("$3")])
        .await?;
    assert_eq!(
        fresh
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["$3"]
    );
    assert_eq!(store.sync_position("a").await?.as_deref(), Some("s2"));
    // Another account's inbox is separate.
    assert_eq!(
        store.commit_sync("b", "x", vec![entry("$1")]).await?.len(),
        1
    );

    store
        .finish(
            "a",
            "$1",
            InboxState::Answered {
                reply_event_id: "$r".into(),
            },
        )
        .await?;
    let (pending, corrupt) = store.pending::<String>("a").await?;
    assert!(corrupt.is_empty());
    assert_eq!(
        pending
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["$2", "$3"]
    );

    assert_eq!(store.prune_inbox(now_ms() + 1).await?, 1);
    Ok(())
}

#[tokio::test]
async fn pending_entries_come_back_in_the_order_they_were_claimed() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = Store::open(&dir.path().join("db.redb"))?;
    // Event ids sort differently from arrival.
    store
        .commit_sync("a", "s1", vec![entry("$zeta"), entry("$alpha")])
        .await?;
    store
        .commit_sync("a", "s2", vec![entry("$mu"), entry("$alpha")])
        .await?;
    store.commit_sync("a", "s3", vec![entry("$beta")]).await?;
    let (pending, _) = store.pending::<String>("a").await?;
    let order: Vec<&str> = pending.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(order, ["$zeta", "$alpha", "$mu", "$beta"]);
    Ok(())
}

#[tokio::test]
async fn sessions_and_passphrases_persist_across_reopen() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let path = dir.path().join("db.redb");
    let session = StoredSession {
        user_id: "@a:x".into(),
        device_id: "D".into(),
        access_token: "secret-token".into(),
        refresh_token: None,
        needs_relogin: false,
    };
    {
        let store = Store::open(&path)?;
        store.save_session("a", &session).await?;
        assert_eq!(store.store_passphrase("a", || "p1".into()).await?, "p1");
        assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
    }
    let store = Store::open(&path)?;
    assert_eq!(store.session("a").await?, Some(session.clone()));
    assert_eq!(store.store_passphrase("a", || "p2".into()).await?, "p1");
    assert!(!format!("{session:?}").contains("secret-token"));
    store.delete_session("a").await?;
    assert_eq!(store.session("a").await?, None);
    Ok(())
}

#[test]
fn each_failure_says_whether_to_wait_retry_or_give_up() {
    let path = PathBuf::from("db.redb");
    let io = |code| std::io::Error::from_raw_os_error(code);
    let database = |e: redb::Error| StoreError::Database {
        path: path.clone(),
        source: Box::new(e),
    };
    let cases = [
        (database(redb::Error::Io(io(28))), StoreFault::Exhausted),
        (database(redb::Error::Io(io(122))), StoreFault::Exhausted),
        (database(redb::Error::Io(io(5))), StoreFault::Unavailable),
        (database(redb::Error::PreviousIo), StoreFault::Unavailable),
        (
            database(redb::Error::Corrupted("x".into())),
            StoreFault::Corrupt,
        ),
        (
            StoreError::Io {
                path: path.clone(),
                source: io(28),
            },
            StoreFault::Exhausted,
        ),
        (
            StoreError::Unavailable("reopening".into()),
            StoreFault::Unavailable,
        ),
        (
            StoreError::Locked { path: path.clone() },
            StoreFault::Permanent,
        ),
        (
            StoreError::CorruptDatabase {
                path: path.clone(),
                detail: "bad header".into(),
            },
            StoreFault::Corrupt,
        ),
    ];
    for (error, fault) in cases {
        assert_eq!(error.fault(), fault, "{error}");
    }
}

#[test]
fn a_damaged_database_file_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mxfleet.redb");
    for garbage in [&b"not a database at all"[..], &[0x5a; 8192][..]] {
        std::fs::write(&path, garbage).expect("write");
        let error = Store::open(&path).err().expect("refused");
        assert_eq!(error.fault(), StoreFault::Corrupt, "{error}");
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("restore it from a backup"), "{text}");
    }
}

#[tokio::test]
async fn a_store_that_needs_no_reopen_recovers_as_a_no_op() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = Store::open(&dir.path().join("db.redb"))?;
    store.recover().await?;
    store.needs_reopen.store(true, Ordering::SeqCst);
    store.recover().await?;
    store
        .commit_sync("a", "s1", Vec::<InboxEntry<String>>::new())
        .await?;
    assert_eq!(store.sync_position("a").await?.as_deref(), Some("s1"));
    Ok(())
}

#[tokio::test]
async fn a_relogin_drops_the_session_until_a_new_one_is_saved() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = Store::open(&dir.path().join("db.redb"))?;
    let session = StoredSession {
        user_id: "@a:x".into(),
        device_id: "D".into(),
        access_token: "t".into(),
        refresh_token: None,
        needs_relogin: false,
    };
    store.save_session("a", &session).await?;
    store.save_session("b", &session).await?;
    store
        .commit_sync("a", "s1", Vec::<InboxEntry<String>>::new())
        .await?;
    store.request_relogin("a", 42).await?;
    assert_eq!(store.session("a").await?, None);
    assert_eq!(store.sync_position("a").await?, None);
    assert_eq!(store.relogin_requested("a").await?, Some(42));
    assert_eq!(store.relogin_requested("b").await?, None, "per account");
    store.save_session("a", &session).await?;
    assert_eq!(store.relogin_requested("a").await?, None);
    Ok(())
}

#[tokio::test]
async fn a_staged_draft_is_read_back_at_once_and_kept_through_a_clean_close()
-> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let path = dir.path().join("db.redb");
    let draft = Draft {
        room_id: "!r".into(),
        parts: vec![DraftPart {
            txn_id: "t0".into(),
            attempted: "the first words".into(),
            ..DraftPart::default()
        }],
    };
    {
        let store = Store::open(&path)?;
        store.stage_draft("a", "$1", &draft).await?;
        assert_eq!(store.draft("a", "$1").await?, Some(draft.clone()));
    }
    let reopened = Store::open(&path)?;
    assert_eq!(reopened.draft("a", "$1").await?, Some(draft));
    Ok(())
}

#[tokio::test]
async fn drafts_end_with_their_inbox_entry_and_memory_is_capped() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = Store::open(&dir.path().join("db.redb"))?;
    store.commit_sync("a", "s1", vec![entry("$1")]).await?;
    let draft = Draft {
        room_id: "!r".into(),
        parts: vec![DraftPart {
            txn_id: "t0".into(),
            ..DraftPart::default()
        }],
    };
    store.save_draft("a", "$1", &draft).await?;
    assert_eq!(store.draft("a", "$1").await?, Some(draft));
    store
        .finish(
            "a",
            "$1",
            InboxState::Answered {
                reply_event_id: "$r".into(),
            },
        )
        .await?;
    assert_eq!(store.draft("a", "$1").await?, None);

    let turn = |i: u64| Turn {
        role: "user".into(),
        name: None,
        text: format!("t{i}"),
        event_id: format!("${i}"),
        ts_ms: i,
    };
    store
        .remember("a", "!r", (0..5).map(turn).collect(), 3)
        .await?;
    let m = store.memory("a", "!r").await?;
    assert_eq!(
        m.turns.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        ["t2", "t3", "t4"]
    );
    // A room upgrade: the new room inherits the memory, once, never over its own.
    store.inherit_memory("a", "!r", "!r2").await?;
    assert_eq!(store.memory("a", "!r2").await?, m);
    store.remember("a", "!r3", vec![turn(7)], 3).await?;
    store.inherit_memory("a", "!r", "!r3").await?;
    assert_eq!(store.memory("a", "!r3").await?.turns, vec![turn(7)]);
    store.reset_memory("a", "!r", 99).await?;
    let m = store.memory("a", "!r").await?;
    assert!(m.turns.is_empty() && m.reset_at_ms == 99);

    // Approvals: listed per account, withdrawn once.
    store.approve_sender("a", "@x:hs", 5).await?;
    store.approve_sender("b", "@y:hs", 6).await?;
    assert_eq!(
        store.approved_senders(Some("a")).await?,
        vec![("a".to_owned(), "@x:hs".to_owned(), 5)]
    );
    assert_eq!(store.approved_senders(None).await?.len(), 2);
    assert!(store.revoke_sender("a", "@x:hs").await?);
    assert!(!store.is_approved("a", "@x:hs").await?);
    assert!(
        !store.revoke_sender("a", "@x:hs").await?,
        "nothing left to revoke"
    );
    assert!(store.is_approved("b", "@y:hs").await?);
    assert_eq!(store.memory("a", "!other").await?, Memory::default());
    Ok(())
}

#[tokio::test]
async fn a_forgotten_account_leaves_nothing_and_others_keep_everything() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = Store::open(&dir.path().join("db.redb"))?;
    for account in ["gone", "kept"] {
        let session = StoredSession {
            user_id: format!("@{account}:hs"),
            device_id: "D".into(),
            access_token: format!("syt_{account}_token"),
            refresh_token: None,
            needs_relogin: false,
        };
        store.save_session(account, &session).await?;
        store.save_recovery_key(account, "key").await?;
        store.commit_sync(account, "s1", vec![entry("$1")]).await?;
        store.approve_sender(account, "@friend:hs", 1).await?;
        store.store_passphrase(account, || "pass".into()).await?;
    }
    assert_eq!(store.session_accounts().await?, ["gone", "kept"]);
    let removed = store.forget_account("gone").await?;
    assert!(removed >= 6, "{removed} rows");
    assert_eq!(store.session_accounts().await?, ["kept"]);
    assert!(store.session("gone").await?.is_none());
    assert!(store.recovery_key("gone").await?.is_none());
    assert!(store.sync_position("gone").await?.is_none());
    assert!(!store.is_approved("gone", "@friend:hs").await?);
    assert!(store.session("kept").await?.is_some());
    assert!(store.is_approved("kept", "@friend:hs").await?);
    assert_eq!(store.sync_position("kept").await?.as_deref(), Some("s1"));
    Ok(())
}

#[tokio::test]
async fn expired_otp_challenges_are_pruned_an_hour_after_they_end() -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
    let store = Store::open(&dir.path().join("db.redb"))?;
    let hour = 3_600_000;
    let challenge = |expires_ms, locked_until_ms| OtpChallenge {
        code: "123456".into(),
        room_id: "!dm:hs".into(),
        issued_ms: 0,
        expires_ms,
        attempts: 0,
        locked_until_ms,
    };
    let now = 10 * hour;
    store
        .set_otp_challenge("a", "@old:hs", Some(&challenge(now - 2 * hour, None)))
        .await?;
    store
        .set_otp_challenge("a", "@fresh:hs", Some(&challenge(now - hour / 2, None)))
        .await?;
    store
        .set_otp_challenge(
            "a",
            "@locked:hs",
            Some(&challenge(now - 2 * hour, Some(now + hour))),
        )
        .await?;
    store
        .set_otp_challenge("a", "@live:hs", Some(&challenge(now + hour, None)))
        .await?;
    assert_eq!(store.prune_otp(now).await?, 1);
    let left: Vec<String> = store
        .otp_challenges(Some("a"))
        .await?
        .into_iter()
        .map(|(_, sender, _)| sender)
        .collect();
    assert_eq!(left, ["@fresh:hs", "@live:hs", "@locked:hs"]);
    Ok(())
}
