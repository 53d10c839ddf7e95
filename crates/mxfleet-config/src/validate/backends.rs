//! Each `[backends.<name>]`: URLs and timeouts checked, secrets read.

use std::collections::BTreeMap;

use super::Checker;
use crate::{AgentIsolation, BackendConfig, BackendSpec, ENV_PREFIX, Sandbox};

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
        check.range(&format!("{key}.request_timeout_secs"), secs, 1, 86_400);
    };
    let concurrency_ok = |check: &mut Checker<'_>, max: Option<u32>| {
        if let Some(max) = max {
            check.range(&format!("{key}.max_concurrent"), max, 1, 10_000);
        }
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
            max_concurrent,
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
            concurrency_ok(check, *max_concurrent);
            BackendSpec::Openai {
                base_url: base_url.clone(),
                model: model.clone(),
                api_key: check.secret(&key, "api_key", api_key, api_key_file),
                system_prompt: system_prompt.clone(),
                request_timeout_secs: *request_timeout_secs,
                max_concurrent: *max_concurrent,
                images: *images,
            }
        }
        BackendConfig::Webhook {
            url,
            token,
            token_file,
            format,
            request_timeout_secs,
            max_concurrent,
            images,
        } => {
            let scheme_ok = matches!(url.scheme(), "http" | "https");
            check.require(scheme_ok, &format!("{key}.url"), "must be an http(s) URL");
            timeout_ok(check, *request_timeout_secs);
            concurrency_ok(check, *max_concurrent);
            BackendSpec::Webhook {
                url: url.clone(),
                token: check.secret(&key, "token", token, token_file),
                format: *format,
                model: None,
                system_prompt: None,
                request_timeout_secs: *request_timeout_secs,
                max_concurrent: *max_concurrent,
                images: *images,
            }
        }
        BackendConfig::Command {
            command,
            input,
            working_dir,
            request_timeout_secs,
            max_concurrent,
            env,
            pass_env,
            sandbox,
        } => {
            check.require(
                command.first().is_some_and(|p| !p.trim().is_empty()),
                &format!("{key}.command"),
                "must name a program, e.g. [\"my-agent\", \"--flag\"]",
            );
            timeout_ok(check, *request_timeout_secs);
            concurrency_ok(check, *max_concurrent);
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
                max_concurrent: *max_concurrent,
                isolation: isolation(check, &key, env, pass_env, *sandbox),
            }
        }
    })
}

/// The agent's environment and sandbox, checked: variable names are names, `MXFLEET_*` is never
/// passed on, and `bwrap` is installed when asked for. The hidden paths are filled in once the
/// whole configuration is known.
fn isolation(
    check: &mut Checker<'_>,
    key: &str,
    env: &BTreeMap<String, String>,
    pass_env: &[String],
    sandbox: Sandbox,
) -> AgentIsolation {
    for (name, value) in env {
        check.require(
            is_env_name(name),
            &format!("{key}.env"),
            &format!("{name:?} is not a variable name (letters, digits and _)"),
        );
        check.require(
            !value.contains('\0'),
            &format!("{key}.env.{name}"),
            "must not contain a NUL byte",
        );
    }
    for name in pass_env {
        check.require(
            is_env_name(name),
            &format!("{key}.pass_env"),
            &format!("{name:?} is not a variable name (letters, digits and _)"),
        );
        check.require(
            !name.to_ascii_uppercase().starts_with(ENV_PREFIX),
            &format!("{key}.pass_env"),
            &format!("{name} would hand the agent one of mxfleet's own secrets; set what it needs in env instead"),
        );
    }
    if sandbox == Sandbox::Bwrap {
        check.require(
            program_on_path("bwrap"),
            &format!("{key}.sandbox"),
            "bubblewrap (bwrap) is not installed; install it (Debian: bubblewrap) or set sandbox = \"none\"",
        );
    }
    AgentIsolation {
        env: env.clone(),
        pass_env: pass_env.to_vec(),
        sandbox,
        hidden: Vec::new(),
    }
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `program` is an executable file in one of `PATH`'s directories.
fn program_on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
