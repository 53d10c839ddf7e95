//! Collecting every parse error with its key: serde stops at the first error of a struct, so
//! each section is extracted again from its own copy of the merged values, dropping each
//! offending key and trying again until it parses; origins are looked up in the real layers.

use figment::{
    Figment,
    providers::Serialized,
    value::{Dict, Value},
};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::{
    AnsweringConfig, ConfigIssue, ConversationConfig, CredentialsConfig, EncryptionConfig,
    LoginConfig, MediaConfig, SyncConfig, origin::describe_origin,
};

/// Extracts `T` from `dict` repeatedly, recording and removing each offending key, until it
/// parses or an error cannot be removed (a missing key).
pub(super) fn collect_errors<T: DeserializeOwned>(
    figment: &Figment,
    prefix: &[&str],
    mut dict: Dict,
    issues: &mut Vec<ConfigIssue>,
) {
    for _ in 0..64 {
        let attempt = Figment::from(Serialized::defaults(&dict)).extract::<T>();
        let Err(errors) = attempt else { return };
        let mut removed_any = false;
        for e in errors {
            let path = push_error(figment, prefix, &e, issues);
            let removable = !matches!(e.kind, figment::error::Kind::MissingField(_));
            removed_any |= removable && remove_path(&mut dict, &path);
        }
        if !removed_any {
            return;
        }
    }
}

/// A function that collects the errors of one group of keys.
type Collect = fn(&Figment, &[&str], Dict, &mut Vec<ConfigIssue>);

/// Collects the errors of an account table. serde loses the keys of flattened groups in its
/// errors, so the table's keys are split among the groups of [`crate::AccountConfig`] and each
/// group is extracted alone; a key no group knows is unknown.
pub(super) fn collect_account_errors(
    figment: &Figment,
    prefix: &[&str],
    dict: Dict,
    issues: &mut Vec<ConfigIssue>,
) {
    let groups: [(&[&str], Collect); 7] = [
        (fields_of::<LoginConfig>(), collect_errors::<LoginConfig>),
        (
            fields_of::<CredentialsConfig>(),
            collect_errors::<CredentialsConfig>,
        ),
        (
            fields_of::<EncryptionConfig>(),
            collect_errors::<EncryptionConfig>,
        ),
        (
            fields_of::<AnsweringConfig>(),
            collect_errors::<AnsweringConfig>,
        ),
        (fields_of::<SyncConfig>(), collect_errors::<SyncConfig>),
        (
            fields_of::<ConversationConfig>(),
            collect_errors::<ConversationConfig>,
        ),
        (fields_of::<MediaConfig>(), collect_errors::<MediaConfig>),
    ];
    let mut parts: Vec<Dict> = vec![Dict::new(); groups.len()];
    let mut unknown = Vec::new();
    for (key, value) in dict {
        let group = groups
            .iter()
            .position(|(fields, _)| fields.contains(&key.as_str()));
        match group.and_then(|i| parts.get_mut(i)) {
            Some(part) => {
                part.insert(key, value);
            }
            None => unknown.push(key),
        }
    }
    for ((_, collect), part) in groups.iter().zip(parts) {
        collect(figment, prefix, part, issues);
    }
    let expected: Vec<&str> = groups.iter().flat_map(|(f, _)| f.iter().copied()).collect();
    let message = format!("unknown key (expected one of: {})", expected.join(", "));
    for key in unknown {
        let path: Vec<&str> = prefix.iter().copied().chain([key.as_str()]).collect();
        push_issue(figment, issues, &path, message.clone());
    }
}

/// The keys of struct `T`, aliases included, as serde knows them (read by letting `T` ask a
/// deserializer that only listens).
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut listener = FieldListener(&[]);
    let _ = T::deserialize(&mut listener);
    listener.0
}

/// A deserializer that records the field names a struct asks for, and fails.
struct FieldListener(&'static [&'static str]);

impl<'de> Deserializer<'de> for &mut FieldListener {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only listening"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(de::Error::custom("only listening"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The key path of an error relative to what was extracted, in document order.
fn error_path(e: &figment::Error) -> Vec<String> {
    let mut path = e.path.clone();
    let field = match &e.kind {
        figment::error::Kind::UnknownField(field, _) => Some(field.clone()),
        figment::error::Kind::MissingField(field) => Some(field.to_string()),
        _ => None,
    };
    if let Some(field) = field {
        // figment may put the field first and its parents after it.
        if let Some(i) = path.iter().position(|p| *p == field) {
            path.remove(i);
        }
        path.push(field);
    }
    path
}

fn remove_path(dict: &mut Dict, path: &[String]) -> bool {
    match path {
        [] => false,
        [key] => dict.remove(key).is_some(),
        [key, rest @ ..] => match dict.get_mut(key) {
            Some(Value::Dict(_, inner)) => remove_path(inner, rest),
            Some(_) => dict.remove(key).is_some(),
            None => false,
        },
    }
}

fn describe_kind(kind: &figment::error::Kind) -> String {
    match kind {
        figment::error::Kind::UnknownField(_, expected) => {
            format!("unknown key (expected one of: {})", expected.join(", "))
        }
        figment::error::Kind::MissingField(_) => "is required but missing".to_owned(),
        kind => kind.to_string(),
    }
}

pub(super) fn push_issue(
    figment: &Figment,
    issues: &mut Vec<ConfigIssue>,
    path: &[&str],
    message: String,
) {
    let key = path.join(".");
    let owned: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
    let origin = figment.find_metadata(&key).map_or_else(
        || {
            // A missing key has no origin of its own: name where its table came from.
            let parent = owned[..owned.len().saturating_sub(1)].join(".");
            figment.find_metadata(&parent).map_or_else(
                || "built-in default".to_owned(),
                |md| describe_origin(md, &owned),
            )
        },
        |md| describe_origin(md, &owned),
    );
    issues.push(ConfigIssue {
        key,
        message,
        origin,
    });
}

pub(super) fn push_figment_errors(
    figment: &Figment,
    prefix: &[&str],
    error: figment::Error,
    issues: &mut Vec<ConfigIssue>,
) {
    for e in error {
        push_error(figment, prefix, &e, issues);
    }
}

/// Records one figment error under `prefix`; returns its section-relative path.
fn push_error(
    figment: &Figment,
    prefix: &[&str],
    e: &figment::Error,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<String> {
    let path = error_path(e);
    let full: Vec<&str> = prefix
        .iter()
        .copied()
        .chain(path.iter().map(String::as_str))
        .collect();
    push_issue(figment, issues, &full, describe_kind(&e.kind));
    path
}
