//! Layering and validation tests, each in a `figment::Jail` (a private cwd and environment).

// figment::Jail closures must return figment::Result, whose error is large by design.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

use figment::Jail;

use crate::{
    AccessPolicy, AccountAuth, BackendSpec, ConfigError, Flags, LogFormat, MentionMode, Sources,
    load,
};

const TWO_ACCOUNTS: &str = r#"
data_dir = "state"

[backends.local]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "small"

[accounts.alice]
homeserver = "http://127.0.0.1:8008"
user_id = "@alice:localhost"
password = "pw-alice"
backend = "echo"

[accounts.bob]
homeserver = "http://127.0.0.1:8008"
access_token = "tok-bob"
backend = "local"
model = "large"
"#;

fn sources(file: &str) -> Sources {
    Sources {
        config_file: Some(PathBuf::from(file)),
        flags: Flags::default(),
    }
}

fn issues(err: ConfigError) -> Vec<String> {
    err.issues.iter().map(ToString::to_string).collect()
}

#[test]
fn reads_a_file_and_resolves_backends() {
    Jail::expect_with(|jail| {
        jail.create_file("fleet.toml", TWO_ACCOUNTS)?;
        let loaded = load(&sources("fleet.toml")).map_err(|e| e.to_string())?;
        let config = &loaded.config;
        assert_eq!(config.data_dir, PathBuf::from("state"));
        assert_eq!(config.blocking_threads, 16, "the default");
        assert_eq!(config.store_page_cache_kib, 16, "the default");
        let alice = &config.accounts["alice"];
        assert_eq!(
            alice.auth,
            AccountAuth::Password(crate::Secret::new("pw-alice"))
        );
        assert_eq!(alice.device_id, "MXFLEET_ALICE");
        assert_eq!(
            alice.backend,
            BackendSpec::Echo {
                prefix: String::new()
            }
        );
        let bob = &config.accounts["bob"];
        assert!(matches!(&bob.backend, BackendSpec::Openai { model, .. } if model == "large"));
        assert_eq!(bob.sync.catch_up_max_age_secs, 600);
        Ok(())
    });
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    Jail::expect_with(|jail| {
        jail.create_file("fleet.toml", TWO_ACCOUNTS)?;
        jail.set_env("MXFLEET_DATA_DIR", "from-env");
        jail.set_env("MXFLEET_LOG__FORMAT", "json");
        jail.set_env("MXFLEET_ACCOUNTS__ALICE__PASSWORD", "12345");
        jail.set_env("MXFLEET_ACCOUNTS__BOB__SYNC_TIMEOUT_SECS", "5");
        let loaded = load(&sources("fleet.toml")).map_err(|e| e.to_string())?;
        assert_eq!(loaded.config.data_dir, PathBuf::from("from-env"));
        assert_eq!(loaded.config.log.format, LogFormat::Json);
        // A numeric env value is still a valid secret.
        let alice = &loaded.config.accounts["alice"];
        assert_eq!(
            alice.auth,
            AccountAuth::Password(crate::Secret::new("12345"))
        );
        assert_eq!(loaded.config.accounts["bob"].sync.sync_timeout_secs, 5);

        let flags = Flags {
            data_dir: Some("from-flag".into()),
            log_format: Some(LogFormat::Human),
            log_level: None,
        };
        let loaded = load(&Sources {
            config_file: Some("fleet.toml".into()),
            flags,
        })
        .map_err(|e| e.to_string())?;
        assert_eq!(loaded.config.data_dir, PathBuf::from("from-flag"));
        assert_eq!(loaded.config.log.format, LogFormat::Human);
        Ok(())
    });
}

#[test]
fn config_file_can_come_from_env() {
    Jail::expect_with(|jail| {
        jail.create_file("elsewhere.toml", TWO_ACCOUNTS)?;
        jail.set_env("MXFLEET_CONFIG", "elsewhere.toml");
        let loaded = load(&Sources::default()).map_err(|e| e.to_string())?;
        assert_eq!(loaded.config.accounts.len(), 2);
        Ok(())
    });
}

