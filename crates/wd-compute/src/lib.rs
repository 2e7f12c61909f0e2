//! The thin composition a Rust libvirt/KVM driver embeds for guest watchdogs.
//!
//! - **At spawn** ([`spawn`]): resolve flavor, image and operator policy, and
//!   produce the watchdog device XML or patch the whole domain XML, with the
//!   log line that says where the setting came from.
//! - **At run time** ([`Pipeline`]): listener items from `wd-events` in,
//!   owner notifications out, through an [`InstanceDirectory`] that maps each
//!   domain to its owner and a [`Ledger`] that keeps one notification per
//!   pause episode across reconnects and restarts.
//!
//! Architecture invariant: the logic lives in the crates below. This crate
//! only wires `wd-policy`, `wd-xml`, `wd-events` and `wd-notify` together;
//! anything bigger than glue belongs in one of them.
#![forbid(unsafe_code)]

pub mod directory;
mod error;
pub mod ledger;
mod pipeline;
mod runtime;
pub mod spawn;

pub use directory::{InstanceDirectory, NovaDirectory, Owner};
pub use error::{Error, Result};
pub use ledger::Ledger;
pub use pipeline::{Pipeline, PipelineStats};
pub use runtime::{Runtime, RuntimeConfig, RuntimeReport};
