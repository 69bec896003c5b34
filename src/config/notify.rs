//! `[notify]`: webhooks that tell people about held requests. Raw serde
//! shape and its validation, kept apart from the policy-heavy rest of
//! `config` because it changes for different reasons.
//!
//! A webhook URL usually carries its own credential (a Slack incoming-webhook
//! URL is a bearer secret in its path), so it is resolved like any other
//! secret (`env:NAME`, `file:/path` or inline) and held as a `SecretString`.
//! Error messages about it name the key, never the value.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, resolve_secret, ConfigError};
use crate::events::EventKind;
use crate::secret::SecretString;

/// Validated `[notify]`.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    /// Base URL of the approver page; messages link to `<admin_url>#<id>`.
    pub admin_url: Option<String>,
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[notify.webhooks]]` entry.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Unique; the only thing logs say about the webhook.
    pub name: String,
    /// Where events are POSTed. Secret: never logged, never in an error.
    pub url: SecretString,
    pub format: WebhookFormat,
    /// The event kinds sent to this webhook, without duplicates.
    pub events: Vec<EventKind>,
    /// Time allowed for one attempt (connect, send, response head).
    pub timeout: Duration,
    /// Attempts per event, the first included; at least 1.
    pub max_attempts: u32,
    /// First retry delay; each further retry doubles it. Not read from the
    /// file (always 500 ms there); tests shorten it.
    pub backoff_base: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// keygate's own JSON document: event, actor, recipients, request view.
    Json,
    /// A Slack incoming-webhook message (`text` plus blocks).
    Slack,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_ATTEMPTS: u32 = 6;
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);

/// Sent when `events` is not given: everything except `reviewed`, which is
/// chatty (one per approval) and followed by `approved` anyway.
fn default_events() -> Vec<EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| *k != EventKind::Reviewed)
        .collect()
}

// ---------------------------------------------------------------------------
// Raw shape
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    admin_url: Option<String>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    // Optional here so that a missing name gets our message, not serde's.
    name: Option<String>,
    url: Option<String>,
    format: Option<String>,
    events: Option<Vec<String>>,
    timeout: Option<String>,
    max_attempts: Option<u32>,
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

pub(super) fn validate_notify(raw: RawNotify) -> Result<NotifyConfig, ConfigError> {
    let admin_url = raw
        .admin_url
        .map(|u| validate_admin_url(&u).map(|()| u))
        .transpose()?;
    let mut names = HashSet::new();
    let mut webhooks = Vec::with_capacity(raw.webhooks.len());
    for (i, w) in raw.webhooks.into_iter().enumerate() {
        let key = format!("notify.webhooks[{i}]");
        let hook = validate_webhook(&key, w)?;
        if !names.insert(hook.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "{:?} is listed twice; webhook names must be unique",
                    hook.name
                ),
            ));
        }
        webhooks.push(hook);
    }
    Ok(NotifyConfig {
        admin_url,
        webhooks,
    })
}

fn validate_admin_url(url: &str) -> Result<(), ConfigError> {
    // Not a secret: every message shows it.
    match url_problem(url) {
        Some(problem) => Err(invalid(
            "notify.admin_url",
            format!("{url:?} {problem}; use an http:// or https:// URL"),
        )),
        None => Ok(()),
    }
}

fn validate_webhook(key: &str, raw: RawWebhook) -> Result<WebhookConfig, ConfigError> {
    let name = raw.name.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(invalid(
            format!("{key}.name"),
            "is required and must not be empty; logs name the webhook by it",
        ));
    }
    let url_key = format!("{key}.url");
    let Some(url) = raw.url else {
        return Err(invalid(
            url_key,
            "is required: an http(s) URL, \"env:NAME\" or \"file:/path\"",
        ));
    };
    let url = resolve_secret(&url_key, &url)?;
    check_webhook_url(&url_key, url.expose())?;
    let format = match raw.format.as_deref() {
        None | Some("json") => WebhookFormat::Json,
        Some("slack") => WebhookFormat::Slack,
        Some(other) => {
            return Err(invalid(
                format!("{key}.format"),
                format!("{other:?} is not allowed; use \"json\" or \"slack\""),
            ))
        }
    };
    let events = match raw.events {
        None => default_events(),
        Some(list) => validate_events(&format!("{key}.events"), &list)?,
    };
    let timeout = match raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => duration(&format!("{key}.timeout"), &t)?,
    };
    if timeout.is_zero() {
        return Err(invalid(format!("{key}.timeout"), "must be more than 0s"));
    }
    let max_attempts = raw.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        return Err(invalid(
            format!("{key}.max_attempts"),
            "0 would never send anything; use at least 1 (1 means no retries)",
        ));
    }
    Ok(WebhookConfig {
        name,
        url,
        format,
        events,
        timeout,
        max_attempts,
        backoff_base: DEFAULT_BACKOFF_BASE,
    })
}

/// The message never shows the value: the URL is a secret.
fn check_webhook_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match url_problem(url) {
        Some(problem) => Err(invalid(
            key,
            format!("{problem}; use an http:// or https:// URL (the value is not shown: it may hold a secret)"),
        )),
        None => Ok(()),
    }
}

/// What is wrong with `url` as an http(s) URL, if anything. Mentions at most
/// the scheme, so the answer is safe to show for a secret URL.
fn url_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some("is not a URL".to_string());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        let plausible = !scheme.is_empty()
            && scheme.len() <= 16
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        return Some(if plausible {
            format!("scheme {scheme:?} is not allowed")
        } else {
            "is not a URL".to_string()
        });
    }
    // The URL parser would read `https:///host` as a host; refuse it.
    if rest.is_empty() || rest.starts_with('/') {
        return Some("has no host".to_string());
    }
    if reqwest::Url::parse(url).is_err() {
        return Some("is not a valid URL".to_string());
    }
    None
}

