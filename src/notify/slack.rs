//! The Slack incoming-webhook message for an event: a one-line `text` (what
//! notifications and old clients show) and blocks with the details.
//!
//! Everything a workload or an approver typed (justification, comments,
//! resource names) is escaped for Slack's mrkdwn, where `<...>` is a link or
//! a mention (`<!channel>`) and `&` starts an entity, and is clipped so a long
//! justification cannot push the message past Slack's limits (3000
//! characters per section). Recipients are named, not mentioned: keygate
//! does not know Slack user ids.

use serde_json::{json, Value};

use super::View;
use crate::events::{EventKind, GateEvent};

/// Longest free-text field shown, in characters.
const MAX_FIELD: usize = 300;
/// Slack refuses the whole message if a block's text is longer than 3000
/// characters; one is kept for the ellipsis.
const MAX_BLOCK_TEXT: usize = 2999;
/// Resources named in the summary line; the rest are counted.
const MAX_RESOURCES: usize = 3;

pub(super) fn payload(event: &GateEvent, recipients: &[String], link: Option<&str>) -> Value {
    let view = View(&event.request);
    let summary = summary(event, view, link);
    let section = clip(
        &format!("{summary}\n{}", details(event, view)),
        MAX_BLOCK_TEXT,
    );
    let context = clip(&context(event, view, recipients), MAX_BLOCK_TEXT);
    json!({
        "text": summary,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": section}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    })
}

/// The one line that says what happened and what is asked of the reader.
fn summary(event: &GateEvent, view: View<'_>, link: Option<&str>) -> String {
    let who = line(view.identity());
    let what = format!("{} on {}", line(view.operation()), resources(view));
    let rule = line(view.rule());
    let actor = line(&event.actor);
    let comment = event.comment.as_deref().map(line);
    let because = |label: &str| match &comment {
        Some(c) => format!(", {label}: \u{201c}{c}\u{201d}"),
        None => String::new(),
    };
    let mut s = match event.kind {
        EventKind::Created => format!(
            ":lock: keygate: {who} asks {what} (rule {rule}, needs {})",
            needs(view)
        ),
        EventKind::Reviewed => format!(
            ":ballot_box_with_check: keygate: {actor} approved {who}\u{2019}s {what} (rule {rule}); more approvals are needed ({})",
            needs(view)
        ),
        EventKind::Approved => format!(
            ":white_check_mark: keygate: {actor} approved {who}\u{2019}s {what} (rule {rule}){}",
            because("comment")
        ),
        EventKind::Denied => format!(
            ":no_entry: keygate: {actor} denied {who}\u{2019}s {what} (rule {rule}){}",
            because("reason")
        ),
        EventKind::Expired => format!(
            ":hourglass: keygate: {who}\u{2019}s {what} (rule {rule}) expired without a decision"
        ),
        EventKind::Escalated => format!(
            ":rotating_light: keygate: {who}\u{2019}s {what} (rule {rule}) was not decided in time; now asking {}",
            line(view.escalation_group().unwrap_or("the escalation group"))
        ),
        EventKind::Bypassed => format!(
            ":warning: keygate: break-glass: {actor} bypassed the hold on {who}\u{2019}s {what} (rule {rule}){}; it awaits acknowledgement",
            because("reason")
        ),
        EventKind::Acknowledged => format!(
            ":ballot_box_with_check: keygate: {actor} acknowledged the break-glass bypass of {who}\u{2019}s {what} (rule {rule})"
        ),
    };
    if let Some(url) = link {
        let label = if wants_action(event.kind) {
            "review"
        } else {
            "details"
        };
        s.push_str(&format!(" \u{2014} <{}|{label}>", link_target(url)));
    }
    s
}

/// Events that ask the reader to act on the approver page; the others link
/// to it for details.
fn wants_action(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Created | EventKind::Reviewed | EventKind::Escalated | EventKind::Bypassed
    )
}

/// Field lines under the summary.
fn details(event: &GateEvent, view: View<'_>) -> String {
    let mut lines = vec![
        format!("*Identity:* {}", line(view.identity())),
        format!("*Operation:* {}", line(view.operation())),
        format!("*Resources:* {}", all_resources(view)),
    ];
    let reasons = view.reasons();
    if reasons.is_empty() {
        lines.push(format!("*Rule:* {}", line(view.rule())));
    } else {
        let reasons: Vec<String> = reasons.into_iter().map(line).collect();
        lines.push(format!(
            "*Rule:* {} \u{2014} {}",
            line(view.rule()),
            reasons.join("; ")
        ));
    }
    if let Some(j) = view.justification() {
        lines.push(format!("*Justification:* {}", line(j)));
    }
    if let Some(c) = &event.comment {
        let label = match event.kind {
            EventKind::Denied | EventKind::Bypassed => "Reason",
            _ => "Comment",
        };
        lines.push(format!("*{label}:* {}", line(c)));
    }
    lines.join("\n")
}

fn context(event: &GateEvent, view: View<'_>, recipients: &[String]) -> String {
    let mut parts = Vec::new();
    if !recipients.is_empty() {
        let names: Vec<String> = recipients.iter().map(|r| line(r)).collect();
        parts.push(format!("For: {}", names.join(", ")));
    }
    parts.push(format!("request `{}`", line(view.id())));
    parts.push(event.at.to_rfc3339());
    parts.join(" \u{b7} ")
}

/// `secops`, `2 of secops`, or `secops and payments-owners`.
fn needs(view: View<'_>) -> String {
    let factors: Vec<String> = view
        .factors()
        .into_iter()
        .map(|(group, n)| {
            if n > 1 {
                format!("{n} of {}", line(group))
            } else {
                line(group)
            }
        })
        .collect();
    if factors.is_empty() {
        "an approval".to_string()
    } else {
        factors.join(" and ")
    }
}

/// The first few resources, then how many more.
fn resources(view: View<'_>) -> String {
    let all = view.resources();
    if all.is_empty() {
        return "(no resource)".to_string();
    }
    let shown: Vec<String> = all.iter().take(MAX_RESOURCES).map(|r| line(r)).collect();
    match all.len() - shown.len() {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

fn all_resources(view: View<'_>) -> String {
    let all: Vec<&str> = view.resources();
    if all.is_empty() {
        return "(none)".to_string();
    }
    line(&all.join(", "))
}

/// Escaped, clipped, and on one line (newlines would break the layout).
fn line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    escape(&clip(&flat, MAX_FIELD))
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}\u{2026}", &s[..end]),
        None => s.to_string(),
    }
}

