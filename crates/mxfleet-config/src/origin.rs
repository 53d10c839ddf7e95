//! Where a value came from: each layer has a readable name, and every key's origin is named
//! as the file, the environment variable, the flag or the built-in default it came from.

use figment::{
    Metadata, Profile, Provider,
    value::{Dict, Map, Value},
};

use crate::ENV_PREFIX;

/// Names where a value came from: a file path, the environment variable, or the layer.
pub(crate) fn describe_origin(md: &Metadata, path: &[String]) -> String {
    if md.name.contains("environment") {
        let var: Vec<String> = path.iter().map(|k| k.to_ascii_uppercase()).collect();
        return format!("environment variable {ENV_PREFIX}{}", var.join("__"));
    }
    match md.source.as_ref().and_then(|s| s.file_path()) {
        Some(file) => format!("file {}", file.display()),
        None => md.name.to_string(),
    }
}

pub(crate) fn walk(
    value: &Value,
    path: &mut Vec<String>,
    visit: &mut dyn FnMut(&[String], &Value),
) {
    match value {
        Value::Dict(_, dict) if !dict.is_empty() => {
            for (k, v) in dict {
                path.push(k.clone());
                walk(v, path, visit);
                path.pop();
            }
        }
        leaf => visit(path, leaf),
    }
}

pub(crate) fn render(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Dict(_, d) if d.is_empty() => "{}".into(),
        other => serde_json::to_string(other).unwrap_or_else(|_| "?".into()),
    }
}

/// A provider wrapper that gives a layer a readable name in errors and `mxfleet check`.
pub(crate) struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P> Named<P> {
    pub(crate) fn new(name: &'static str, inner: P) -> Self {
        Self { name, inner }
    }
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}
