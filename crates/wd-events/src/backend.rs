//! The libvirt operations the listener needs, behind a trait so that the
//! reconnect loop is tested with mocks, and their real implementation.

use std::sync::mpsc::Sender;
use std::time::Duration;

use uuid::Uuid;
use virt::connect::Connect;

use crate::error::{Error, Result};
use crate::ffi::{self, CloseGuard, Registration};
use crate::kinds::Enum;
use crate::machine::RawEvent;
use crate::model::{DomainId, DomainInfo};

/// A message from the libvirt event-loop thread (or the consumer) to the
/// listener's supervisor thread.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A domain event.
    Event(RawEvent),
    /// The close callback of the connection of `generation` ran.
    Closed { generation: u64, reason: i32 },
    /// The consumer dropped the stream.
    Shutdown,
}

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
        sink: Sender<Msg>,
    ) -> Result<Box<dyn Session>>;
}

/// One open, registered connection. Dropping it deregisters and closes.
#[cfg_attr(test, mockall::automock)]
pub(crate) trait Session: Send {
    /// Lists every domain with its state, and its XML if `with_xml`.
    fn list_domains(&self, with_xml: bool) -> Result<Vec<DomainInfo>>;
    /// One domain's XML.
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
    conn: Connect,
    uri: String,
}

impl Backend for Libvirt {
    fn connect(
        &self,
        config: &crate::ListenerConfig,
        generation: u64,
        sink: Sender<Msg>,
    ) -> Result<Box<dyn Session>> {
        ffi::init_event_loop()?;
        let uri = config.uri.clone();
        let conn = if config.read_only {
            Connect::open_read_only(Some(&uri))
        } else {
            Connect::open(Some(&uri))
        };
        let conn = conn.map_err(|source| Error::Connect {
            uri: uri.clone(),
            source,
        })?;
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
            // Never blocks: the channel is unbounded.
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
    fn list_domains(&self, with_xml: bool) -> Result<Vec<DomainInfo>> {
        let list_err = |source| Error::ListDomains {
            uri: self.uri.clone(),
            source,
        };
        let domains = self.conn.list_all_domains(0).map_err(list_err)?;
        let mut infos = Vec::with_capacity(domains.len());
        for dom in domains {
            // A domain that vanishes during the listing is skipped: it is
            // not there any more, which is what a fresh listing would say.
            let (Ok(uuid), Ok(name), Ok((state, reason))) =
                (dom.uuid(), dom.name(), ffi::domain_state(&dom))
            else {
                continue;
            };
            infos.push(DomainInfo {
                domain: DomainId { uuid, name },
                id: dom.id(),
                state: Enum::from_raw(state),
                reason,
                xml: if with_xml { dom.xml_desc(0).ok() } else { None },
                generation: 0,
            });
        }
        Ok(infos)
    }

    fn domain_xml(&self, uuid: Uuid) -> Result<String> {
        let err = |source| Error::Domain {
            what: "xml",
            domain: uuid.to_string(),
            source,
        };
        self.conn
            .lookup_domain_by_uuid(uuid)
            .and_then(|d| d.xml_desc(0))
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
