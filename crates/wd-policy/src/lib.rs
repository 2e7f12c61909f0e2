//! The guest-watchdog policy model: what a flavor, an image and the operator
//! say about a guest's watchdog, and which of them wins.
//!
//! This crate is the bottom of the `wd` workspace. It knows nothing of XML,
//! libvirt, notifications or I/O, and it must never depend on them: its only
//! dependencies are `serde` and `thiserror`.
//!
//! # Keys and values
//!
//! | object | keys (both accepted)                     |
//! |--------|------------------------------------------|
//! | flavor | `hw:watchdog_action` (Nova), `watchdog`  |
//! | image  | `hw_watchdog_action` (Nova), `watchdog`  |
//!
//! Values are exactly Nova's set, matched case-sensitively: `disabled`, `none`,
//! `pause`, `poweroff` and `reset`. libvirt knows more actions (`shutdown`,
//! `dump`, `inject-nmi`); [`WatchdogAction`] models all of them, but flavors
//! and images may not choose them, as in Nova.
//!
//! # Precedence
//!
//! 1. An image value, when present, overrides the flavor, including an image
//!    `disabled` that turns off a watchdog the flavor enabled. An empty image
//!    value is an error.
//! 2. Otherwise the flavor's value applies.
//! 3. Otherwise (the flavor is silent or its value is empty) the operator's
//!    default applies if one is set ([`Source::Operator`]), else the watchdog
//!    is disabled ([`Source::Default`]), as in Nova.
//!
//! [`OperatorPolicy`] can also forbid image values; a forbidden value is an
//! error, never a silent fallback.
//!
//! ```
//! use wd_policy::{resolve, OperatorPolicy, Setting, Source, WatchdogAction};
//!
//! let flavor = [("hw:watchdog_action", "reset")];
//! let image = [("hw_watchdog_action", "disabled")];
//! let resolved = resolve(flavor, image, &OperatorPolicy::default())?;
//! assert_eq!(resolved.setting, Setting::Disabled);
//! assert_eq!(resolved.source, Source::Image);
//! assert_eq!(resolved.to_string(), "watchdog=disabled (image property hw_watchdog_action)");
//! # Ok::<(), wd_policy::Error>(())
//! ```
#![forbid(unsafe_code)]

mod action;
mod error;
mod resolve;

pub use action::{NOVA_VALUES, Setting, WatchdogAction};
pub use error::{Error, Result};
pub use resolve::{
    FLAVOR_KEYS, IMAGE_KEYS, ImageRule, Layer, OperatorPolicy, Resolved, RuleScope, Source, resolve,
};
