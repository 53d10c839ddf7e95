//! Layering and extraction; [`validate`](crate::validate) checks what they produce.
//!
//! The layers, later ones winning: built-in defaults, the TOML file, `MXFLEET_…` environment
//! variables (nested with `__`), command-line flags. When the merged configuration does not
//! parse, extraction runs again per section (the top level, each backend, each account, and
//! within an account each group of keys) so that one bad key does not hide the errors of the
//! next; the semantic checks then run on whatever parsed. Every error names its key and where
//! the value came from, and all of them are reported together.

mod collect;

use std::path::PathBuf;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Value},
};
use serde::Deserialize;

use self::collect::{collect_account_errors, collect_errors, push_figment_errors, push_issue};
use crate::{
    AdminConfig, BackendConfig, Config, ConfigError, ConfigIssue, LogConfig, LogFormat,
    RestartConfig, ShardConfig, ValidConfig,
    origin::{Named, describe_origin, render, walk},
    validate::validate,
};

/// The environment variable prefix.
pub const ENV_PREFIX: &str = "MXFLEET_";
/// The environment variable naming the config file.
pub const CONFIG_FILE_ENV: &str = "MXFLEET_CONFIG";
/// `MXFLEET_…` variables that belong to mxfleet's tools, not to the configuration: the config
/// file's name, the test harness's binary, the scripts' Synapse venv and dev port.
const TOOL_VARIABLES: &[&str] = &["config", "bin", "synapse_venv", "dev_port"];
/// The config file read when neither `--config` nor `MXFLEET_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "config/mxfleet.toml";
/// The backend every config has without declaring it.
pub const BUILTIN_ECHO: &str = "echo";

/// Where the configuration comes from, besides the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config PATH`; otherwise `MXFLEET_CONFIG`, otherwise [`DEFAULT_CONFIG_FILE`] if present.
    pub config_file: Option<PathBuf>,
    /// Values given as command-line flags, highest precedence.
    pub flags: Flags,
}

/// Command-line flags that override configuration keys.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--log-level`
    pub log_level: Option<String>,
}

/// A loaded configuration together with the layers it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: ValidConfig,
    figment: Figment,
    raw: Config,
}

/// Loads, merges and validates the configuration from `sources` and the process environment.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let mut issues = Vec::new();
    let (figment, config_file) = layered(sources, &mut issues);
    let raw = extract(&figment, &mut issues);
    let config = raw
        .as_ref()
        .map(|raw| validate(raw, &figment, &config_file, &mut issues));
    issues.sort_by(|a, b| a.key.cmp(&b.key));
    issues.dedup();
    match (raw, config) {
        (Some(raw), Some(config)) if issues.is_empty() => Ok(Loaded {
            config,
            figment,
            raw,
        }),
        _ => Err(ConfigError { issues }),
    }
}

impl Loaded {
    /// The merged configuration as `key = value  # origin` lines, secrets redacted.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        let value = Value::serialize(&self.raw).unwrap_or(Value::from(Dict::new()));
        walk(&value, &mut Vec::new(), &mut |path, leaf| {
            let key = path.join(".");
            let origin = self.figment.find_metadata(&key).map_or_else(
                || "built-in default".to_owned(),
                |md| describe_origin(md, path),
            );
            lines.push(format!("{key} = {}  # {origin}", render(leaf)));
        });
        lines.join("\n")
    }
}

/// The top level without the per-entry tables (they are extracted one by one).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
#[allow(dead_code)] // fields exist so that unknown keys and bad types are reported
struct TopLevel {
    data_dir: PathBuf,
    log: LogConfig,
    shutdown_timeout_secs: u64,
    shutdown_drain_secs: u64,
    restart: RestartConfig,
    admin: AdminConfig,
    shard: ShardConfig,
}