/// Slack's mrkdwn escaping: the three characters it gives a meaning to.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The URL inside `<url|label>`: `|` and `>` would end it early.
fn link_target(url: &str) -> String {
    url.replace('|', "%7C")
        .replace('>', "%3E")
        .replace('<', "%3C")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{directory, event, request, ADMIN, ID};
    use super::*;
    use crate::notify::{link, recipients};

    /// The Slack message for `kind`, addressed as the notifier would.
    fn message(kind: EventKind, actor: &str, comment: Option<&str>, request: Value) -> Value {
        let e = event(kind, actor, comment, request);
        let who = recipients(&directory(), &e);
        payload(&e, &who, link(Some(ADMIN), &e).as_deref())
    }

    fn check(kind: EventKind, actor: &str, comment: Option<&str>, expect_text: &str) {
        let m = message(kind, actor, comment, request("demo-app"));
        assert_eq!(m["text"], expect_text, "{kind:?}");
        // Incoming-webhook shape: a section with the summary first, then a
        // context line.
        assert_eq!(m["blocks"][0]["type"], "section");
        assert_eq!(m["blocks"][0]["text"]["type"], "mrkdwn");
        let section = m["blocks"][0]["text"]["text"]
            .as_str()
            .expect("section text");
        assert!(section.starts_with(expect_text), "{section}");
        assert!(
            section.contains("*Justification:* incident 4711"),
            "{section}"
        );
        assert!(section.len() < 3000);
        assert_eq!(m["blocks"][1]["type"], "context");
        assert_eq!(m["blocks"][1]["elements"][0]["type"], "mrkdwn");
        let context = m["blocks"][1]["elements"][0]["text"]
            .as_str()
            .expect("context");
        assert!(context.contains(&format!("request `{ID}`")), "{context}");
        assert_eq!(m.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn summary_for_every_kind() {
        let review = format!(" \u{2014} <{ADMIN}#{ID}|review>");
        let details = format!(" \u{2014} <{ADMIN}#{ID}|details>");
        let what = "GetSecretValue on prod/payments/db (rule prod-read)";
        check(
            EventKind::Created,
            "demo-app",
            None,
            &format!(":lock: keygate: demo-app asks GetSecretValue on prod/payments/db (rule prod-read, needs secops and payments-owners){review}"),
        );
        check(
            EventKind::Reviewed,
            "alice",
            None,
            &format!(":ballot_box_with_check: keygate: alice approved demo-app\u{2019}s {what}; more approvals are needed (secops and payments-owners){review}"),
        );
        check(
            EventKind::Approved,
            "carol",
            Some("incident 4711"),
            &format!(":white_check_mark: keygate: carol approved demo-app\u{2019}s {what}, comment: \u{201c}incident 4711\u{201d}{details}"),
        );
        check(
            EventKind::Denied,
            "carol",
            Some("no bulk exports today"),
            &format!(":no_entry: keygate: carol denied demo-app\u{2019}s {what}, reason: \u{201c}no bulk exports today\u{201d}{details}"),
        );
        check(
            EventKind::Expired,
            "system",
            None,
            &format!(
                ":hourglass: keygate: demo-app\u{2019}s {what} expired without a decision{details}"
            ),
        );
        check(
            EventKind::Escalated,
            "system",
            None,
            &format!(":rotating_light: keygate: demo-app\u{2019}s {what} was not decided in time; now asking payments-leads{review}"),
        );
        check(
            EventKind::Bypassed,
            "demo-app",
            Some("prod outage, INC-9"),
            &format!(":warning: keygate: break-glass: demo-app bypassed the hold on demo-app\u{2019}s {what}, reason: \u{201c}prod outage, INC-9\u{201d}; it awaits acknowledgement{review}"),
        );
        check(
            EventKind::Acknowledged,
            "alice",
            None,
            &format!(":ballot_box_with_check: keygate: alice acknowledged the break-glass bypass of demo-app\u{2019}s {what}{details}"),
        );
    }

    #[test]
    fn recipients_are_named_in_the_context() {
        let context = |kind| {
            message(kind, "x", None, request("demo-app"))["blocks"][1]["elements"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        assert!(context(EventKind::Created).starts_with("For: alice, carol \u{b7} request"));
        assert!(context(EventKind::Denied).starts_with("For: bob \u{b7} "));
        assert!(context(EventKind::Escalated).starts_with("For: dave \u{b7} "));
        assert!(context(EventKind::Reviewed).starts_with("request `"));
        assert!(context(EventKind::Created).ends_with("2026-11-18T11:06:40.123Z"));
    }

    #[test]
    fn needs_counts_approvals_and_falls_back_to_the_approver_group() {
        let mut r = request("ci-job");
        r["factors"] = json!([{"group": "secops", "approvals": 2}]);
        assert_eq!(needs(View(&r)), "2 of secops");
        r["factors"] = Value::Null;
        assert_eq!(needs(View(&r)), "secops");
        r["approver_group"] = Value::Null;
        assert_eq!(needs(View(&r)), "an approval");
    }

    #[test]
    fn escape_handles_the_three_mrkdwn_characters() {
        for (input, expect) in [
            ("plain", "plain"),
            ("a & b", "a &amp; b"),
            ("<!channel>", "&lt;!channel&gt;"),
            (
                "<https://evil.example|click>",
                "&lt;https://evil.example|click&gt;",
            ),
            ("&amp;", "&amp;amp;"),
            ("*bold* _it_ ünïcode", "*bold* _it_ ünïcode"),
        ] {
            assert_eq!(escape(input), expect);
        }
    }

    #[test]
    fn user_text_is_escaped_flattened_and_clipped() {
        let mut r = request("demo-app");
        r["justification"] = json!("<!here> see\n<https://evil.example|this> & that");
        r["resources"] = json!(["prod/<a>", "b", "c", "d", "e"]);
        let m = message(
            EventKind::Denied,
            "carol",
            Some("<@U123> nope\r\nsecond line"),
            r,
        );
        let text = m["text"].as_str().expect("text");
        assert!(
            text.contains("on prod/&lt;a&gt;, b, c and 2 more"),
            "{text}"
        );
        assert!(
            text.contains("\u{201c}&lt;@U123&gt; nope  second line\u{201d}"),
            "{text}"
        );
        let without_link = text.split(" \u{2014} <").next().unwrap_or("");
        assert!(!without_link.contains('<'), "{text}");
        assert_eq!(text.matches('<').count(), 1, "{text}");
        let section = m["blocks"][0]["text"]["text"].as_str().expect("section");
        assert!(section.contains(
            "*Justification:* &lt;!here&gt; see &lt;https://evil.example|this&gt; &amp; that"
        ));
        assert!(section.contains("*Resources:* prod/&lt;a&gt;, b, c, d, e"));
        assert_eq!(section.matches('<').count(), 1, "{section}");
        assert_eq!(section.lines().count(), 7, "{section}");

        let long = "x".repeat(5000);
        let mut r = request("demo-app");
        r["justification"] = json!(long);
        let m = message(EventKind::Created, "demo-app", None, r);
        let section = m["blocks"][0]["text"]["text"].as_str().expect("section");
        assert!(section.contains(&format!("{}\u{2026}", "x".repeat(MAX_FIELD))));
        assert!(section.chars().count() < 3000);
    }

    #[test]
    fn blocks_stay_within_slack_limits() {
        let long = "y".repeat(2000);
        let mut r = request(&long);
        r["operation"] = json!(long);
        r["rule"] = json!(long);
        r["justification"] = json!(long);
        r["resources"] = json!([long, long, long, long]);
        r["reasons"] = json!([long, long]);
        let m = message(EventKind::Denied, &long, Some(&long), r);
        for text in [
            &m["blocks"][0]["text"]["text"],
            &m["blocks"][1]["elements"][0]["text"],
        ] {
            let n = text.as_str().expect("text").chars().count();
            assert!(n <= 3000, "{n} characters");
        }
    }
}
