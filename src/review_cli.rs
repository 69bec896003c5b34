//! The approver's terminal: `keygate requests review` walks pending requests
//! one at a time (context, then approve / deny / skip), and `keygate
//! requests watch` prints the event stream as it happens. Both are thin
//! layers over the admin API, so they see exactly what the web page sees.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::admin_client::AdminClient;

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Everything an approver needs to decide, as plain text.
pub fn describe(r: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| {
        if !v.is_empty() {
            out.push_str(&format!("  {k:<14} {v}\n"));
        }
    };
    out.push_str(&format!(
        "request {}  ({})\n",
        r["id"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?")
    ));
    line(
        &mut out,
        "identity",
        r["identity"].as_str().unwrap_or("?").into(),
    );
    line(
        &mut out,
        "operation",
        format!(
            "{} ({})",
            r["operation"].as_str().unwrap_or("?"),
            r["front"].as_str().unwrap_or("?")
        ),
    );
    line(&mut out, "resources", strings(&r["resources"]).join(", "));
    line(&mut out, "rule", r["rule"].as_str().unwrap_or("?").into());
    line(&mut out, "why held", strings(&r["reasons"]).join("; "));
    line(
        &mut out,
        "justification",
        r["justification"].as_str().unwrap_or("(none given)").into(),
    );
    line(
        &mut out,
        "client",
        r["client"].as_str().unwrap_or("").into(),
    );
    line(
        &mut out,
        "certificate",
        r["certificate"].as_str().unwrap_or("").into(),
    );
    let factors: Vec<String> = r["factors"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    format!(
                        "{} from {}",
                        f["approvals"].as_u64().unwrap_or(1),
                        f["group"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    line(&mut out, "needs", factors.join(" and "));
    let approvals: Vec<String> = r["approvals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let who = x["approver"].as_str().unwrap_or("?");
                    match x["comment"].as_str() {
                        Some(c) => format!("{who} ({c})"),
                        None => who.to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    line(&mut out, "approved by", approvals.join(", "));
    if let Some(at) = r["escalated_at"].as_str() {
        line(&mut out, "escalated", at.into());
    }
    line(
        &mut out,
        "parameters",
        serde_json::to_string(&r["parameters"]).unwrap_or_default(),
    );
    line(
        &mut out,
        "created",
        r["created_at"].as_str().unwrap_or("?").into(),
    );
    line(
        &mut out,
        "expires",
        r["expires_at"].as_str().unwrap_or("?").into(),
    );
    out
}

fn ask(
    input: &mut impl BufRead,
    output: &mut impl Write,
    prompt: &str,
) -> anyhow::Result<Option<String>> {
    write!(output, "{prompt}")?;
    output.flush()?;
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}

/// Walk the pending requests: approve, deny (with a reason) or skip each.
/// Returns how many were approved and denied.
pub async fn review(
    client: &AdminClient,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> anyhow::Result<(usize, usize)> {
    let list = client.get("/admin/v1/requests?state=pending").await?;
    let pending = list["requests"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        writeln!(output, "nothing is pending")?;
        return Ok((0, 0));
    }
    let (mut approved, mut denied) = (0, 0);
    for (i, r) in pending.iter().enumerate() {
        let id = r["id"].as_str().context("a request without an id")?;
        writeln!(output, "\n[{}/{}] {}", i + 1, pending.len(), describe(r))?;
        loop {
            let Some(choice) = ask(input, output, "[a]pprove, [d]eny, [s]kip, [q]uit? ")? else {
                return Ok((approved, denied));
            };
            let result = match choice.as_str() {
                "a" | "approve" => {
                    let comment = ask(input, output, "comment (optional): ")?.unwrap_or_default();
                    client
                        .post(
                            &format!("/admin/v1/requests/{id}/approve"),
                            json!({ "comment": (!comment.is_empty()).then_some(comment) }),
                        )
                        .await
                        .map(|v| {
                            approved += 1;
                            match v["outcome"]["result"].as_str() {
                                Some("approval_counted") => format!(
                                    "approval counted ({} of {})",
                                    v["outcome"]["have"], v["outcome"]["need"]
                                ),
                                _ => "approved".to_string(),
                            }
                        })
                }
                "d" | "deny" => {
                    let reason = ask(input, output, "reason (required): ")?.unwrap_or_default();
                    if reason.is_empty() {
                        writeln!(output, "a denial needs a reason")?;
                        continue;
                    }
                    client
                        .post(
                            &format!("/admin/v1/requests/{id}/deny"),
                            json!({ "reason": reason }),
                        )
                        .await
                        .map(|v| {
                            denied += 1;
                            match v["outcome"]["result"].as_str() {
                                Some("denial_counted") => "denial counted".to_string(),
                                _ => "denied".to_string(),
                            }
                        })
                }
                "s" | "skip" | "" => Ok("skipped".to_string()),
                "q" | "quit" => return Ok((approved, denied)),
                other => {
                    writeln!(output, "unknown choice {other:?}")?;
                    continue;
                }
            };
            match result {
                Ok(what) => writeln!(output, "{id}: {what}")?,
                // The server's reason (not in the group, the owner, already decided).
                Err(e) => writeln!(output, "{id}: not recorded: {e}")?,
            }
            break;
        }
    }
    Ok((approved, denied))
}

/// One line per event.
pub fn event_line(kind: &str, e: &Value) -> String {
    let r = &e["request"];
    let mut line = format!(
        "{}  {:<12} {}  {}  {} {}  rule={}  by={}",
        e["at"].as_str().unwrap_or("?"),
        kind,
        r["id"].as_str().unwrap_or("?"),
        r["identity"].as_str().unwrap_or("?"),
        r["operation"].as_str().unwrap_or("?"),
        strings(&r["resources"]).join(","),
        r["rule"].as_str().unwrap_or("?"),
        e["actor"].as_str().unwrap_or("?"),
    );
    if let Some(c) = e["comment"].as_str() {
        line.push_str(&format!("  {c:?}"));
    }
    line
}

/// Print events as they arrive, until the stream ends.
pub async fn watch(
    client: &AdminClient,
    json: bool,
    output: &mut impl Write,
) -> anyhow::Result<()> {
    let mut pending = String::new();
    let mut kind = String::new();
    let mut result = Ok(());
    client
        .stream("/admin/v1/events", |chunk| {
            pending.push_str(chunk);
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let text = if json {
                        data.to_string()
                    } else {
                        match serde_json::from_str::<Value>(data) {
                            Ok(v) => event_line(&kind, &v),
                            Err(_) => format!("{kind} {data}"),
                        }
                    };
                    if let Err(e) = writeln!(output, "{text}").and_then(|()| output.flush()) {
                        result = Err(e);
                        return false;
                    }
                }
            }
            true
        })
        .await?;
    result?;
    bail!("the event stream ended (keygate stopped?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_shows_what_an_approver_decides_on() {
        let r = json!({
            "id": "r1", "state": "pending", "identity": "demo-app", "front": "aws",
            "operation": "GetSecretValue", "resources": ["prod/db"], "rule": "prod-read",
            "reasons": ["resource prod/db matches prod/*"], "justification": "incident 7",
            "factors": [{"group": "secops", "approvals": 1}, {"group": "owners", "approvals": 1}],
            "approvals": [{"approver": "alice", "comment": "ok"}], "parameters": {"SecretId": "prod/db"},
            "created_at": "t0", "expires_at": "t1"
        });
        let text = describe(&r);
        for want in [
            "demo-app",
            "GetSecretValue (aws)",
            "prod/db",
            "prod-read",
            "incident 7",
            "1 from secops and 1 from owners",
            "alice (ok)",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn an_event_line_names_kind_request_and_actor() {
        let e = json!({"at": "t", "actor": "bob", "comment": "no",
                       "request": {"id": "r1", "identity": "app", "operation": "op", "resources": ["a"], "rule": "x"}});
        let line = event_line("denied", &e);
        assert!(
            line.contains("denied") && line.contains("r1") && line.contains("by=bob"),
            "{line}"
        );
    }
}