fn layered(sources: &Sources, issues: &mut Vec<ConfigIssue>) -> (Figment, Option<PathBuf>) {
    let defaults = Config::default();
    let mut figment = Figment::new().merge(Named::new(
        "built-in default",
        Serialized::defaults(defaults),
    ));

    let (file, explicit) = match (&sources.config_file, std::env::var_os(CONFIG_FILE_ENV)) {
        (Some(path), _) => (path.clone(), Some("--config")),
        (None, Some(path)) => (PathBuf::from(path), Some(CONFIG_FILE_ENV)),
        (None, None) => (PathBuf::from(DEFAULT_CONFIG_FILE), None),
    };
    let config_file = if file.is_file() {
        figment = figment.merge(Toml::file_exact(&file));
        Some(file)
    } else {
        if let Some(origin) = explicit {
            issues.push(ConfigIssue {
                key: "config file".into(),
                message: format!("{} does not exist or is not a file", file.display()),
                origin: origin.into(),
            });
        }
        None
    };

    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(TOOL_VARIABLES));
    // figment parses environment values like TOML (`0123` becomes 123): secrets are read again
    // as the strings they are, over the parsed ones.
    let secrets = secret_env(std::env::vars_os());
    if !secrets.is_empty() {
        figment = figment.merge(Named::new(
            "environment variable",
            Serialized::defaults(secrets),
        ));
    }

    let mut flags = Dict::new();
    let flag = &sources.flags;
    if let Some(dir) = &flag.data_dir {
        flags.insert("data_dir".into(), Value::from(dir.display().to_string()));
    }
    let mut log = Dict::new();
    if let Some(format) = flag.log_format {
        let name = if format == LogFormat::Json {
            "json"
        } else {
            "human"
        };
        log.insert("format".into(), Value::from(name));
    }
    if let Some(level) = &flag.log_level {
        log.insert("level".into(), Value::from(level.clone()));
    }
    if !log.is_empty() {
        flags.insert("log".into(), Value::from(log));
    }
    figment = figment.merge(Named::new("command-line flag", Serialized::defaults(flags)));
    (figment, config_file)
}

/// The keys whose values are secrets (`Secret` fields of the configuration).
const SECRET_KEYS: &[&str] = &[
    "password",
    "access_token",
    "recovery_key",
    "store_passphrase",
    "api_key",
    "token",
];

/// The `MXFLEET_…` variables of secret keys, nested by `__` like figment's, as strings.
fn secret_env(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Dict {
    let mut dict = Dict::new();
    for (key, value) in vars {
        let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
            continue;
        };
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if path
            .last()
            .is_some_and(|k| SECRET_KEYS.contains(&k.as_str()))
        {
            insert_path(&mut dict, &path, Value::from(value.to_owned()));
        }
    }
    dict
}

/// Puts `value` at `path` inside `dict`, making the tables on the way.
fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

fn extract(figment: &Figment, issues: &mut Vec<ConfigIssue>) -> Option<Config> {
    let error = match figment.extract::<Config>() {
        Ok(config) => return Some(config),
        Err(error) => error,
    };
    // serde stops at the first error of a struct. To report them all, each section is
    // extracted from its own copy of the merged values, dropping each offending key and trying
    // again; origins are still looked up in the real figment.
    let root = match figment.extract::<Dict>() {
        Ok(root) => root,
        Err(_) => {
            push_figment_errors(figment, &[], error, issues);
            return None;
        }
    };
    let mut top = root.clone();
    let sections: Vec<(&str, Option<Value>)> = ["backends", "accounts"]
        .into_iter()
        .map(|name| (name, top.remove(name)))
        .collect();
    collect_errors::<TopLevel>(figment, &[], top, issues);
    for (section, value) in sections {
        match value {
            Some(Value::Dict(_, entries)) => {
                for (id, entry) in entries {
                    let Value::Dict(_, dict) = entry else {
                        push_issue(figment, issues, &[section, &id], "must be a table".into());
                        continue;
                    };
                    if section == "backends" {
                        collect_errors::<BackendConfig>(figment, &[section, &id], dict, issues);
                    } else {
                        collect_account_errors(figment, &[section, &id], dict, issues);
                    }
                }
            }
            Some(_) => push_issue(figment, issues, &[section], "must be a table".into()),
            None => {}
        }
    }
    if issues.is_empty() {
        push_figment_errors(figment, &[], error, issues);
    }
    None
}
