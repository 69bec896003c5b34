//! `GET /admin/v1/events`: the event hub as server-sent events. Each event is
//! `event: <kind>` plus one `data:` line of JSON (the request as approvers see
//! it, never a secret value); a comment line every 15 s keeps proxies from
//! closing an idle stream. The stream ends when the client goes away or
//! keygate shuts down.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

use crate::events::{EventHub, GateEvent};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A response body fed by a task that follows the event hub.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Start following `events` for one client.
pub fn stream(events: &EventHub, mut closing: watch::Receiver<bool>) -> SseBody {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut sub = events.subscribe();
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": keygate events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut ping = tokio::time::interval(KEEP_ALIVE);
        ping.tick().await;
        loop {
            let chunk = tokio::select! {
                received = sub.recv() => match received {
                    Ok(event) => frame(&event),
                    Err(RecvError::Lagged(n)) => Bytes::from(format!(
                        "event: lagged\ndata: {{\"missed\": {n}}}\n\n"
                    )),
                    Err(RecvError::Closed) => break,
                },
                _ = ping.tick() => Bytes::from_static(b": keep-alive\n\n"),
                _ = closing.changed() => break,
                _ = tx.closed() => break,
            };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    SseBody { rx }
}

fn frame(event: &GateEvent) -> Bytes {
    // serde_json writes no newlines, so the JSON fits one `data:` line.
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_string());
    Bytes::from(format!("event: {}\ndata: {data}\n\n", event.kind.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn events_arrive_as_one_frame_each_and_the_stream_ends_at_shutdown() {
        let hub = EventHub::default();
        let (stop, closing) = watch::channel(false);
        let mut body = stream(&hub, closing);
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), ": keygate events\n\n");
        tokio::task::yield_now().await;
        hub.publish(GateEvent {
            kind: EventKind::Created,
            at: crate::timestamp::Timestamp::from_millis(0),
            actor: "policy".into(),
            comment: Some("line one\nline two".into()),
            request: serde_json::json!({"id": "r1"}),
        });
        let next = body.frame().await.expect("frame").expect("ok");
        let text = String::from_utf8(next.into_data().expect("data").to_vec()).expect("utf8");
        assert!(text.starts_with("event: created\ndata: {"), "{text}");
        assert_eq!(
            text.matches('\n').count(),
            3,
            "newlines in values stay escaped: {text}"
        );
        stop.send_replace(true);
        assert!(body.frame().await.is_none(), "the stream ends at shutdown");
    }
}
