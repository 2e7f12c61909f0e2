//! Where a notification's time goes: always-on, lock-free histograms of
//! the time from the libvirt callback (the notification's `fired_at`) to
//! each point of its way through a destination's queue, for every live
//! first firing (not recovered, not a coalesced follow-up, not a retry).
//!
//! The points, in order ([`Stage`]):
//!
//! * `prepared`: the pipeline built the notification (listener's thread
//!   and channel, the pipeline's decision). Recorded by the caller that
//!   builds notifications (`wd-compute`'s pipeline).
//! * `ledgered`: the episode ledger's entry is on disk and the notification
//!   goes to the router. Recorded by that caller too.
//! * `queued`: the queue of a destination is handed the notification. Up
//!   to here: the listener's thread and channel, the pipeline, the episode
//!   ledger's write, the router's fan-out.
//! * `durable`: the queue accepted it (on disk and synced, for a spool
//!   with a directory; at once in memory).
//! * `sending`: the queue's delivery worker starts the first attempt.
//! * `answered`: the destination answered that attempt (success or not).
//!
//! Each stage's own cost is the difference between two neighbours. The
//! histograms are process-wide (every queue of every router in the process
//! adds to them), which is what an agent's `/metrics` shows; `wd-compute`
//! exports them as `wd_stage_seconds{stage}`.

use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

use crate::model::Notification;

/// A point on a notification's way; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// The notification is built.
    Prepared,
    /// The episode ledger is written; handed to the router.
    Ledgered,
    /// Handed to a destination's queue.
    Queued,
    /// Accepted by the queue (durable, with a spool directory).
    Durable,
    /// The first delivery attempt starts.
    Sending,
    /// The destination answered the first attempt.
    Answered,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [
        Stage::Prepared,
        Stage::Ledgered,
        Stage::Queued,
        Stage::Durable,
        Stage::Sending,
        Stage::Answered,
    ];

    /// The lowercase name (the `stage` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prepared => "prepared",
            Stage::Ledgered => "ledgered",
            Stage::Queued => "queued",
            Stage::Durable => "durable",
            Stage::Sending => "sending",
            Stage::Answered => "answered",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The buckets' upper bounds, in seconds: 50 µs to 10 s.
pub const BOUNDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// One histogram: a count per bucket (the last is above every bound),
/// the count and the sum in nanoseconds.
struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, secs: f64) {
        let i = BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // Bounded above by the 10 s filter in `record`.
        self.sum_ns
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }
}

static STAGES: [Histogram; Stage::ALL.len()] = [const { Histogram::new() }; Stage::ALL.len()];

/// Longer than this since the firing is not the hot path (a notification
/// that waited for a reconnect, a clock step): not recorded.
const MAX_SECS: f64 = 10.0;

/// Whether `n` is a live first firing, whose way the histograms follow.
fn followed(n: &Notification) -> bool {
    !n.recovered && n.occurrences.count <= 1
}

/// Records that `n` reached `stage` now.
pub fn record(stage: Stage, n: &Notification) {
    if let Some(secs) = since_firing(n) {
        STAGES[stage.index()].observe(secs);
    }
}

/// Seconds since `n` fired, for a live first firing on the hot path.
fn since_firing(n: &Notification) -> Option<f64> {
    let secs = (OffsetDateTime::now_utc() - n.fired_at).as_seconds_f64();
    // A clock that stepped back, or a way that was not the hot path.
    (followed(n) && (0.0..=MAX_SECS).contains(&secs)).then_some(secs)
}

/// What one stage's histogram holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSnapshot {
    /// Which stage.
    pub stage: Stage,
    /// `(upper bound in seconds, count in this bucket)`, the last bound
    /// `f64::MAX` (`+Inf`); counts are per bucket, not cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// How many notifications reached the stage.
    pub count: u64,
    /// Their total time since the firing, in seconds.
    pub sum: f64,
}

impl StageSnapshot {
    /// The `q` quantile (0 to 1), as the upper bound of the bucket that
    /// holds it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let target = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(bound, n) in &self.buckets {
            seen += n;
            if seen >= target {
                return Some(bound);
            }
        }
        None
    }
}

/// Every stage's histogram, in order.
pub fn snapshot() -> Vec<StageSnapshot> {
    Stage::ALL
        .iter()
        .map(|&stage| {
            let h = &STAGES[stage.index()];
            let buckets = BOUNDS
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX))
                .zip(&h.buckets)
                .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
                .collect();
            StageSnapshot {
                stage,
                buckets,
                count: h.count.load(Ordering::Relaxed),
                sum: h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Occurrences;

    fn fired(ago_ms: i64, recovered: bool) -> Notification {
        let mut n = crate::testing::fresh_firing("reset", None);
        n.fired_at = OffsetDateTime::now_utc() - time::Duration::milliseconds(ago_ms);
        n.occurrences = Occurrences::single(n.fired_at);
        n.recovered = recovered;
        n
    }

    #[test]
    fn only_live_first_firings_on_the_hot_path_are_followed() {
        let secs = since_firing(&fired(3, false)).unwrap();
        assert!((0.003..1.0).contains(&secs), "{secs}");
        assert_eq!(since_firing(&fired(3, true)), None, "recovered");
        assert_eq!(
            since_firing(&fired(60_000, false)),
            None,
            "not the hot path"
        );
        assert_eq!(since_firing(&fired(-5_000, false)), None, "clock stepped");
        let mut repeat = fired(3, false);
        repeat.occurrences.count = 2;
        assert_eq!(since_firing(&repeat), None, "a follow-up");
    }

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::new();
        for secs in [0.000_01, 0.003, 0.003, 30.0] {
            h.observe(secs);
        }
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[BOUNDS.iter().position(|&b| b == 0.005).unwrap()], 2);
        assert_eq!(counts[BOUNDS.len()], 1, "above every bound");
        assert_eq!(h.count.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn every_stage_has_its_own_histogram_in_order() {
        for (i, stage) in Stage::ALL.iter().enumerate() {
            assert_eq!(stage.index(), i, "{stage:?}");
        }
        let names: Vec<&str> = snapshot().iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "prepared", "ledgered", "queued", "durable", "sending", "answered"
            ]
        );
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        let s = StageSnapshot {
            stage: Stage::Queued,
            buckets: vec![(0.001, 1), (0.002, 8), (f64::MAX, 1)],
            count: 10,
            sum: 0.0,
        };
        assert_eq!(s.quantile(0.5), Some(0.002));
        assert_eq!(s.quantile(0.1), Some(0.001));
        assert_eq!(s.quantile(1.0), Some(f64::MAX));
        let empty = StageSnapshot {
            count: 0,
            buckets: vec![(0.001, 0)],
            ..s
        };
        assert_eq!(empty.quantile(0.5), None);
    }
}
