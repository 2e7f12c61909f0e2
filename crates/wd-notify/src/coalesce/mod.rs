//! Storm control: folding repeated firings of a guest in a loop.
//!
//! The rules are in `machine.rs`, a pure state machine; this module is its
//! thin async shell (a lock, the inner notifier, a timer task).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError, notify_catching};

mod machine;

use machine::{DropReason, Machine, Outcome, Verdict, Why};

/// [`Coalesce`] settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// How long repeats are folded after a firing goes out. Default 60 s.
    pub window: Duration,
    /// The most instances with an open episode. Firings of further instances
    /// pass straight through, uncoalesced (counted as `untracked`), so
    /// nothing is lost when the table is full. Default 10 000.
    pub max_instances: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            window: Duration::from_secs(60),
            max_instances: 10_000,
        }
    }
}

impl CoalesceConfig {
    /// Sets [`CoalesceConfig::window`].
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`CoalesceConfig::max_instances`].
    #[must_use]
    pub fn max_instances(mut self, n: usize) -> Self {
        self.max_instances = n;
        self
    }
}

/// Counters of a [`Coalesce`], since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoalesceStats {
    /// Firings sent on at once (the first of an episode, every firing that
    /// stops the guest, or untracked).
    pub forwarded: u64,
    /// Firings folded into a follow-up.
    pub folded: u64,
    /// Follow-ups delivered.
    pub followups: u64,
    /// Firings passed through because the instance table was full.
    pub untracked: u64,
    /// Instances with an open episode now.
    pub tracked: u64,
    /// Follow-ups whose delivery failed and that wait to be tried again.
    pub unsent: u64,
    /// Follow-ups given up on: failed permanently, or the oldest undelivered
    /// when more than `max_instances` waited. Each is logged at `error`.
    pub dropped: u64,
}

struct Shared<N> {
    inner: N,
    config: CoalesceConfig,
    machine: Mutex<Machine>,
    wake: Notify,
}

/// Folds storms of repeated firings of a guest in a loop, per domain run.
///
/// A guest whose watchdog action is `reset` and that keeps hanging fires
/// every few seconds, forever. `Coalesce` turns that into:
///
/// 1. The first firing of a run of the domain goes out at once (an
///    *episode* opens for it, with a window of [`CoalesceConfig::window`]).
/// 2. Repeats of the same run within the window are folded: `notify`
///    returns `Ok` at once.
/// 3. At the end of a window that had repeats, one follow-up goes out: the
///    latest repeat, with a new event id (chosen once and kept across
///    retries), `occurrences.count` = the number of firings folded and
///    `first_at`/`last_at` their span. A new window starts.
/// 4. A window with no repeats ends the episode; the next firing goes out
///    at once again.
///
/// So a guest stuck in a loop produces one notification per window: no
/// flood, and no silence.
///
/// Only firings that leave the guest running are ever folded (`none`,
/// `reset`, `debug`, `inject-nmi`). A `pause`, `poweroff` or `shutdown`
/// firing (or an action this version does not know) is always its own
/// notification, sent at once: each is a separate episode, such as a
/// second pause after a hard reboot. A firing of a new run of the domain
/// ([`Domain::id`](crate::Domain::id) changed: the domain was started
/// again) opens a new episode too, and the old run's pending follow-up is
/// sent at once.
///
/// If the first firing's delivery fails, the error is returned and no
/// episode opens (unless repeats were folded meanwhile), so the caller's
/// retry goes out at once. A follow-up whose delivery fails is kept and
/// tried again at least once per window and on [`Coalesce::flush`]; one
/// that fails permanently is logged and dropped (`dropped`).
///
/// Folded firings live in memory until their follow-up is delivered: put a
/// [`Spool`](crate::Spool) *after* `Coalesce`, and call
/// [`Coalesce::shutdown`] before shutting the spool down, so that nothing
/// folded is lost on a graceful stop. A crash loses at most the current
/// windows' folded counts, never a firing that was sent on: `Ok` from
/// `notify` means either the inner notifier accepted this very
/// notification, or it was a folded repeat of a running guest.
///
/// The decisions are made by a pure state machine (`coalesce/machine.rs`);
/// this type is its shell: a lock, the inner notifier and a timer task,
/// so `Coalesce::new` must be called inside a Tokio runtime.
pub struct Coalesce<N> {
    shared: Arc<Shared<N>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<N> std::fmt::Debug for Coalesce<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesce")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<N: Notifier + 'static> Coalesce<N> {
    /// Coalesces in front of `inner` and starts the timer task.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub fn new(inner: N, config: CoalesceConfig) -> Self {
        let shared = Arc::new(Shared {
            inner,
            machine: Mutex::new(Machine::new(&config)),
            config,
            wake: Notify::new(),
        });
        let task = tokio::spawn(run_timer(shared.clone()));
        Coalesce {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// The counters.
    pub fn stats(&self) -> CoalesceStats {
        self.shared.lock().stats()
    }

    /// Sends every follow-up built so far now, without waiting for its
    /// window to end (episodes stay open). Returns how many went out, or the
    /// last delivery error; failed follow-ups are kept for a later try.
    pub async fn flush(&self) -> Result<usize, NotifyError> {
        let due = self.shared.lock().drain();
        self.shared.send_followups(due).await
    }

    /// Stops coalescing: later firings pass straight through; the timer task
    /// ends (after any delivery it is in); then every pending follow-up is
    /// flushed, as [`Coalesce::flush`].
    pub async fn shutdown(&self) -> Result<usize, NotifyError> {
        self.shared.lock().close();
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            // The task only ends by returning; an error here means it panicked,
            // and then its state is still in `shared`.
            let _ = task.await;
        }
        self.flush().await
    }
}