#[test]
fn every_error_is_reported_with_key_and_origin() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "bad.toml",
            r#"
            shutdown_timeout_secs = "soon"
            [accounts.alice]
            homeserver = "http://127.0.0.1:8008"
            passwrd = "typo"
            backend = "echo"
            catch_up_max_age_secs = -5
            [accounts.bob]
            password = "x"
            backend = "echo"
            [accounts.carol]
            homeserver = "http://127.0.0.1:8008"
            password = "x"
            backend = "nope"
            "#,
        )?;
        jail.set_env("MXFLEET_ACCOUNTS__CAROL__SYNC_TIMEOUT_SECS", "\"long\"");
        let err = load(&sources("bad.toml"))
            .err()
            .ok_or("expected an error")?;
        let text = issues(err);
        let has = |needle: &str| text.iter().any(|l| l.contains(needle));
        assert!(has("shutdown_timeout_secs: invalid type"), "{text:#?}");
        assert!(
            text.iter()
                .any(|l| l.starts_with("accounts.alice.passwrd: unknown key")),
            "{text:#?}"
        );
        assert!(has("(from file bad.toml)"), "{text:#?}");
        assert!(
            has("accounts.alice.catch_up_max_age_secs: invalid"),
            "{text:#?}"
        );
        assert!(
            has("accounts.bob.homeserver: is required but missing"),
            "{text:#?}"
        );
        assert!(!has("shutdown_timeout_secs: is required"), "{text:#?}");
        assert!(
            has("environment variable MXFLEET_ACCOUNTS__CAROL__SYNC_TIMEOUT_SECS"),
            "{text:#?}"
        );
        Ok(())
    });
}

#[test]
fn semantic_errors_are_collected() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "bad.toml",
            r#"
            blocking_threads = 2
            [restart]
            jitter_ratio = 3.0
            [accounts.Alice]
            homeserver = "http://127.0.0.1:8008"
            password = "x"
            backend = "echo"
            [accounts.bob]
            homeserver = "ftp://127.0.0.1"
            backend = "missing"
            [accounts.carol]
            homeserver = "http://127.0.0.1:8008"
            password = "x"
            access_token = "y"
            backend = "echo"
            [accounts.dave]
            homeserver = "http://127.0.0.1:8008"
            password_file = "no-such-file"
            backend = "echo"
            [accounts.erin]
            homeserver = "http://127.0.0.1:8008"
            access_token = "t"
            relogin = "auto"
            backend = "echo"
            "#,
        )?;
        let err = load(&sources("bad.toml"))
            .err()
            .ok_or("expected an error")?;
        let text = issues(err);
        let has = |needle: &str| text.iter().any(|l| l.contains(needle));
        assert!(has("restart.jitter_ratio: must be between"), "{text:#?}");
        assert!(
            has("blocking_threads: must be between 4 and 1024"),
            "{text:#?}"
        );
        assert!(has("accounts.Alice: account ids must be"), "{text:#?}");
        assert!(
            has("accounts.bob.homeserver: must be an http(s) URL"),
            "{text:#?}"
        );
        assert!(
            has("accounts.bob.backend: no backend named \"missing\""),
            "{text:#?}"
        );
        assert!(has("accounts.bob: needs credentials"), "{text:#?}");
        assert!(
            has("accounts.carol: set either a password or an access token"),
            "{text:#?}"
        );
        assert!(
            has("accounts.dave.password_file: cannot read no-such-file"),
            "{text:#?}"
        );
        assert!(
            has("accounts.erin.relogin: auto needs password login"),
            "{text:#?}"
        );
        Ok(())
    });
}

#[test]
fn secrets_come_from_files_and_never_print() {
    Jail::expect_with(|jail| {
        jail.create_file("pw.txt", "file-secret\n")?;
        jail.create_file(
            "fleet.toml",
            r#"
            [accounts.alice]
            homeserver = "http://127.0.0.1:8008"
            user_id = "@alice:localhost"
            password_file = "pw.txt"
            store_passphrase = "inline-passphrase"
            backend = "echo"
            "#,
        )?;
        let loaded = load(&sources("fleet.toml")).map_err(|e| e.to_string())?;
        let alice = &loaded.config.accounts["alice"];
        assert_eq!(
            alice.auth,
            AccountAuth::Password(crate::Secret::new("file-secret"))
        );
        let described = loaded.describe();
        let debugged = format!("{:?}", loaded.config);
        for text in [&described, &debugged] {
            assert!(!text.contains("file-secret"), "{text}");
            assert!(!text.contains("inline-passphrase"), "{text}");
        }
        assert!(
            described
                .contains("accounts.alice.store_passphrase = \"[redacted]\"  # file fleet.toml")
        );
        assert!(
            described.contains("accounts.alice.catch_up_max_age_secs = 600  # built-in default")
        );
        Ok(())
    });
}

