//! The AMQP [`Notifier`]: a lazily (re)connected publisher with confirms.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use uuid::Uuid;
use wd_backoff::Backoff;
use wd_notify::{FailureKind, Notification, Notifier, NotifyError};

use crate::config::{AmqpConfig, Publication, Versioning};
use crate::error::Result;
use crate::message::body;
use crate::topology::{
    ACCESS_REFUSED, NOT_ALLOWED, NOT_FOUND, amqp_code, configuration, retryable,
};

/// The most notifications remembered as partly delivered (some routes
/// confirmed, others not). Beyond it the oldest is forgotten, and its retry
/// republishes every route: a duplicate with the same `message_id` and
/// `_unique_id`, never a loss.
const PARTIAL_CAP: usize = 4096;

/// AMQP reply code for a mandatory message no queue took.
const NO_ROUTE: u16 = 312;
/// AMQP `delivery_mode` for a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// Publishes notifications to RabbitMQ in oslo.messaging's notification
/// format, so existing OpenStack notification listeners receive them.
///
/// The connection is opened on the first `notify` and reopened lazily after
/// it breaks (a broker restart, a network cut). While the broker is away,
/// `notify` fails fast with [`NotifyError::Retryable`], whose `retry_after`
/// says when the next connection attempt will be made (exponential backoff
/// between [`AmqpConfig::reconnect_min`] and [`AmqpConfig::reconnect_max`]);
/// the retry and spool layers in `wd-notify` redeliver. Every publish is
/// `mandatory`, persistent, and waits for the broker's confirm:
///
/// | broker answer                         | result                      |
/// |---------------------------------------|-----------------------------|
/// | ack                                   | delivered                   |
/// | ack + returned (312 NO_ROUTE)         | retryable: no queue bound   |
/// | nack                                  | retryable                   |
/// | no confirm in time, connection lost   | retryable, reconnects       |
/// | exchange missing, `declare = false`   | retryable, `configuration`  |
/// | 406 on declare (durability, queue type) | retryable, `configuration` |
/// | 403 access refused, 530 vhost refused | retryable, `configuration`  |
/// | TLS certificate refused               | retryable, `certificate`    |
///
/// A refusal of our configuration is never a drop: the notification stays
/// in its queue, the failure carries a [`wd_notify::ConfigurationError`]
/// (or [`wd_notify::CertificateError`]) so metrics and `/healthz` name it,
/// and it goes out once the configuration is fixed and reloaded.
///
/// NO_ROUTE is retryable because it describes the deployment of the moment
/// (no listener has bound its queue yet, or its queue was lost with a broker
/// restart), not the notification.
///
/// **Both forms.** One `notify` publishes every [route](AmqpConfig::routes):
/// each form on each of its topics. A route the broker confirmed is
/// remembered until all routes of that notification are, so the retry after
/// a partial failure (say the versioned form confirmed, the legacy one not)
/// publishes only the missing routes: no form is lost, and none is
/// duplicated by the retry. That memory is in the process (at most
/// 4096 partly delivered notifications); after a restart the spool's
/// redelivery republishes every route, and a consumer may then see a form
/// twice, always with the same `message_id` and `_unique_id`.
///
/// **Failover.** The URL may name several nodes (`rabbit://…@h1,…@h2/`).
/// Like oslo.messaging, the notifier shuffles them once
/// ([`AmqpNotifier::node_order`]), so each compute host starts on its own
/// node; it connects to the first that answers, and when the connection is
/// lost it moves on to the next one, round-robin. A publish whose confirm was
/// lost with the connection is retried on the next node with the same id.
pub struct AmqpNotifier {
    config: AmqpConfig,
    /// The order nodes are tried in: indexes into the URL's nodes.
    order: Vec<usize>,
    /// The TLS client, when the URL asks for TLS.
    tls: Option<lapin::tcp::RustlsConnector>,
    reconnect: Backoff,
    routes: Vec<Publication>,
    state: Mutex<State>,
    partial: std::sync::Mutex<Partial>,
}