fn validate_events(key: &str, list: &[String]) -> Result<Vec<EventKind>, ConfigError> {
    if list.is_empty() {
        return Err(invalid(
            key,
            "is empty, so nothing would be sent; name at least one event or remove the webhook",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let kind = EventKind::parse(e).ok_or_else(|| {
            let allowed: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            invalid(
                format!("{key}[{i}]"),
                format!("{e:?} is not an event; use one of {}", allowed.join(", ")),
            )
        })?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, ConfigError> {
        #[derive(Deserialize)]
        struct Wrapper {
            #[serde(default)]
            notify: RawNotify,
        }
        let w: Wrapper = toml::from_str(text).expect("test TOML parses");
        validate_notify(w.notify)
    }

    /// `text` must fail with an error whose key is `key` and whose message
    /// contains `message`.
    fn check_err(text: &str, key: &str, message: &str) {
        match parse(text) {
            Err(ConfigError::Invalid { key: k, message: m }) => {
                assert_eq!(k, key, "key for {text}");
                assert!(m.contains(message), "{m:?} should contain {message:?}");
            }
            Err(other) => panic!("unexpected error {other} for {text}"),
            Ok(_) => panic!("accepted {text}"),
        }
    }

    #[test]
    fn absent_section_means_no_webhooks() {
        let c = parse("").expect("valid");
        assert!(c.webhooks.is_empty());
        assert_eq!(c.admin_url, None);
    }

    #[test]
    fn defaults_apply() {
        let c = parse(
            r#"
            [notify]
            admin_url = "https://keygate.internal:8741/ui"
            [[notify.webhooks]]
            name = "audit-sink"
            url = "https://hooks.example.com/keygate"
            "#,
        )
        .expect("valid");
        assert_eq!(
            c.admin_url.as_deref(),
            Some("https://keygate.internal:8741/ui")
        );
        let w = &c.webhooks[0];
        assert_eq!(w.name, "audit-sink");
        assert_eq!(w.url.expose(), "https://hooks.example.com/keygate");
        assert_eq!(w.format, WebhookFormat::Json);
        assert_eq!(w.timeout, Duration::from_secs(5));
        assert_eq!(w.max_attempts, 6);
        assert_eq!(w.backoff_base, Duration::from_millis(500));
        assert!(!w.events.contains(&EventKind::Reviewed));
        assert_eq!(w.events.len(), EventKind::ALL.len() - 1);
    }

    #[test]
    fn full_entry_with_env_url() {
        std::env::set_var(
            "KEYGATE_TEST_NOTIFY_URL",
            "https://hooks.slack.com/services/T000/B000/XXXX",
        );
        let c = parse(
            r#"
            [[notify.webhooks]]
            name = "secops-slack"
            url = "env:KEYGATE_TEST_NOTIFY_URL"
            format = "slack"
            events = ["created", "escalated", "created", "bypassed"]
            timeout = "2s"
            max_attempts = 3
            "#,
        )
        .expect("valid");
        let w = &c.webhooks[0];
        assert_eq!(
            w.url.expose(),
            "https://hooks.slack.com/services/T000/B000/XXXX"
        );
        assert_eq!(w.format, WebhookFormat::Slack);
        assert_eq!(
            w.events,
            vec![
                EventKind::Created,
                EventKind::Escalated,
                EventKind::Bypassed
            ]
        );
        assert_eq!(w.timeout, Duration::from_secs(2));
        assert_eq!(w.max_attempts, 3);
        // The URL never shows in Debug output (it is logged with the config).
        assert!(!format!("{c:?}").contains("XXXX"));
    }

    #[test]
    fn invalid_entries_name_the_key() {
        let hook = |extra: &str| {
            format!("[[notify.webhooks]]\nname = \"h\"\nurl = \"https://example.com/x\"\n{extra}")
        };
        check_err(
            &hook("format = \"teams\""),
            "notify.webhooks[0].format",
            "\"teams\" is not allowed; use \"json\" or \"slack\"",
        );
        check_err(
            &hook("events = [\"created\", \"approve\"]"),
            "notify.webhooks[0].events[1]",
            "\"approve\" is not an event; use one of created, reviewed",
        );
        check_err(
            &hook("events = []"),
            "notify.webhooks[0].events",
            "is empty",
        );
        check_err(
            &hook("max_attempts = 0"),
            "notify.webhooks[0].max_attempts",
            "use at least 1",
        );
        check_err(
            &hook("timeout = \"soon\""),
            "notify.webhooks[0].timeout",
            "is not a duration",
        );
        check_err(
            &hook("timeout = \"0s\""),
            "notify.webhooks[0].timeout",
            "more than 0s",
        );
        check_err(
            "[[notify.webhooks]]\nname = \"\"\nurl = \"https://example.com/x\"",
            "notify.webhooks[0].name",
            "must not be empty",
        );
        check_err(
            "[[notify.webhooks]]\nurl = \"https://example.com/x\"",
            "notify.webhooks[0].name",
            "is required",
        );
        check_err(
            "[[notify.webhooks]]\nname = \"h\"",
            "notify.webhooks[0].url",
            "is required",
        );
        check_err(
            "[[notify.webhooks]]\nname = \"a\"\nurl = \"https://example.com/1\"\n\
             [[notify.webhooks]]\nname = \"a\"\nurl = \"https://example.com/2\"",
            "notify.webhooks[1].name",
            "\"a\" is listed twice",
        );
        check_err(
            "[notify]\nadmin_url = \"keygate.internal/ui\"",
            "notify.admin_url",
            "\"keygate.internal/ui\" is not a URL; use an http:// or https:// URL",
        );
        check_err(
            "[[notify.webhooks]]\nname = \"h\"\nurl = \"env:KEYGATE_TEST_NOTIFY_UNSET\"",
            "notify.webhooks[0].url",
            "KEYGATE_TEST_NOTIFY_UNSET is not set",
        );
    }

    #[test]
    fn bad_url_scheme_is_refused_without_showing_the_url() {
        for (url, message) in [
            (
                "ftp://files.example.com/T0/secret-part",
                "scheme \"ftp\" is not allowed",
            ),
            ("hooks.example.com/secret-part", "is not a URL"),
            ("https:///secret-part", "has no host"),
            ("http://exa mple.com/secret-part", "is not a valid URL"),
        ] {
            let text = format!("[[notify.webhooks]]\nname = \"h\"\nurl = \"{url}\"");
            check_err(&text, "notify.webhooks[0].url", message);
            let err = parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.contains("secret-part"), "{err} shows the URL");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let w: Result<RawNotify, _> = toml::from_str(
            "[[webhooks]]\nname = \"h\"\nurl = \"https://example.com\"\nretries = 3",
        );
        assert!(w.is_err());
        let n: Result<RawNotify, _> = toml::from_str("admin = \"https://x\"");
        assert!(n.is_err());
    }
}