#[test]
fn missing_explicit_file_and_duplicate_users_are_errors() {
    Jail::expect_with(|jail| {
        let err = load(&sources("absent.toml"))
            .err()
            .ok_or("expected an error")?;
        assert!(
            issues(err)
                .iter()
                .any(|l| l.contains("absent.toml does not exist"))
        );

        jail.create_file(
            "dup.toml",
            r#"
            [accounts.a]
            homeserver = "http://127.0.0.1:8008"
            user_id = "@same:localhost"
            access_token = "t1"
            backend = "echo"
            [accounts.b]
            homeserver = "http://127.0.0.1:8008"
            user_id = "@same:localhost"
            access_token = "t2"
            backend = "echo"
            "#,
        )?;
        let err = load(&sources("dup.toml"))
            .err()
            .ok_or("expected an error")?;
        assert!(
            issues(err)
                .iter()
                .any(|l| l.contains("is also used by account a"))
        );
        Ok(())
    });
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = include_str!("../../../config/mxfleet.example.toml");
    Jail::expect_with(|jail| {
        // The example points at secret files under /run/secrets; give them local stand-ins.
        let text = example.replace("/run/secrets/", "");
        for name in [
            "openai-api-key",
            "helper-password",
            "announcer-token",
            "spare-password",
            "agent-token",
        ] {
            jail.create_file(name, "x")?;
        }
        jail.create_file("example.toml", &text)?;
        let loaded = load(&sources("example.toml")).map_err(|e| e.to_string())?;
        assert_eq!(loaded.config.accounts.len(), 3);
        assert!(!loaded.config.accounts["spare"].enabled);
        let helper = &loaded.config.accounts["helper"];
        assert_eq!(
            helper.room_routes["#support:example.org"].backend.model(),
            Some("gpt-4o")
        );
        assert_eq!(
            helper.room_routes["#support:example.org"].backend_name,
            "hosted"
        );
        assert_eq!(
            helper.user_routes["@alice:example.org"].backend.model(),
            Some("llama3.1:70b")
        );
        assert!(
            loaded.config.warnings.is_empty(),
            "{:?}",
            loaded.config.warnings
        );
        Ok(())
    });
}

#[test]
fn conversation_keys_have_safe_defaults_and_are_validated() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "conv.toml",
            r#"
            [accounts.a]
            homeserver = "http://127.0.0.1:8008"
            access_token = "t"
            backend = "echo"
            "#,
        )?;
        // The scripts' and harness's own variables are not configuration keys.
        jail.set_env("MXFLEET_SYNAPSE_VENV", "/opt/venv");
        jail.set_env("MXFLEET_DEV_PORT", "8009");
        jail.set_env("MXFLEET_BIN", "/usr/bin/mxfleet");
        let loaded = load(&sources("conv.toml")).map_err(|e| e.to_string())?;
        let c = &loaded.config.accounts["a"].conversation;
        assert_eq!(
            (c.dm_policy, c.room_policy),
            (AccessPolicy::Allowlist, AccessPolicy::Allowlist)
        );
        assert_eq!(c.mention_mode, MentionMode::Mention);
        assert_eq!(c.ack_reaction(), Some("👀"));
        // Allowlists that admit nobody are legal but warned about.
        let warned: Vec<&str> = loaded
            .config
            .warnings
            .iter()
            .map(|w| w.key.as_str())
            .collect();
        assert_eq!(warned, ["accounts.a.dm_policy", "accounts.a.room_policy"]);

        jail.create_file(
            "bad.toml",
            r#"
            [accounts.a]
            homeserver = "http://127.0.0.1:8008"
            access_token = "t"
            provider = "echo"
            dm_policy = "friends"
            user_allowlist = ["alice"]
            room_allowlist = ["ops"]
            edit_throttle_ms = 1
            ack_reaction = ""
            [accounts.a.user_overrides."@x:hs"]
            provider = "nope"
            "#,
        )?;
        jail.set_env("MXFLEET_ACCOUNTS__A__MENTION_MODE", "sometimes");
        let err = load(&sources("bad.toml"))
            .err()
            .ok_or("expected an error")?;
        let lines = issues(err);
        for expected in [
            "accounts.a.dm_policy: unknown variant",
            "accounts.a.mention_mode: unknown variant",
            "MXFLEET_ACCOUNTS__A__MENTION_MODE",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(expected)),
                "no {expected:?} in {lines:#?}"
            );
        }
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.create_file(
            "bad2.toml",
            r#"
            [backends.hook]
            kind = "webhook"
            url = "ftp://x"
            [backends.cli]
            kind = "command"
            command = []
            [accounts.a]
            homeserver = "http://127.0.0.1:8008"
            access_token = "t"
            provider = "echo"
            user_allowlist = ["alice"]
            room_allowlist = ["ops", "!VpnEGRXyeLlgCHg-3vMl2-VJQZGWHPndPW5NH6aWxp0", "!a:hs", "! x:hs"]
            edit_throttle_ms = 1
            transcription = "hook"
            max_media_bytes = 10
            otp_cooldown_secs = 0
            ack_reaction = ""
            [accounts.a.user_overrides."@x:hs"]
            provider = "nope"
            "#,
        )?;
        let err = load(&sources("bad2.toml"))
            .err()
            .ok_or("expected an error")?;
        let lines = issues(err);
        // Room version 12 ids have no server part; list items name the file they came from.
        for fine in ["room_allowlist.1", "room_allowlist.2"] {
            assert!(
                !lines.iter().any(|l| l.contains(fine)),
                "{fine} refused: {lines:#?}"
            );
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains("room_allowlist.0") && l.contains("bad2.toml")),
            "{lines:#?}"
        );
        for expected in [
            "accounts.a.user_allowlist.0: \"alice\" is not a user id",
            "accounts.a.room_allowlist.0: \"ops\" is not a room id",
            "accounts.a.room_allowlist.3: \"! x:hs\" is not a room id",
            "accounts.a.edit_throttle_ms: must be between 50 and 60000",
            "accounts.a.transcription: backend \"hook\" is of kind \"webhook\"; transcription needs an \"openai\" backend",
            "accounts.a.max_media_bytes: must be 0 (no media at all) or between 1024",
            "accounts.a.otp_cooldown_secs: must be between 1 and 86400",
            "accounts.a.user_overrides.@x:hs.backend: no backend named \"nope\"",
            "backends.hook.url: must be an http(s) URL",
            "backends.cli.command: must name a program",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(expected)),
                "no {expected:?} in {lines:#?}"
            );
        }
        Ok(())
    });
}

