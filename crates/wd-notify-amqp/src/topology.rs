//! The topology a notifier declares, as oslo.messaging's notifier does,
//! and how the broker's refusals of it are classified.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use wd_notify::NotifyError;

use crate::config::{AmqpConfig, Publication};

/// AMQP reply code for a missing exchange or queue.
pub(crate) const NOT_FOUND: u16 = 404;
/// AMQP reply code for a declaration that differs from the existing entity.
pub(crate) const PRECONDITION_FAILED: u16 = 406;
/// AMQP reply code for an operation the user has no permission for.
pub(crate) const ACCESS_REFUSED: u16 = 403;
/// AMQP reply code for a vhost the user may not open.
pub(crate) const NOT_ALLOWED: u16 = 530;

/// Declares (or, with `declare = false`, checks) the exchange, and with
/// `declare_queue` each route's queue, bound by its routing key: oslo's
/// `notify_send` and `_publish_and_creates_default_queue`. Closes the
/// connection on failure.
pub(crate) async fn declare(
    connection: &Connection,
    channel: &Channel,
    config: &AmqpConfig,
    routes: &[Publication],
    broker: &str,
) -> Result<(), NotifyError> {
    let exchange = config.exchange.as_str();
    let declared = channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: !config.declare,
                durable: config.durable,
                auto_delete: config.auto_delete,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    if let Err(e) = declared {
        let _ = connection.close(200, "declare failed".into()).await;
        return Err(match amqp_code(&e) {
            Some(PRECONDITION_FAILED) => configuration(
                format!(
                    "amqp exchange `{exchange}` on {broker} exists with other properties than declared \
                         (type topic, durable={}, auto_delete={}): 406 PRECONDITION_FAILED; set durable to the \
                         deployment's setting (oslo.messaging amqp_durable_queues, or rabbit_quorum_queue, \
                         which makes it durable), or declare = false to publish to the existing exchange \
                         without declaring it; the notification waits in its queue until the configuration \
                         is fixed and reloaded",
                    config.durable, config.auto_delete
                ),
                e,
            ),
            Some(ACCESS_REFUSED) => configuration(
                format!(
                    "amqp broker {broker}: the user may not declare exchange `{exchange}` \
                         (403 ACCESS_REFUSED); grant it configure and write permission on the vhost"
                ),
                e,
            ),
            Some(NOT_FOUND) => configuration(
                format!(
                    "amqp exchange `{exchange}` does not exist on {broker} (404 NOT_FOUND) and \
                         declare = false, so it is not created"
                ),
                e,
            ),
            _ => retryable(
                format!("amqp broker {broker}: cannot declare exchange `{exchange}`"),
                e,
            ),
        });
    }

    for route in routes.iter().filter(|_| config.declare_queue) {
        let queue = route.routing_key.as_str();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: config.durable,
                    auto_delete: config.auto_delete,
                    ..QueueDeclareOptions::default()
                },
                queue_arguments(config),
            )
            .await;
        let bound = match declared {
            Ok(_) => {
                channel
                    .queue_bind(
                        queue.into(),
                        exchange.into(),
                        queue.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = bound {
            let _ = connection.close(200, "declare failed".into()).await;
            return Err(match amqp_code(&e) {
                Some(PRECONDITION_FAILED) => configuration(
                    format!(
                        "amqp queue `{queue}` on {broker} exists with other properties than declared \
                             (durable={}, auto_delete={}, {}): 406 PRECONDITION_FAILED; match the deployment \
                             (oslo.messaging rabbit_quorum_queue, amqp_durable_queues, amqp_auto_delete, \
                             rabbit_ha_queues) or set declare_queue = false; the notification waits in its \
                             queue until the configuration is fixed and reloaded",
                        config.durable,
                        config.auto_delete,
                        if config.quorum.is_some() {
                            "x-queue-type=quorum"
                        } else {
                            "a classic queue"
                        }
                    ),
                    e,
                ),
                Some(ACCESS_REFUSED) => configuration(
                    format!(
                        "amqp broker {broker}: the user may not declare queue `{queue}` \
                             (403 ACCESS_REFUSED); grant it configure, write and read permission on the vhost"
                    ),
                    e,
                ),
                _ => retryable(
                    format!("amqp broker {broker}: cannot declare queue `{queue}`"),
                    e,
                ),
            });
        }
    }
    Ok(())
}

pub(crate) fn retryable(message: String, source: lapin::Error) -> NotifyError {
    NotifyError::Retryable {
        message,
        retry_after: None,
        source: Some(Box::new(source)),
    }
}

/// A failure the broker's refusal of our configuration caused: retryable
/// (the notification stays queued), marked with a
/// [`wd_notify::ConfigurationError`] so metrics and `/healthz` name it.
pub(crate) fn configuration(message: String, source: lapin::Error) -> NotifyError {
    let detail = match source.kind() {
        lapin::ErrorKind::ProtocolError(err) => err.to_string(),
        _ => source.to_string(),
    };
    NotifyError::Retryable {
        message,
        retry_after: None,
        source: Some(Box::new(wd_notify::ConfigurationError::new(
            detail,
            Some(Box::new(source)),
        ))),
    }
}

/// The arguments queues are declared with, as oslo.messaging's
/// `_get_queue_arguments` builds them for a notifier.
pub(crate) fn queue_arguments(config: &AmqpConfig) -> FieldTable {
    use lapin::types::{AMQPValue, LongString};
    let mut args = FieldTable::default();
    if config.ha_queues {
        args.insert(
            "x-ha-policy".into(),
            AMQPValue::LongString(LongString::from("all")),
        );
    }
    if let Some(q) = &config.quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        let limits = [
            ("x-delivery-limit", q.delivery_limit),
            ("x-max-in-memory-length", q.max_memory_length),
            ("x-max-in-memory-bytes", q.max_memory_bytes),
        ];
        for (key, value) in limits {
            if value > 0 {
                let v = i64::try_from(value).unwrap_or(i64::MAX);
                args.insert(key.into(), AMQPValue::LongLongInt(v));
            }
        }
    }
    args
}

/// The AMQP reply code of a channel or connection error from the broker.
pub(crate) fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => Some(err.get_id()),
        _ => None,
    }
}
