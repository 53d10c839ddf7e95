//! A secret string that never prints itself.
//!
//! Passwords, access tokens, store passphrases and API keys are held in [`Secret`], whose
//! `Debug`, `Display` and `Serialize` all print [`REDACTED`]. Redaction is a property of the type,
//! so a `{:?}` of a whole config, an error message or a status dump cannot leak one.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// What a secret prints as, everywhere.
pub const REDACTED: &str = "[redacted]";

/// A secret value; read it with [`Secret::expose`] at the one place that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call it only where the value leaves for its destination.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Accepts numbers and booleans too: figment parses environment values like TOML, so
    /// `MXFLEET_…PASSWORD=12345` arrives as an integer.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }
}

/// Compares without an early exit, so timing does not tell how much of a secret (token, code)
/// was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).ok().as_deref(),
            Some("\"[redacted]\"")
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn accepts_numbers_from_env_parsing() {
        let s: Secret = serde_json::from_str("12345").unwrap_or_else(|_| Secret::new(""));
        assert_eq!(s.expose(), "12345");
    }
}