/// Routes already confirmed for notifications not yet fully delivered.
#[derive(Default)]
struct Partial {
    done: HashMap<Uuid, u64>,
    order: VecDeque<Uuid>,
}

impl Partial {
    fn get(&self, id: Uuid) -> u64 {
        self.done.get(&id).copied().unwrap_or(0)
    }

    fn set(&mut self, id: Uuid, mask: u64) {
        if self.done.insert(id, mask).is_none() {
            self.order.push_back(id);
            while self.order.len() > PARTIAL_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }

    fn remove(&mut self, id: Uuid) {
        if self.done.remove(&id).is_some() {
            self.order.retain(|x| *x != id);
        }
    }
}

impl std::fmt::Debug for AmqpNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpNotifier")
            .field("config", &self.config)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    /// Identifies the current link, so a failed publish only tears down the
    /// link it used, not a newer one.
    generation: u64,
    /// Consecutive failed connection attempts.
    failures: u32,
    /// No connection attempt before this instant.
    next_attempt: Option<Instant>,
    /// The position in `order` of the node to try first on the next
    /// connection.
    pos: usize,
    /// The last connection failure, when only the operator ends it (a
    /// refused configuration or certificate): the fast failures until the
    /// next attempt carry the same kind, so health and metrics keep naming it.
    refused: Option<(FailureKind, String)>,
}

struct Link {
    connection: Connection,
    channel: Channel,
    generation: u64,
    node: usize,
    pos: usize,
}

impl AmqpNotifier {
    /// Validates `config`. Connects on the first `notify`, not here, so a
    /// compute service starts even while the broker is down.
    pub fn new(config: AmqpConfig) -> Result<Self> {
        config.validate()?;
        let mut order: Vec<usize> = (0..config.url.nodes().len()).collect();
        if config.shuffle {
            // As oslo.messaging's `random.shuffle(url.hosts)`: each agent
            // starts on its own node, so a fleet spreads over the cluster.
            fastrand::shuffle(&mut order);
        }
        let tls = if config.url.tls() {
            Some(lapin::tcp::RustlsConnector::from(
                config.tls.client_config(config.url.nodes().len())?,
            ))
        } else {
            None
        };
        Ok(AmqpNotifier {
            order,
            tls,
            reconnect: Backoff::new(config.reconnect_min, config.reconnect_max),
            routes: config.routes(),
            config,
            state: Mutex::new(State::default()),
            partial: std::sync::Mutex::new(Partial::default()),
        })
    }

    /// Every publish one notification makes, versioned form first.
    pub fn routes(&self) -> &[Publication] {
        &self.routes
    }

