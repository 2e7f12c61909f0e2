//! The libvirt operations the listener needs, behind a trait so that the
//! reconnect loop is tested with mocks, and their real implementation.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;

use crate::error::{Error, Result};
use crate::ffi::{self, CloseGuard, Registration};
use crate::inbox::{Msg, Sink};
use crate::kinds::{CEnum, DomainState, Enum};
use crate::model::{DomainId, DomainInfo};

/// Opens connections. One connection at a time is open.
#[cfg_attr(test, mockall::automock)]
pub(crate) trait Backend: Send + 'static {
    /// Opens a connection, sets keepalive, registers the close callback and
    /// the domain event callbacks, all sending into `sink`. `generation` is
    /// the generation the connection will have (for its close messages).
    fn connect(
        &self,
        config: &crate::ListenerConfig,
        generation: u64,
        sink: Sink,
    ) -> Result<Box<dyn Session>>;
}

/// One open, registered connection. Dropping it deregisters and closes.
#[cfg_attr(test, mockall::automock)]
pub(crate) trait Session: Send {
    /// Lists every domain with its state, without XML. A shut-off domain
    /// costs no call beyond the listing itself (its state is `shutoff`, its
    /// reason not fetched: 0).
    fn list_domains(&self) -> Result<Vec<DomainInfo>>;
    /// How many active domains of the last listing libvirt is busy with
    /// (see `ffi::domain_control_busy`); one call per active domain, made
    /// only by the settle listings after a catch-up.
    fn busy_domains(&self) -> usize;
    /// One domain's XML (from the handle the last listing returned, when
    /// there is one, which saves a lookup round-trip).
    fn domain_xml(&self, uuid: Uuid) -> Result<String>;
    /// Whether the connection is still alive.
    fn is_alive(&self) -> bool;
    /// The connection itself, for [`EventStream::connection`](crate::EventStream::connection).
    fn connection(&self) -> Option<Connect>;
}

/// The real backend.
#[derive(Debug, Default)]
pub(crate) struct Libvirt;

/// Field order is drop order: deregister, unregister, then close.
struct LibvirtSession {
    _events: Registration,
    _close: CloseGuard,
    /// The active domains of the last listing, for `domain_xml`.
    listed: Mutex<HashMap<Uuid, Domain>>,
    conn: Connect,
    uri: String,
}

impl Backend for Libvirt {
    fn connect(
        &self,
        config: &crate::ListenerConfig,
        generation: u64,
        sink: Sink,
    ) -> Result<Box<dyn Session>> {
        ffi::init_event_loop()?;
        let uri = config.uri.clone();
        let conn = crate::probe::open(config)?;
        if !config.keepalive_interval.is_zero() {
            let secs = keepalive_secs(config.keepalive_interval);
            // Local drivers (test, embedded qemu) have no keepalive; that
            // is not an error for us.
            if let Err(e) = conn.set_keep_alive(secs, config.keepalive_count) {
                tracing::debug!(uri, error = %e, "keepalive not set");
            }
        }
        let close_sink = sink.clone();
        let close = CloseGuard::register(&conn, move |reason| {
            // Never waits longer than a queue operation.
            let _ = close_sink.send(Msg::Closed { generation, reason });
        })
        .map_err(|source| Error::Register {
            what: "the close callback",
            uri: uri.clone(),
            source,
        })?;
        let events = ffi::register(&conn, move |event| {
            let _ = sink.send(Msg::Event(event));
        })?;
        Ok(Box::new(LibvirtSession {
            _events: events,
            _close: close,
            listed: Mutex::default(),
            conn,
            uri,
        }))
    }
}

/// libvirt takes whole seconds; a sub-second interval rounds up to 1.
fn keepalive_secs(interval: Duration) -> i32 {
    let secs = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

impl Session for LibvirtSession {
    fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        let list_err = |source| Error::ListDomains {
            uri: self.uri.clone(),
            source,
        };
        // One round-trip for the whole listing; UUID, name and runtime id
        // come with it. Only active domains need their state asked.
        let domains = self.conn.list_all_domains(0).map_err(list_err)?;
        let mut infos = Vec::with_capacity(domains.len());
        let mut listed = HashMap::new();
        for dom in domains {
            // A domain that vanishes during the listing is skipped: it is
            // not there any more, which is what a fresh listing would say.
            let (Ok(uuid), Ok(name)) = (dom.uuid(), dom.name()) else {
                continue;
            };
            let id = dom.id();
            let (state, reason) = if id.is_some() {
                let Ok(state) = ffi::domain_state(&dom) else {
                    continue;
                };
                state
            } else {
                (CEnum::to_raw(DomainState::Shutoff), 0)
            };
            infos.push(DomainInfo {
                domain: DomainId { uuid, name },
                id,
                state: Enum::from_raw(state),
                reason,
                xml: None,
                generation: 0,
            });
            if id.is_some() {
                listed.insert(uuid, dom);
            }
        }
        *self.listed.lock().unwrap_or_else(PoisonError::into_inner) = listed;
        Ok(infos)
    }

    fn busy_domains(&self) -> usize {
        let listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        listed
            .values()
            // A domain that vanished is not busy.
            .filter(|dom| ffi::domain_control_busy(dom).unwrap_or(false))
            .count()
    }

    fn domain_xml(&self, uuid: Uuid) -> Result<String> {
        let err = |source| Error::Domain {
            what: "xml",
            domain: uuid.to_string(),
            source,
        };
        let listed = self
            .listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uuid);
        match listed {
            Some(dom) => dom.xml_desc(0),
            None => self
                .conn
                .lookup_domain_by_uuid(uuid)
                .and_then(|d| d.xml_desc(0)),
        }
        .map_err(err)
    }

    fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    fn connection(&self) -> Option<Connect> {
        Some(self.conn.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_rounds_up_to_whole_seconds() {
        for (ms, secs) in [(1, 1), (999, 1), (1000, 1), (1001, 2), (5000, 5)] {
            assert_eq!(keepalive_secs(Duration::from_millis(ms)), secs, "{ms} ms");
        }
        assert_eq!(keepalive_secs(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
