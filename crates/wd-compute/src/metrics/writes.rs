//! Failed writes of the queues, the ledger and the spool: counted, and
//! reported by `/healthz` until writes succeed again.

use super::{Metrics, TargetLabels, lock};

impl Metrics {
    /// Counts a failed write of `target` (`queue` or `ledger`) and makes
    /// the agent unhealthy with `reason` (which names the path and the
    /// error) until [`Metrics::writes_recovered`] for that target.
    pub fn write_failed(&self, target: &str, reason: &str) {
        self.inner
            .write_failures
            .get_or_create(&TargetLabels {
                target: target.to_owned(),
            })
            .inc();
        self.set_write_error(target, Some(reason.to_owned()));
    }

    /// Writes to `target` succeed again.
    pub fn writes_recovered(&self, target: &str) {
        self.set_write_error(target, None);
    }

    /// Makes the agent unhealthy with `reason` for `target` (`None`: healthy
    /// again there), without counting a failed write (the spool probe).
    pub fn set_write_error(&self, target: &str, reason: Option<String>) {
        let mut errors = lock(&self.inner.state.write_error);
        match reason {
            Some(r) => errors.insert(target.to_owned(), r),
            None => errors.remove(target),
        };
    }

    /// How many firings are held after a failed write.
    pub fn set_held(&self, n: usize) {
        self.inner.held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