    /// The routing keys, in the order of [`AmqpNotifier::routes`].
    pub fn routing_keys(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.routing_key.as_str()).collect()
    }

    /// The body `notify` publishes for `form` of `n`.
    pub fn body(&self, n: &Notification, form: Versioning) -> Vec<u8> {
        let service = match form {
            Versioning::Versioned => &self.config.service,
            Versioning::Unversioned => &self.config.legacy_service,
        };
        body(n, form, service, self.config.priority, self.config.envelope)
    }

    /// The order in which nodes are tried (indexes into the URL's nodes),
    /// starting with the first; random unless [`AmqpConfig::shuffle`] is
    /// off.
    pub fn node_order(&self) -> &[usize] {
        &self.order
    }

    /// The index of the node the current connection goes to, if connected.
    pub async fn connected_node(&self) -> Option<usize> {
        let state = self.state.lock().await;
        state
            .link
            .as_ref()
            .filter(|l| l.connection.status().connected())
            .map(|l| l.node)
    }

    /// Closes the connection, if one is open. A later `notify` reconnects.
    pub async fn close(&self) {
        let link = self.state.lock().await.link.take();
        if let Some(link) = link {
            let _ = link.connection.close(200, "closing".into()).await;
        }
    }

    /// The current channel, connecting first if need be.
    async fn channel(&self) -> Result<(Channel, u64), NotifyError> {
        let mut state = self.state.lock().await;
        if let Some(link) = &state.link
            && link.channel.status().connected()
            && link.connection.status().connected()
        {
            return Ok((link.channel.clone(), link.generation));
        }
        if let Some(old) = state.link.take() {
            let _ = old.connection.close(200, "reconnecting".into()).await;
            // The connection to that node was lost: start with the next.
            state.pos = old.pos.wrapping_add(1) % self.order.len().max(1);
        }
        let now = Instant::now();
        if let Some(at) = state.next_attempt.filter(|&at| at > now) {
            let source: Option<wd_notify::BoxError> = match &state.refused {
                Some((FailureKind::Certificate, why)) => Some(Box::new(
                    wd_notify::CertificateError::new(why.clone(), None),
                )),
                Some((_, why)) => Some(Box::new(wd_notify::ConfigurationError::new(
                    why.clone(),
                    None,
                ))),
                None => None,
            };
            return Err(NotifyError::Retryable {
                message: format!(
                    "amqp broker {} is unreachable; next connection attempt in {} ms",
                    self.config.url,
                    (at - now).as_millis()
                ),
                retry_after: Some(at - now),
                source,
            });
        }
        // Each node in turn, from the one after the last that failed.
        let count = self.order.len().max(1);
        let mut error = None;
        for step in 0..count {
            let pos = (state.pos + step) % count;
            let node = self.order.get(pos).copied().unwrap_or(0);
            let opened = tokio::time::timeout(self.config.connect_timeout, self.open(node)).await;
            let failed = match opened {
                Ok(Ok((connection, channel))) => {
                    state.generation += 1;
                    state.failures = 0;
                    state.next_attempt = None;
                    state.refused = None;
                    state.pos = pos;
                    tracing::info!(broker = %self.config.url.node_name(node), exchange = %self.config.exchange, "connected to the amqp broker");
                    let generation = state.generation;
                    state.link = Some(Link {
                        connection,
                        channel: channel.clone(),
                        generation,
                        node,
                        pos,
                    });
                    return Ok((channel, generation));
                }
                Ok(Err(e)) => e,
                Err(_) => NotifyError::retryable(format!(
                    "amqp broker {}: no connection within {} ms",
                    self.config.url.node_name(node),
                    self.config.connect_timeout.as_millis()
                )),
            };
            if count > 1 {
                tracing::warn!(broker = %self.config.url.node_name(node), error = %failed, "amqp node unreachable; trying the next");
            }
            // A permanent error (a configuration the broker refuses) is not
            // cured by another node of the same deployment.
            let permanent = !failed.is_retryable();
            error = Some(failed);
            if permanent {
                break;
            }
        }
        let error = error.unwrap_or_else(|| NotifyError::retryable("no broker node to connect to"));
        let kind = FailureKind::of(&error);
        state.refused = kind
            .needs_operator()
            .then(|| (kind, error_chain_line(&error)));
        let wait = self.backoff(state.failures);
        state.failures = state.failures.saturating_add(1);
        state.next_attempt = Some(Instant::now() + wait);
        tracing::warn!(broker = %self.config.url, error = %error, retry_in_ms = wait.as_millis() as u64, "amqp connection failed");
        Err(match error {
            NotifyError::Retryable {
                message,
                retry_after: None,
                source,
            } => NotifyError::Retryable {
                message,
                retry_after: Some(wait),
                source,
            },
            other => other,
        })
    }

    /// The wait after `failures` failed connection rounds: the workspace's
    /// one backoff policy, jittered so that a fleet of agents does not
    /// reconnect to a recovering broker in lockstep.
    fn backoff(&self, failures: u32) -> Duration {
        self.reconnect.delay(failures)
    }

    /// Connects to node `node`, enables confirms, and declares (or checks)
    /// the topology.
    async fn open(&self, node: usize) -> Result<(Connection, Channel), NotifyError> {
        let config = &self.config;
        let broker = config.url.node_name(node);
        let mut uri = config
            .url
            .node_uri(node)
            .ok_or_else(|| NotifyError::retryable(format!("no broker node {node}")))?;
        if let Some(h) = config.heartbeat {
            uri.push(if uri.contains('?') { '&' } else { '?' });
            uri.push_str(&format!("heartbeat={h}"));
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("wd-notify-amqp:{}", config.service).into());
        let connection = self.connect(&uri, properties).await.map_err(|e| {
            let message = format!("amqp broker {broker}: cannot connect");
            match &e.kind() {
                lapin::ErrorKind::IOError(io) => match crate::tls::certificate_failure(io) {
                    Some(detail) => NotifyError::retryable(message)
                        .with_source(wd_notify::CertificateError::new(detail, Some(Box::new(e)))),
                    None => retryable(message, e),
                },
                lapin::ErrorKind::ProtocolError(err)
                    if matches!(err.get_id(), ACCESS_REFUSED | NOT_ALLOWED) =>
                {
                    configuration(
                        format!("{message}: the broker refused the login or vhost"),
                        e,
                    )
                }
                _ => retryable(message, e),
            }
        })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| retryable(format!("amqp broker {broker}: cannot open a channel"), e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| {
                retryable(
                    format!("amqp broker {broker}: cannot enable publisher confirms"),
                    e,
                )
            })?;

        crate::topology::declare(&connection, &channel, config, &self.routes, &broker).await?;
        Ok((connection, channel))
    }

    /// Opens the AMQP connection to `uri`, over TLS with oslo's semantics
    /// when the URL asks for it.
    async fn connect(
        &self,
        uri: &str,
        properties: ConnectionProperties,
    ) -> std::result::Result<Connection, lapin::Error> {
        let Some(connector) = &self.tls else {
            return Connection::connect(uri, properties).await;
        };
        use lapin::tcp::AMQPUriTcpExt as _;
        let parsed: lapin::uri::AMQPUri = uri
            .parse()
            .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
        let runtime = lapin::runtime::default_runtime()?;
        let connector = connector.clone();
        Connection::connector(
            parsed,
            runtime,
            async move |uri, runtime| {
                let mut plain = uri.clone();
                plain.scheme = lapin::uri::AMQPScheme::AMQP;
                let stream = plain.connect_async(&runtime).await?;
                // SNI and the certificate's name are the host as written
                // (IPv6 without brackets).
                let host = uri
                    .authority
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                Ok(stream.into_rustls(&connector, host).await?)
            },
            properties,
        )
        .await
    }

    /// Drops the link `generation` after it failed, unless a newer one exists.
    async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
            && let Some(link) = state.link.take()
        {
            let _ = link.connection.close(200, "publish failed".into()).await;
            state.pos = link.pos.wrapping_add(1) % self.order.len().max(1);
        }
    }
}

