//! Each `[backends.<name>]`: URLs and timeouts checked, secrets read.

use std::collections::BTreeMap;

use super::Checker;
use crate::{BackendConfig, BackendSpec};

/// The backends that are valid, by name (the invalid ones are reported).
pub(super) fn resolve(
    check: &mut Checker<'_>,
    backends: &BTreeMap<String, BackendConfig>,
) -> BTreeMap<String, BackendSpec> {
    backends
        .iter()
        .filter_map(|(name, backend)| Some((name.clone(), one(check, name, backend)?)))
        .collect()
}

fn one(check: &mut Checker<'_>, name: &str, backend: &BackendConfig) -> Option<BackendSpec> {
    let key = format!("backends.{name}");
    let timeout_ok = |check: &mut Checker<'_>, secs: u64| {
        check.require(
            secs >= 1,
            &format!("{key}.request_timeout_secs"),
            "must be at least 1",
        );
    };
    Some(match backend {
        BackendConfig::Echo { prefix } => BackendSpec::Echo {
            prefix: prefix.clone(),
        },
        BackendConfig::Openai {
            base_url,
            model,
            api_key,
            api_key_file,
            system_prompt,
            request_timeout_secs,
            images,
        } => {
            let scheme_ok = matches!(base_url.scheme(), "http" | "https");
            check.require(
                scheme_ok,
                &format!("{key}.base_url"),
                "must be an http(s) URL",
            );
            check.require(
                !model.is_empty(),
                &format!("{key}.model"),
                "must not be empty",
            );
            timeout_ok(check, *request_timeout_secs);
            BackendSpec::Openai {
                base_url: base_url.clone(),
                model: model.clone(),
                api_key: check.secret(&key, "api_key", api_key, api_key_file),
                system_prompt: system_prompt.clone(),
                request_timeout_secs: *request_timeout_secs,
                images: *images,
            }
        }
        BackendConfig::Webhook {
            url,
            token,
            token_file,
            format,
            request_timeout_secs,
            images,
        } => {
            let scheme_ok = matches!(url.scheme(), "http" | "https");
            check.require(scheme_ok, &format!("{key}.url"), "must be an http(s) URL");
            timeout_ok(check, *request_timeout_secs);
            BackendSpec::Webhook {
                url: url.clone(),
                token: check.secret(&key, "token", token, token_file),
                format: *format,
                model: None,
                system_prompt: None,
                request_timeout_secs: *request_timeout_secs,
                images: *images,
            }
        }
        BackendConfig::Command {
            command,
            input,
            working_dir,
            request_timeout_secs,
        } => {
            check.require(
                command.first().is_some_and(|p| !p.trim().is_empty()),
                &format!("{key}.command"),
                "must name a program, e.g. [\"my-agent\", \"--flag\"]",
            );
            timeout_ok(check, *request_timeout_secs);
            if let Some(dir) = working_dir {
                check.require(
                    dir.is_dir(),
                    &format!("{key}.working_dir"),
                    &format!("{} is not a directory", dir.display()),
                );
            }
            BackendSpec::Command {
                command: command.clone(),
                input: *input,
                working_dir: working_dir.clone(),
                model: None,
                system_prompt: None,
                request_timeout_secs: *request_timeout_secs,
            }
        }
    })
}
