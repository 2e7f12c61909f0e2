//! The thin composition a Rust libvirt/KVM driver embeds for guest watchdogs.
//!
//! - **At spawn** ([`spawn`]): resolve flavor, image and operator policy, and
//!   produce the watchdog device XML or patch the whole domain XML, with the
//!   log line that says where the setting came from.
//! - **At run time** ([`Pipeline`]): listener items from `wd-events` in,
//!   owner notifications out, through an [`InstanceDirectory`] that maps each
//!   domain to its owner and a [`Ledger`] that keeps one notification per
//!   pause episode (per run of the domain) across reconnects and restarts.
//!
//! # The whole agent, from its configuration file
//!
//! [`AgentSettings`] is the configuration file `wdguard watch --config` reads;
//! [`Agent`] builds, starts, supervises and reloads everything from it (see
//! `examples/embed.rs` for a driver that runs it in about 20 lines). Each
//! transport is a cargo feature, `webhook` and `amqp` (both default): a
//! driver that publishes only on the bus builds with
//! `default-features = false, features = ["amqp"]` and compiles no HTTP
//! client.
//!
//! # Embedding the agent in a driver
//!
//! ```no_run
//! use std::sync::Arc;
//! use wd_compute::{Agent, spawn};
//! use wd_notify::{Destination, DestinationKind, LogNotifier, Scope};
//! use wd_notify_webhook::{Endpoint, Secret, WebhookConfig, WebhookNotifier};
//!
//! # async fn driver(flavor: Vec<(String, String)>, image: Vec<(String, String)>, domain_xml: &str)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! // At spawn: the policy, its provenance, and the patched domain XML.
//! let policy = wd_policy::OperatorPolicy::default();
//! let version = "9.0.0".parse()?;
//! let (xml, resolved) = spawn::patch_domain(domain_xml, flavor, image, &policy, version)?;
//! tracing::info!("{resolved}"); // watchdog=pause (image property hw_watchdog_action)
//! # let _ = xml;
//!
//! // At run time: listener → owner lookup → coalesce → one queue per
//! // destination → the destination.
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let webhook = WebhookNotifier::new(WebhookConfig::default()
//!     .with_operator(Endpoint::new("https://ops.example.com/watchdog", [secret])))?;
//! let agent = Agent::builder("compute-1")
//!     .spool_dir("/var/lib/wd/spool")
//!     .destination(Destination::new("log", DestinationKind::Log, Scope::All,
//!         Arc::new(LogNotifier::new())))
//!     .destination(Destination::new("ops", DestinationKind::Operator, Scope::All,
//!         Arc::new(webhook)))
//!     .build();
//! let running = agent.start().await?;
//! // ... until the driver stops:
//! let report = running.shutdown().await;
//! tracing::info!(accepted = report.pipeline.accepted, "watchdog agent stopped");
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: the logic lives in the crates below. This crate
//! only wires `wd-policy`, `wd-xml`, `wd-events` and `wd-notify` together;
//! anything bigger than glue belongs in one of them.
#![forbid(unsafe_code)]

mod agent;
pub mod directory;
mod error;
pub mod ledger;
pub mod metrics;
mod pipeline;
mod probe;
pub mod pulse;
mod runtime;
pub mod spawn;

pub use agent::{
    Agent, AgentBuilder, AgentError, AgentSettings, ConnectAuthSettings, FAULT_ENV, RunningAgent,
    display_target, target_holds_secret,
};
pub use directory::{
    DirectoryConfig, DirectorySettings, DirectoryStats, InstanceDirectory, NovaDirectory, Owner,
};
pub use error::{Error, Result};
pub use ledger::{Ledger, LogSync};
pub use metrics::Metrics;
pub use pipeline::{Pipeline, PipelineStats};
pub use pulse::{Pulse, PulseHook};
pub use runtime::{AgentConfig, AgentReport};
