//! Secret material in memory: values that must never reach a log line, an
//! audit record, a metric or an error message.
//!
//! `SecretString` and `SecretBytes` redact themselves in `Debug` and have no
//! `Display`, so `tracing` fields and `format!` cannot leak them by accident;
//! reading the value takes an explicit `expose()`. A `SecretString` wipes
//! its buffer when dropped. `SecretBytes` shares its buffer (a refcounted
//! `Bytes` that hyper and the cache also hold), so it cannot be wiped in
//! place; it lives only as long as a cache entry or a response.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// Response bytes that carry secret values (an upstream reply to a read).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(bytes::Bytes);

impl SecretBytes {
    pub fn new(b: bytes::Bytes) -> Self {
        SecretBytes(b)
    }

    pub fn expose(&self) -> &bytes::Bytes {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_value() {
        let s = SecretString::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let b = SecretBytes::new(bytes::Bytes::from_static(b"hunter2"));
        assert!(!format!("{b:?}").contains("hunter2"));
    }
}