#[test]
fn shards_split_the_accounts_and_know_each_others_users() {
    // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: the assignment must never change between versions.
    assert_eq!(crate::shard_of("a", u32::MAX), 895_863_001);
    assert_eq!(crate::shard_of("anything", 1), 0);
    assert_eq!(
        crate::shard_of("anything", 0),
        0,
        "a zero count is treated as one"
    );
    Jail::expect_with(|jail| {
        jail.create_file("fleet.toml", TWO_ACCOUNTS)?;
        let mut replicas = Vec::new();
        for index in 0..2 {
            jail.set_env("MXFLEET_SHARD__COUNT", "2");
            jail.set_env("MXFLEET_SHARD__INDEX", index.to_string());
            let loaded = load(&sources("fleet.toml")).map_err(|e| e.to_string())?;
            replicas.push(loaded.config);
        }
        let owned = |i: usize| replicas[i].accounts.keys().cloned().collect::<Vec<_>>();
        // bob hashes to replica 0 and alice to 1.
        assert_eq!(
            (owned(0), owned(1)),
            (vec!["bob".to_owned()], vec!["alice".to_owned()])
        );
        assert_eq!(
            replicas[0].peers.get("alice"),
            Some(&Some("@alice:localhost".to_owned()))
        );
        // bob (access token, no user_id) cannot be recognised by replica 1: a warning says so.
        assert_eq!(replicas[1].peers.get("bob"), Some(&None));
        assert!(
            replicas[1]
                .warnings
                .iter()
                .any(|w| w.key == "accounts.bob.user_id" && w.message.contains("replica 0")),
            "{:?}",
            replicas[1].warnings
        );

        jail.set_env("MXFLEET_SHARD__INDEX", "2");
        let err = load(&sources("fleet.toml"))
            .err()
            .ok_or("expected an error")?;
        assert!(
            issues(err)
                .iter()
                .any(|l| l.contains("shard.index: must be below shard.count (2)")
                    && l.contains("MXFLEET_SHARD__INDEX")),
            "the error names the key and the variable"
        );
        Ok(())
    });
}

#[test]
fn secrets_from_the_environment_stay_strings() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "fleet.toml",
            r#"
            [accounts.alice]
            homeserver = "http://127.0.0.1:8008"
            user_id = "@alice:localhost"
            backend = "echo"
            "#,
        )?;
        jail.set_env("MXFLEET_ACCOUNTS__ALICE__PASSWORD", "0123");
        jail.set_env("MXFLEET_ACCOUNTS__ALICE__STORE_PASSPHRASE", "true");
        let loaded = load(&sources("fleet.toml")).map_err(|e| e.to_string())?;
        let alice = &loaded.config.accounts["alice"];
        assert_eq!(
            alice.auth,
            AccountAuth::Password(crate::Secret::new("0123"))
        );
        assert_eq!(
            alice.store_passphrase.as_ref().map(crate::Secret::expose),
            Some("true")
        );
        Ok(())
    });
}

