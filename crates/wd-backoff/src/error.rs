//! The crate's one error type.

use std::time::Duration;

/// A backoff policy outside its bounds. Every message starts with the
/// config key given to [`Backoff::check`](crate::Backoff::check) and says
/// what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `initial` is zero: the retries would spin.
    #[error("{key}: an initial delay of 0 is not allowed; it must be above 0")]
    ZeroInitial {
        /// The policy's config key.
        key: String,
    },

    /// `max` is below `initial`.
    #[error(
        "{key}: max delay {max:?} is below the initial delay {initial:?}; it must be at least the initial delay"
    )]
    MaxBelowInitial {
        /// The policy's config key.
        key: String,
        /// The initial delay given.
        initial: Duration,
        /// The max delay given.
        max: Duration,
    },

    /// `max` is above [`MAX_DELAY_LIMIT`](crate::MAX_DELAY_LIMIT).
    #[error("{key}: max delay {max:?} is too long; it must be at most {limit:?}")]
    MaxTooLong {
        /// The policy's config key.
        key: String,
        /// The max delay given.
        max: Duration,
        /// The largest allowed.
        limit: Duration,
    },

    /// `factor` is below 1, infinite or NaN.
    #[error("{key}: factor {factor} is not allowed; it must be a finite number of at least 1")]
    Factor {
        /// The policy's config key.
        key: String,
        /// The factor given.
        factor: f32,
    },

    /// A delay in a config file that is not a number of seconds (with the
    /// `serde` feature).
    #[error("{key}: {value} is not a delay; it must be a finite number of seconds, 0 or more")]
    Seconds {
        /// The field.
        key: String,
        /// The value given.
        value: f64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
