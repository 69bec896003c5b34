//! A request's time budget (`server.limits.request_timeout`) that stops
//! running while the request waits for a human: a held request may wait for
//! its whole hold window, but reading its body, deciding it and calling the
//! upstream are still bounded.
//!
//! The server runs each handler inside `BUDGET.scope`; the broker holds a
//! `pause()` guard for the length of an approval wait. Outside a scope
//! (unit tests, the CLI) the guard does nothing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

tokio::task_local! {
    static BUDGET: Arc<Budget>;
}

pub struct Budget {
    started: Instant,
    /// Milliseconds after `started` when the request times out.
    deadline_ms: AtomicU64,
    paused: AtomicBool,
    /// Set when the request turned out to need an approval: from then on
    /// the server may take it off its connection while it waits.
    parkable: AtomicBool,
    resumed: tokio::sync::Notify,
}

impl Budget {
    pub fn new(limit: Duration) -> Arc<Budget> {
        Arc::new(Budget {
            started: Instant::now(),
            deadline_ms: AtomicU64::new(limit.as_millis() as u64),
            paused: AtomicBool::new(false),
            parkable: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
        })
    }

    /// When the budget runs out, if it is not paused by then.
    pub fn deadline(&self) -> Instant {
        self.started + Duration::from_millis(self.deadline_ms.load(Ordering::Acquire))
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn is_parkable(&self) -> bool {
        self.parkable.load(Ordering::Acquire)
    }

    /// Resolves after the current pause ends; `enable` it before checking
    /// `is_paused` so a resume in between is not missed.
    pub fn resumed(&self) -> tokio::sync::futures::Notified<'_> {
        self.resumed.notified()
    }

    /// Run `fut` with this budget visible to `paused`. Not an `async fn`:
    /// that would store the (large) handler future twice in its state.
    pub fn scope<F: Future>(self: Arc<Self>, fut: F) -> impl Future<Output = F::Output> {
        BUDGET.scope(self, fut)
    }
}

/// Mark the current request as one that may wait for a human (it matched a
/// hold rule): the server may park it at its next wait, the store commit of
/// the hold included, instead of keeping a whole connection for it.
pub fn may_park() {
    let _ = BUDGET.try_with(|b| b.parkable.store(true, Ordering::Release));
}

/// Stop spending the current request's budget until the guard is dropped:
/// held for the length of an approval wait.
///
/// A guard rather than a wrapper future: a wrapping `async fn` would keep
/// the wait's future twice in its state (once as its argument, once being
/// awaited), and a held request keeps that state for as long as it waits.
pub fn pause() -> Pause {
    let budget = BUDGET.try_with(Arc::clone).ok();
    if let Some(b) = &budget {
        b.paused.store(true, Ordering::Release);
    }
    Pause {
        budget,
        started: Instant::now(),
    }
}

/// The guard [`pause`] returns: dropping it resumes the budget, with its
/// deadline moved on by the time spent waiting.
pub struct Pause {
    budget: Option<Arc<Budget>>,
    started: Instant,
}

impl Drop for Pause {
    fn drop(&mut self) {
        let Some(budget) = &self.budget else { return };
        let waited = self.started.elapsed().as_millis() as u64;
        budget.deadline_ms.fetch_add(waited, Ordering::AcqRel);
        budget.paused.store(false, Ordering::Release);
        budget.resumed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paused_only_while_the_guard_lives() {
        let budget = Budget::new(Duration::from_secs(1));
        let b = budget.clone();
        let seen = b
            .scope(async {
                let _pause = pause();
                BUDGET.with(|b| b.is_paused())
            })
            .await;
        assert!(seen);
        assert!(!budget.is_paused());
        let before = budget.deadline();
        budget
            .clone()
            .scope(async {
                let _pause = pause();
                tokio::time::sleep(Duration::from_millis(30)).await
            })
            .await;
        assert!(budget.deadline() >= before + Duration::from_millis(30));
    }
}