#[test]
fn command_agents_get_a_checked_environment_and_hide_the_secret_paths() {
    Jail::expect_with(|jail| {
        jail.create_file("token", "tok-from-file")?;
        jail.create_file(
            "bad.toml",
            r#"
            [backends.agent]
            kind = "command"
            command = ["agent"]
            env = { "BAD-NAME" = "x" }
            pass_env = ["HOME", "MXFLEET_ADMIN__TOKEN", "1X"]
            "#,
        )?;
        let err = load(&sources("bad.toml"))
            .err()
            .ok_or("expected an error")?;
        let text = issues(err);
        let has = |needle: &str| text.iter().any(|l| l.contains(needle));
        assert!(
            has("backends.agent.env: \"BAD-NAME\" is not a variable name"),
            "{text:#?}"
        );
        assert!(
            has("MXFLEET_ADMIN__TOKEN would hand the agent one of mxfleet's own secrets"),
            "{text:#?}"
        );
        assert!(has("\"1X\" is not a variable name"), "{text:#?}");
        assert!(!has("HOME"), "{text:#?}");

        jail.create_file(
            "good.toml",
            r#"
            data_dir = "state"
            [backends.agent]
            kind = "command"
            command = ["agent"]
            env = { AGENT_MODE = "quiet" }
            pass_env = ["HOME"]
            [accounts.a]
            homeserver = "http://127.0.0.1:8008"
            access_token_file = "token"
            backend = "agent"
            "#,
        )?;
        let loaded = load(&sources("good.toml")).map_err(|e| e.to_string())?;
        let account = loaded.config.accounts.get("a").ok_or("no account a")?;
        let BackendSpec::Command { isolation, .. } = &account.backend else {
            return Err("not a command backend".into());
        };
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        assert_eq!(
            isolation.hidden,
            vec![cwd.join("good.toml"), cwd.join("state"), cwd.join("token")]
        );
        assert_eq!(isolation.pass_env, ["HOME"]);
        assert_eq!(
            isolation.env.get("AGENT_MODE").map(String::as_str),
            Some("quiet")
        );
        Ok(())
    });
}

#[test]
fn extreme_numbers_are_refused_with_their_range() {
    Jail::expect_with(|jail| {
        // TOML integers are i64.
        let huge = i64::MAX;
        jail.create_file(
            "huge.toml",
            &format!(
                r#"
                shutdown_timeout_secs = {huge}
                blocking_threads = {huge}
                store_page_cache_kib = 4294967295
                [restart]
                initial_delay_ms = {huge}
                max_delay_ms = {huge}
                multiplier = 1e308
                healthy_after_secs = {huge}
                restart_window_secs = {huge}
                max_restarts = 4294967295
                [backends.slow]
                kind = "command"
                command = ["agent"]
                request_timeout_secs = {huge}
                [accounts.a]
                homeserver = "http://127.0.0.1:8008"
                access_token = "t"
                backend = "echo"
                verification_timeout_secs = {huge}
                catch_up_max_age_secs = {huge}
                sync_stall_secs = {huge}
                edit_throttle_ms = {huge}
                max_edits_per_message = 4294967295
                cue_delay_ms = {huge}
                utd_notice_cooldown_secs = {huge}
                max_media_bytes = {huge}
                "#
            ),
        )?;
        let err = load(&sources("huge.toml"))
            .err()
            .ok_or("expected an error")?;
        let text = issues(err);
        for key in [
            "shutdown_timeout_secs",
            "blocking_threads",
            "store_page_cache_kib",
            "restart.initial_delay_ms",
            "restart.max_delay_ms",
            "restart.multiplier",
            "restart.healthy_after_secs",
            "restart.restart_window_secs",
            "restart.max_restarts",
            "backends.slow.request_timeout_secs",
            "accounts.a.verification_timeout_secs",
            "accounts.a.catch_up_max_age_secs",
            "accounts.a.sync_stall_secs",
            "accounts.a.edit_throttle_ms",
            "accounts.a.max_edits_per_message",
            "accounts.a.cue_delay_ms",
            "accounts.a.utd_notice_cooldown_secs",
            "accounts.a.max_media_bytes",
        ] {
            let refused = text
                .iter()
                .any(|l| l.starts_with(&format!("{key}:")) && l.contains(" between "));
            assert!(refused, "{key} not refused with its range: {text:#?}");
        }
        Ok(())
    });
}