impl<N> Drop for Coalesce<N> {
    fn drop(&mut self) {
        let task = self
            .task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

impl<N> Shared<N> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the machine and wakes the timer task if that moved the
    /// next deadline earlier.
    fn update<T>(&self, f: impl FnOnce(&mut Machine, Instant) -> T) -> T {
        let now = Instant::now();
        let mut m = self.lock();
        let before = m.next_deadline(now);
        let out = f(&mut m, now);
        let after = m.next_deadline(now);
        drop(m);
        if after.is_some_and(|a| before.is_none_or(|b| a < b)) {
            self.wake.notify_one();
        }
        out
    }
}

impl<N: Notifier> Shared<N> {
    async fn send_followups(&self, due: Vec<Notification>) -> Result<usize, NotifyError> {
        let mut sent = 0;
        let mut last_err = None;
        for f in due {
            let result = notify_catching(&self.inner, &f).await;
            let outcome = match &result {
                Ok(()) => Outcome::Delivered,
                Err(e) if e.is_retryable() => Outcome::Retryable,
                Err(_) => Outcome::Permanent,
            };
            match &result {
                Ok(()) => {
                    sent += 1;
                    tracing::info!(
                        event_id = %f.event_id, instance = %f.instance.uuid,
                        count = f.occurrences.count, "coalesce: sent follow-up for repeated firings"
                    );
                }
                Err(e) if e.is_retryable() => tracing::warn!(
                    event_id = %f.event_id, instance = %f.instance.uuid, error = %e,
                    "coalesce: follow-up not delivered; will try again"
                ),
                Err(_) => {}
            }
            let dropped = self.update(|m, now| m.followup_done(f, outcome, now));
            match dropped {
                Some((old, DropReason::Permanent)) => tracing::error!(
                    event_id = %old.event_id, instance = %old.instance.uuid,
                    count = old.occurrences.count,
                    error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(),
                    "coalesce: follow-up failed permanently; dropped"
                ),
                Some((old, DropReason::TooManyUnsent)) => tracing::error!(
                    event_id = %old.event_id, instance = %old.instance.uuid,
                    count = old.occurrences.count,
                    "coalesce: too many undelivered follow-ups; dropping the oldest"
                ),
                None => {}
            }
            if let Err(e) = result {
                last_err = Some(e);
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }
}

/// The timer shell: sleeps until the machine's next deadline (or a wake-up)
/// and sends what is due.
async fn run_timer<N: Notifier>(shared: Arc<Shared<N>>) {
    loop {
        let now = Instant::now();
        let (due, next) = {
            let mut m = shared.lock();
            if m.is_closed() {
                return;
            }
            let due = m.due(now);
            (due, m.next_deadline(now))
        };
        if !due.is_empty() {
            // Errors are logged and the follow-ups kept by `send_followups`.
            let _ = shared.send_followups(due).await;
            continue;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

#[async_trait]
impl<N: Notifier + 'static> Notifier for Coalesce<N> {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let shared = &self.shared;
        let verdict = shared.update(|m, now| m.firing(n, now));
        let episode = match verdict {
            Verdict::Folded => {
                tracing::debug!(event_id = %n.event_id, domain = %n.domain.uuid, "coalesce: folded a repeat");
                return Ok(());
            }
            Verdict::Send {
                why: Why::TableFull,
                ..
            } => {
                let count = shared.lock().stats().untracked;
                if count % 1000 == 1 {
                    tracing::warn!(
                        domain = %n.domain.uuid, max_instances = shared.config.max_instances, untracked = count,
                        "coalesce: instance table full; passing firings through uncoalesced"
                    );
                }
                None
            }
            Verdict::Send { episode, .. } => episode,
        };
        let result = shared.inner.notify(n).await;
        if let (Err(_), Some(id)) = (&result, episode) {
            shared.lock().first_failed(n.domain.uuid, id);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifier::MockNotifier;
    use crate::testing::{firing, firing_at};

    type Seen = Arc<Mutex<Vec<(Duration, Notification)>>>;

    /// A mock that records every delivery and when (from `t0`); it fails
    /// the calls whose index (from 0) is in `fail`.
    fn recorder(fail: &'static [usize]) -> (MockNotifier, Seen) {
        let (m, seen, _) = recorder_with_failures(fail);
        (m, seen)
    }

    /// As `recorder`, also returning the failed attempts.
    fn recorder_with_failures(fail: &'static [usize]) -> (MockNotifier, Seen, Seen) {
        let seen: Seen = Arc::default();
        let failed: Seen = Arc::default();
        let t0 = Instant::now();
        let mut m = MockNotifier::new();
        let (s, f) = (seen.clone(), failed.clone());
        let mut call = 0;
        m.expect_notify().returning(move |n| {
            call += 1;
            if fail.contains(&(call - 1)) {
                f.lock().unwrap().push((t0.elapsed(), n.clone()));
                return Err(NotifyError::retryable("down"));
            }
            s.lock().unwrap().push((t0.elapsed(), n.clone()));
            Ok(())
        });
        (m, seen, failed)
    }

    fn summary(seen: &Seen) -> Vec<(u64, u64)> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(t, n)| (t.as_secs(), n.occurrences.count))
            .collect()
    }

    async fn at(t0: Instant, secs: u64) {
        tokio::time::sleep_until(t0 + Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_becomes_one_notification_per_window() {
        let t0 = Instant::now();
        let (m, seen) = recorder(&[]);
        // A guest that fires every 5 s for 150 s, then stops.
        let c = Coalesce::new(m, CoalesceConfig::default().window(Duration::from_secs(62)));
        let mut sent = Vec::new();
        for i in 0..30 {
            at(t0, i * 5).await;
            let n = firing_at(7, i as i64 * 5);
            c.notify(&n).await.unwrap();
            sent.push(n);
        }
        at(t0, 400).await;
        // First at once; windows end at 62, 124, 186 (each had repeats:
        // 12 in 5..60, 12 in 65..120, 5 in 125..145); 248 had none and ends it.
        assert_eq!(summary(&seen), vec![(0, 1), (62, 12), (124, 12), (186, 5)]);
        let got = seen.lock().unwrap().clone();
        assert_eq!(got[0].1, sent[0]);
        let f = &got[1].1;
        assert_ne!(f.event_id, sent[1].event_id);
        assert_eq!(f.occurrences.first_at, sent[1].fired_at);
        assert_eq!(f.occurrences.last_at, sent[12].fired_at);
        assert_eq!(f.occurrences.count, 12);
        assert_eq!(c.stats().tracked, 0);
        assert_eq!(c.stats().folded, 29);

        // The episode is over: the next firing goes out at once.
        c.notify(&firing_at(7, 500)).await.unwrap();
        assert_eq!(summary(&seen).last(), Some(&(400, 1)));
    }

    /// A firing of `k`'s run `run` with `action`.
    fn of_run(k: u128, run: u32, action: &str) -> Notification {
        let mut n = firing(k);
        n.domain.id = Some(run);
        n.action = action.into();
        n
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_and_new_runs_are_sent_at_once_through_the_shell() {
        let t0 = Instant::now();
        let (m, seen) = recorder(&[]);
        let c = Coalesce::new(m, CoalesceConfig::default());
        // A pause, a hard reboot, a pause again 20 s later: both at once.
        let p1 = of_run(1, 1, "pause");
        let p2 = of_run(1, 2, "pause");
        c.notify(&p1).await.unwrap();
        at(t0, 20).await;
        c.notify(&p2).await.unwrap();
        // A looping guest: its repeat is folded; after a hard reboot the new
        // run's first firing is sent at once, and the old run's follow-up
        // without waiting for the end of its window.
        c.notify(&of_run(2, 1, "reset")).await.unwrap();
        c.notify(&of_run(2, 1, "reset")).await.unwrap();
        at(t0, 30).await;
        c.notify(&of_run(2, 2, "reset")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let got: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(t, n)| {
                (
                    t.as_secs(),
                    n.domain.uuid.as_u128(),
                    n.domain.id,
                    n.action.clone(),
                )
            })
            .collect();
        let r = |t, k, run| (t, k, Some(run), "reset".to_owned());
        assert_eq!(
            got,
            vec![
                (0, 1, Some(1), "pause".to_owned()),
                (20, 1, Some(2), "pause".to_owned()),
                r(20, 2, 1),
                r(30, 2, 2),
                r(30, 2, 1),
            ]
        );
        let ids: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.event_id)
            .collect();
        assert_eq!(&ids[..2], [p1.event_id, p2.event_id]);
        let stats = c.stats();
        assert_eq!((stats.forwarded, stats.folded, stats.followups), (4, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn instances_are_independent() {
        let t0 = Instant::now();
        let (m, seen) = recorder(&[]);
        let c = Coalesce::new(m, CoalesceConfig::default().window(Duration::from_secs(10)));
        c.notify(&firing(1)).await.unwrap();
        c.notify(&firing(2)).await.unwrap();
        c.notify(&firing(1)).await.unwrap();
        at(t0, 30).await;
        let seen = seen.lock().unwrap();
        let ids: Vec<_> = seen
            .iter()
            .map(|(t, n)| (t.as_secs(), n.instance.uuid.as_u128(), n.occurrences.count))
            .collect();
        assert_eq!(ids, vec![(0, 1, 1), (0, 2, 1), (10, 1, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_folded_firings_then_passes_through() {
        let t0 = Instant::now();
        let (m, seen) = recorder(&[]);
        let c = Coalesce::new(m, CoalesceConfig::default());
        for _ in 0..4 {
            c.notify(&firing(1)).await.unwrap();
        }
        at(t0, 1).await;
        assert_eq!(c.shutdown().await.unwrap(), 1);
        assert_eq!(summary(&seen), vec![(0, 1), (1, 3)]);
        c.notify(&firing(1)).await.unwrap();
        assert_eq!(summary(&seen).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_followup_is_retried_with_the_same_event_id() {
        let t0 = Instant::now();
        // Call 1 (the first follow-up, at 10 s) fails.
        let (m, seen, failed) = recorder_with_failures(&[1]);
        let c = Coalesce::new(m, CoalesceConfig::default().window(Duration::from_secs(10)));
        c.notify(&firing(1)).await.unwrap();
        c.notify(&firing(1)).await.unwrap();
        at(t0, 11).await;
        assert_eq!(c.stats().unsent, 1);
        at(t0, 25).await;
        assert_eq!(summary(&seen), vec![(0, 1), (20, 1)]);
        assert_eq!(summary(&failed), vec![(10, 1)]);
        assert_eq!(
            seen.lock().unwrap()[1].1.event_id,
            failed.lock().unwrap()[0].1.event_id
        );
        // The retried follow-up is delivered once, and flush finds nothing.
        assert_eq!(c.flush().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_firing_opens_no_episode() {
        let (m, seen) = recorder(&[0]);
        let c = Coalesce::new(m, CoalesceConfig::default());
        let n = firing(1);
        assert!(c.notify(&n).await.is_err());
        // The caller's retry goes out at once instead of being folded.
        c.notify(&n).await.unwrap();
        assert_eq!(summary(&seen), vec![(0, 1)]);
        assert_eq!(seen.lock().unwrap()[0].1.event_id, n.event_id);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_passes_firings_through() {
        let (m, seen) = recorder(&[]);
        let c = Coalesce::new(m, CoalesceConfig::default().max_instances(1));
        c.notify(&firing(1)).await.unwrap();
        c.notify(&firing(2)).await.unwrap();
        c.notify(&firing(2)).await.unwrap();
        c.notify(&firing(1)).await.unwrap();
        assert_eq!(summary(&seen), vec![(0, 1), (0, 1), (0, 1)]);
        let stats = c.stats();
        assert_eq!((stats.untracked, stats.folded, stats.tracked), (2, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanently_failed_followup_is_dropped_and_counted() {
        let mut m = MockNotifier::new();
        let mut call = 0;
        m.expect_notify().times(2).returning(move |_| {
            call += 1;
            if call == 1 {
                Ok(())
            } else {
                Err(NotifyError::permanent("gone"))
            }
        });
        let c = Coalesce::new(m, CoalesceConfig::default().window(Duration::from_secs(10)));
        c.notify(&firing(1)).await.unwrap();
        c.notify(&firing(1)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let stats = c.stats();
        assert_eq!((stats.followups, stats.dropped, stats.unsent), (0, 1, 0));
    }
}
