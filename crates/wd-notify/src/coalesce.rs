//! Storm control: folding repeated firings of one instance.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::model::Notification;
use crate::notifier::{Notifier, NotifyError, notify_catching};

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
    /// Firings sent on at once (the first of an episode, or untracked).
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

struct Episode {
    /// Tells this episode's timer from a stale one of an earlier episode.
    id: u64,
    window_end: Instant,
    /// The follow-up being built from this window's repeats. Its event id is
    /// chosen once, at the first repeat, and kept through every retry.
    followup: Option<Notification>,
}

#[derive(Default)]
struct State {
    episodes: HashMap<Uuid, Episode>,
    timers: BTreeSet<(Instant, u64, Uuid)>,
    unsent: VecDeque<Notification>,
    /// When to try `unsent` again.
    retry_unsent_at: Option<Instant>,
    next_id: u64,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    folded: AtomicU64,
    followups: AtomicU64,
    untracked: AtomicU64,
    dropped: AtomicU64,
}

struct Shared<N> {
    inner: N,
    config: CoalesceConfig,
    state: Mutex<State>,
    wake: Notify,
    closed: AtomicBool,
    counters: Counters,
}

/// Folds storms of repeated firings, per instance (by instance UUID).
///
/// A guest whose watchdog action is `reset` and that keeps hanging fires
/// every few seconds, forever. `Coalesce` turns that into:
///
/// 1. The first firing goes out at once (an *episode* opens for the
///    instance, with a window of [`CoalesceConfig::window`]).
/// 2. Repeats within the window are folded: `notify` returns `Ok` at once.
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
/// windows' folded counts, never a first firing.
///
/// A timer task flushes follow-ups, so `Coalesce::new` must be called
/// inside a Tokio runtime.
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
            config,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let task = tokio::spawn(run_timer(shared.clone()));
        Coalesce {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// The counters.
    pub fn stats(&self) -> CoalesceStats {
        let c = &self.shared.counters;
        let state = self.shared.lock();
        CoalesceStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            folded: c.folded.load(Ordering::Relaxed),
            followups: c.followups.load(Ordering::Relaxed),
            untracked: c.untracked.load(Ordering::Relaxed),
            tracked: state.episodes.len() as u64,
            unsent: state.unsent.len() as u64,
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Sends every follow-up built so far now, without waiting for its
    /// window to end (episodes stay open). Returns how many went out, or the
    /// last delivery error; failed follow-ups are kept for a later try.
    pub async fn flush(&self) -> Result<usize, NotifyError> {
        let due = {
            let mut state = self.shared.lock();
            state.retry_unsent_at = None;
            let mut due: Vec<Notification> = state.unsent.drain(..).collect();
            due.extend(
                state
                    .episodes
                    .values_mut()
                    .filter_map(|e| e.followup.take()),
            );
            due
        };
        self.shared.send_followups(due).await
    }

    /// Stops coalescing: later firings pass straight through; the timer task
    /// ends (after any delivery it is in); then every pending follow-up is
    /// flushed, as [`Coalesce::flush`].
    pub async fn shutdown(&self) -> Result<usize, NotifyError> {
        {
            let _state = self.shared.lock();
            self.shared.closed.store(true, Ordering::SeqCst);
        }
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

impl<N: Notifier> Shared<N> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send_followups(&self, due: Vec<Notification>) -> Result<usize, NotifyError> {
        let mut sent = 0;
        let mut last_err = None;
        for f in due {
            match notify_catching(&self.inner, &f).await {
                Ok(()) => {
                    sent += 1;
                    self.counters.followups.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        event_id = %f.event_id, instance = %f.instance.uuid,
                        count = f.occurrences.count, "coalesce: sent follow-up for repeated firings"
                    );
                }
                Err(e) if !e.is_retryable() => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        event_id = %f.event_id, instance = %f.instance.uuid,
                        count = f.occurrences.count, error = %e,
                        "coalesce: follow-up failed permanently; dropped"
                    );
                    last_err = Some(e);
                }
                Err(e) => {
                    tracing::warn!(
                        event_id = %f.event_id, instance = %f.instance.uuid, error = %e,
                        "coalesce: follow-up not delivered; will try again"
                    );
                    let mut state = self.lock();
                    if state.unsent.len() >= self.config.max_instances.max(1)
                        && let Some(old) = state.unsent.pop_front()
                    {
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            event_id = %old.event_id, instance = %old.instance.uuid,
                            count = old.occurrences.count,
                            "coalesce: too many undelivered follow-ups; dropping the oldest"
                        );
                    }
                    state.unsent.push_back(f);
                    if state.retry_unsent_at.is_none() {
                        state.retry_unsent_at = Some(Instant::now() + self.config.window);
                        self.wake.notify_one();
                    }
                    last_err = Some(e);
                }
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// Ends due windows: returns the follow-ups to send and the next time to
    /// wake up.
    fn end_due_windows(&self, now: Instant) -> (Vec<Notification>, Option<Instant>) {
        let mut state = self.lock();
        let mut due = Vec::new();
        if state.retry_unsent_at.is_some_and(|at| at <= now) {
            state.retry_unsent_at = None;
            due.extend(state.unsent.drain(..));
        }
        let window = self.config.window;
        while let Some(&(at, id, uuid)) = state.timers.first() {
            if at > now {
                break;
            }
            state.timers.pop_first();
            let Some(ep) = state.episodes.get_mut(&uuid) else {
                continue;
            };
            if ep.id != id {
                continue;
            }
            match ep.followup.take() {
                Some(f) => {
                    due.push(f);
                    ep.window_end = now + window;
                    let end = ep.window_end;
                    state.timers.insert((end, id, uuid));
                }
                None => {
                    state.episodes.remove(&uuid);
                }
            }
        }
        let next = match (state.timers.first().map(|t| t.0), state.retry_unsent_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (due, next)
    }
}

async fn run_timer<N: Notifier>(shared: Arc<Shared<N>>) {
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let (due, next) = shared.end_due_windows(Instant::now());
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
        let key = n.instance.uuid;
        let opened = {
            let mut state = shared.lock();
            // Checked under the lock, which `shutdown` also takes to close:
            // a fold either happens before the final flush or not at all.
            if shared.closed.load(Ordering::SeqCst) {
                drop(state);
                return shared.inner.notify(n).await;
            }
            if let Some(ep) = state.episodes.get_mut(&key) {
                fold(&mut ep.followup, n);
                shared.counters.folded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event_id = %n.event_id, instance = %key, "coalesce: folded a repeat");
                return Ok(());
            }
            if state.episodes.len() >= shared.config.max_instances {
                None
            } else {
                state.next_id += 1;
                let id = state.next_id;
                let window_end = Instant::now() + shared.config.window;
                state.episodes.insert(
                    key,
                    Episode {
                        id,
                        window_end,
                        followup: None,
                    },
                );
                let first_timer = state.timers.first().is_none_or(|t| t.0 > window_end);
                state.timers.insert((window_end, id, key));
                Some((id, first_timer))
            }
        };
        match opened {
            None => {
                let count = shared.counters.untracked.fetch_add(1, Ordering::Relaxed);
                if count.is_multiple_of(1000) {
                    tracing::warn!(
                        instance = %key, max_instances = shared.config.max_instances, untracked = count + 1,
                        "coalesce: instance table full; passing firings through uncoalesced"
                    );
                }
            }
            Some((_, true)) => shared.wake.notify_one(),
            Some(_) => {}
        }
        shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let result = shared.inner.notify(n).await;
        if let (Err(_), Some((id, _))) = (&result, opened) {
            // Close the episode again so that the caller's retry goes out at
            // once, unless repeats were folded meanwhile: they still need the
            // episode's follow-up.
            let mut state = shared.lock();
            if state
                .episodes
                .get(&key)
                .is_some_and(|ep| ep.id == id && ep.followup.is_none())
            {
                state.episodes.remove(&key);
            }
        }
        result
    }
}

/// Adds firing `n` to the follow-up being built.
fn fold(followup: &mut Option<Notification>, n: &Notification) {
    match followup {
        None => {
            let mut f = n.clone();
            f.event_id = Uuid::new_v4();
            *followup = Some(f);
        }
        Some(f) => {
            let (id, mut occ, recovered) = (f.event_id, f.occurrences, f.recovered);
            occ.count = occ.count.saturating_add(n.occurrences.count);
            occ.first_at = occ.first_at.min(n.occurrences.first_at);
            occ.last_at = occ.last_at.max(n.occurrences.last_at);
            *f = n.clone();
            f.event_id = id;
            f.occurrences = occ;
            f.recovered = recovered && n.recovered;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifier::MockNotifier;
    use crate::test_support::{firing, firing_at};

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
