//! The crate's one error type.

use crate::resolve::{Layer, RuleScope};

/// What went wrong while parsing or resolving a watchdog policy.
///
/// Every message names the offending key and value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Text that is not one of libvirt's watchdog actions.
    #[error(
        "unknown watchdog action `{value}`; allowed: reset, shutdown, poweroff, pause, none, dump, inject-nmi"
    )]
    ParseAction {
        /// The text given.
        value: String,
    },

    /// Text that is neither `disabled` nor one of libvirt's actions.
    #[error(
        "unknown watchdog setting `{value}`; allowed: disabled, reset, shutdown, poweroff, pause, none, dump, inject-nmi"
    )]
    ParseSetting {
        /// The text given.
        value: String,
    },

    /// A flavor or image value outside Nova's set. The first words are Nova's
    /// own message, so operators who know Nova recognise it.
    #[error(
        "Provided watchdog action ({value}) is not supported: {} {key}; allowed: disabled, none, pause, poweroff, reset",
        layer.describe_key(key)
    )]
    UnsupportedValue {
        /// Whether the key is on the flavor or the image.
        layer: Layer,
        /// The key that carried the value.
        key: &'static str,
        /// The value given.
        value: String,
    },

    /// Two keys (or the same key twice) on one object disagree.
    #[error(
        "{} {first_key}={first_value} conflicts with {second_key}={second_value}; give one key, or the same value for both",
        layer.describe_key(first_key)
    )]
    ConflictingKeys {
        /// The object both keys are on.
        layer: Layer,
        /// The first key seen.
        first_key: &'static str,
        /// Its value.
        first_value: String,
        /// The second key seen.
        second_key: &'static str,
        /// Its value.
        second_value: String,
    },

    /// An image property that is present but empty.
    #[error("image property {key} is empty; allowed: disabled, none, pause, poweroff, reset")]
    EmptyImageValue {
        /// The image key.
        key: &'static str,
    },

    /// An image value that the operator's policy forbids.
    #[error(
        "image property {key}={value} is forbidden by operator policy{}; allowed: {allowed}",
        scope.describe()
    )]
    ForbiddenImageValue {
        /// The image key.
        key: &'static str,
        /// The forbidden value.
        value: String,
        /// When the rule that forbids it applies.
        scope: RuleScope,
        /// The values an image may still choose here, comma-separated.
        allowed: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
