//! Glob patterns for identities and resources: `*` matches any run of
//! characters (including `/`), `?` exactly one character; everything else is
//! literal. Matching is linear in practice and allocation-free.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, text: &str) -> bool {
        matches(self.pattern.as_bytes(), text.as_bytes())
    }
}

/// Iterative wildcard match with single-star backtracking: when a later
/// literal fails, retry from the most recent `*` one character further on.
fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, text: &str, expect: bool) {
        assert_eq!(
            Glob::new(pattern).matches(text),
            expect,
            "{pattern:?} vs {text:?}"
        );
    }

    #[test]
    fn table() {
        for (p, t, e) in [
            ("demo/*", "demo/db/password", true),
            ("demo/*", "demo/", true),
            ("demo/*", "demo", false),
            ("demo/*", "prod/demo/x", false),
            ("*", "", true),
            ("*", "anything/at/all", true),
            ("prod/*/db", "prod/payments/db", true),
            ("prod/*/db", "prod/payments/db2", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxbxx", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            check(p, t, e);
        }
    }
}
