//! Reloading a running agent: a reload is a start, checked the same way,
//! applied to what runs.
//!
//! A reload builds the whole new configuration first, with exactly the
//! checks a start makes ([`Agent::with_metrics`](crate::Agent::with_metrics)),
//! then hands its destinations to
//! [`Router::reconfigure`](wd_notify::Router::reconfigure), which opens
//! every new queue before it changes anything. A configuration that fails
//! any of that is refused whole, with the error a start would give, and
//! nothing changes. One that passes is applied:
//!
//! - each running destination (same kind, project and URL) takes its new
//!   transport (secrets, TLS files, timeouts) at once;
//!   its queue, with everything waiting in it, is kept;
//! - a new destination (a new project's endpoint) gets its queue and worker
//!   at once;
//! - a removed destination sends nothing more from that moment; its backlog
//!   stays on disk and is shown by the status until it is drained or
//!   dropped ([`RunningAgent::drain`](crate::RunningAgent::drain),
//!   [`RunningAgent::drop_backlog`](crate::RunningAgent::drop_backlog)).
//!
//! Every other setting that changed is named in
//! [`Reconfigured::needs_restart`](wd_notify::Reconfigured::needs_restart):
//! the libvirt URI, `read_only` and `[connect_auth]`, the host
//! name, the spool directory, coalescing, the owner cache, the health
//! interval, and a destination's queue settings (`[queue]`: bounds, retry
//! delays, attempt timeout).

use crate::AgentConfig;

/// What a reload compares against: the settings only a restart changes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fixed {
    keys: Vec<(&'static str, String)>,
}

impl Fixed {
    /// The restart-only settings of a runtime and its owner cache, each
    /// under its config key.
    pub(crate) fn of(r: &AgentConfig, directory: crate::DirectoryConfig) -> Fixed {
        Fixed {
            keys: vec![
                ("connect", r.listener.uri.clone()),
                ("read_only", r.listener.read_only.to_string()),
                ("connect_auth", fingerprint(r.listener.credentials.as_ref())),
                ("host", r.host.clone()),
                ("spool", format!("{:?}", r.spool_dir)),
                ("coalesce", format!("{:?}", r.coalesce)),
                ("directory", format!("{directory:?}")),
                ("health_interval_secs", format!("{:?}", r.health_interval)),
            ],
        }
    }

    /// The keys whose change to `next` needs a restart.
    pub(crate) fn changes(&self, next: &Fixed) -> Vec<String> {
        self.keys
            .iter()
            .zip(&next.keys)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0.to_owned())
            .collect()
    }
}

/// Tells credentials apart without holding the password: the user name and
/// a hash of the password (never shown; only compared).
fn fingerprint(c: Option<&wd_events::Credentials>) -> String {
    use std::hash::{Hash, Hasher};
    c.map_or_else(String::new, |c| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        c.password().hash(&mut h);
        format!("{}:{:016x}", c.username(), h.finish())
    })
}