#[async_trait]
impl Notifier for AmqpNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let all: u64 = (1u64 << self.routes.len()) - 1;
        let mut done = self.partial.lock().map(|p| p.get(n.event_id)).unwrap_or(0);
        let mut first_error = None;
        for (i, route) in self.routes.iter().enumerate() {
            let bit = 1u64 << i;
            if done & bit != 0 {
                continue;
            }
            match self.publish(n, route).await {
                Ok(()) => done |= bit,
                Err(e) => {
                    // Later routes are still tried: one form's trouble (no
                    // queue bound for it) does not hold back the other.
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Ok(mut partial) = self.partial.lock() {
            if done == all {
                partial.remove(n.event_id);
            } else if done != 0 {
                partial.set(n.event_id, done);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl AmqpNotifier {
    /// Publishes one form of `n` on one route and waits for the confirm.
    async fn publish(&self, n: &Notification, route: &Publication) -> Result<(), NotifyError> {
        let (channel, generation) = self.channel().await?;
        let body = self.body(n, route.form);
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(n.event_id.to_string().into());
        let exchange = self.config.exchange.as_str();
        let key = route.routing_key.as_str();
        let what = || {
            format!(
                "amqp publish of event {} to `{exchange}` with routing key `{key}`",
                n.event_id
            )
        };

        let confirm = channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                properties,
            )
            .await;
        let confirm = match confirm {
            Ok(c) => c,
            Err(e) => {
                self.invalidate(generation).await;
                return Err(retryable(format!("{} failed", what()), e));
            }
        };
        let confirmation = match tokio::time::timeout(self.config.confirm_timeout, confirm).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.invalidate(generation).await;
                return Err(match amqp_code(&e) {
                    Some(NOT_FOUND) => configuration(
                        format!(
                            "{} failed: exchange `{exchange}` does not exist (404 NOT_FOUND)",
                            what()
                        ),
                        e,
                    ),
                    Some(ACCESS_REFUSED) => configuration(
                        format!(
                            "{} failed: the user may not write to `{exchange}` (403 ACCESS_REFUSED)",
                            what()
                        ),
                        e,
                    ),
                    _ => retryable(format!("{} failed", what()), e),
                });
            }
            Err(_) => {
                self.invalidate(generation).await;
                return Err(NotifyError::retryable(format!(
                    "{}: no confirm from the broker within {} ms",
                    what(),
                    self.config.confirm_timeout.as_millis()
                )));
            }
        };
        match confirmation {
            Confirmation::Ack(None) => {
                tracing::debug!(event_id = %n.event_id, exchange, routing_key = key, "amqp notification confirmed");
                Ok(())
            }
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                let code = returned.reply_code;
                let text = returned.reply_text.to_string();
                let why = if code == NO_ROUTE {
                    format!(
                        "no queue is bound to `{exchange}` for routing key `{key}` ({code} {text})"
                    )
                } else {
                    format!("the broker returned it ({code} {text})")
                };
                Err(NotifyError::retryable(format!("{} failed: {why}", what())))
            }
            Confirmation::Nack(None) => Err(NotifyError::retryable(format!(
                "{} failed: the broker nacked it",
                what()
            ))),
            Confirmation::NotRequested => {
                // Confirms are enabled on every channel we open; a channel
                // without them cannot prove delivery, so start afresh.
                self.invalidate(generation).await;
                Err(NotifyError::retryable(format!(
                    "{} is unconfirmed: the channel has no publisher confirms",
                    what()
                )))
            }
        }
    }
}

/// `e` and its causes on one line (a few deep), for a remembered refusal.
fn error_chain_line(e: &NotifyError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    for _ in 0..4 {
        let Some(c) = cause else { break };
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::AmqpUrl;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = AmqpConfig::new(AmqpUrl::new("amqp://h").unwrap())
            .with_reconnect(Duration::from_millis(500), Duration::from_secs(3));
        let notifier = AmqpNotifier::new(config).unwrap();
        let waits: Vec<u128> = (0..6)
            .map(|f| notifier.reconnect.delay_with(f, 1.0).as_millis())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000, 3000]);
        for f in [0, 3, u32::MAX] {
            let d = notifier.backoff(f);
            let top = notifier.reconnect.base_delay(f);
            assert!(
                d <= top && d >= top / 2,
                "{f}: {d:?} within [{:?}, {top:?}]",
                top / 2
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_retryable_and_hides_the_password() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = AmqpUrl::new(format!("amqp://wd:hunter2@127.0.0.1:{port}/%2f")).unwrap();
        let notifier = AmqpNotifier::new(
            AmqpConfig::new(url).with_reconnect(Duration::from_secs(5), Duration::from_secs(60)),
        )
        .unwrap();
        let n = sample();
        let first = notifier.notify(&n).await.unwrap_err();
        assert!(first.is_retryable(), "{first}");
        let wait = first.retry_after().expect("a retry_after");
        assert!(
            wait <= Duration::from_secs(5) && wait >= Duration::from_millis(2500),
            "{wait:?}"
        );
        // Within the backoff, no connection is attempted: it fails fast.
        let started = Instant::now();
        let second = notifier.notify(&n).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(
            second.to_string().contains("next connection attempt in"),
            "{second}"
        );
        let mut text = format!("{first} {first:?} {second} {second:?} {notifier:?}");
        let mut source = std::error::Error::source(&first);
        while let Some(s) = source {
            text.push_str(&format!(" {s} {s:?}"));
            source = s.source();
        }
        assert!(
            text.contains(&format!("amqp://***@127.0.0.1:{port}/%2f")),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    fn sample() -> Notification {
        wd_notify::testing::fresh_firing("pause", None)
    }
}
