//! RabbitMQ adapter: connections, the topology, publishing
//! with publisher confirms, replies and dead letters.

pub(crate) mod topology;

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

use crate::error::Rejection;
use crate::settings::AmqpSettings;

pub use topology::Names;

/// A broker fault: the connection, a channel, or a refused publish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused (nacked) a publish to '{0}'")]
    Nacked(String),
    #[error("amqp.url names no broker node")]
    NoNode,
}

/// Opens a connection named after the role that uses it, to the first
/// node of `amqp.url` that answers (the URLs are tried in order, so after
/// a node goes away the role's next session lands on another one).
pub(crate) async fn connect(settings: &AmqpSettings, role: &str) -> Result<Connection, BrokerError> {
    let mut last = None;
    for url in settings.urls() {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from(format!("billing-worker/{role}")));
        match Connection::connect(url, props).await {
            Ok(connection) => return Ok(connection),
            Err(err) => {
                tracing::debug!(role, error = %err, "a broker node did not answer; trying the next");
                last = Some(err);
            }
        }
    }
    Err(last.map_or(BrokerError::NoNode, BrokerError::Amqp))
}

/// What a role holds on the broker: its connection, a channel to consume on
/// (with the topology declared), and a publisher in confirm mode.
pub(crate) struct Session {
    pub connection: Connection,
    pub channel: Channel,
    pub publisher: Publisher,
}

impl Session {
    /// Connects, declares the topology (usage in `usage_shards` queues) and
    /// opens the publisher.
    pub(crate) async fn open(settings: &AmqpSettings, usage_shards: u16, role: &str) -> Result<Session, BrokerError> {
        let connection = connect(settings, role).await?;
        let channel = connection.create_channel().await?;
        topology::declare(&channel, settings, usage_shards).await?;
        let publisher = Publisher::open(&connection).await?;
        Ok(Session {
            connection,
            channel,
            publisher,
        })
    }

    /// Starts consuming `queue` with at most `prefetch` unacked messages.
    pub(crate) async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        self.channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        Ok(self
            .channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?)
    }

    /// Closes the channel and the connection; unacked messages go back to their queues.
    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "shutdown".into()).await;
        let _ = self.connection.close(200, "shutdown".into()).await;
    }
}

/// A channel in confirm mode: every publish waits for the broker's ack.
#[derive(Clone)]
pub(crate) struct Publisher {
    channel: Channel,
}

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}

/// A header table from string pairs.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
    }
    table
}

impl Publisher {
    pub(crate) async fn open(connection: &Connection) -> Result<Publisher, BrokerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    /// Publishes and waits until the broker has taken responsibility for it.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked(format!("{exchange}/{routing_key}")));
        }
        Ok(())
    }

    /// Publishes many messages and waits for all confirms. Returns how many
    /// of them, from the first, were confirmed before the first refusal.
    pub(crate) async fn publish_all(
        &self,
        messages: Vec<(String, String, Vec<u8>, BasicProperties)>,
    ) -> Result<usize, BrokerError> {
        let mut pending = Vec::with_capacity(messages.len());
        for (exchange, routing_key, body, props) in messages {
            pending.push(
                self.channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?,
            );
        }
        let mut confirmed = 0;
        for confirm in pending {
            if confirm.await?.is_nack() {
                break;
            }
            confirmed += 1;
        }
        Ok(confirmed)
    }

    /// Answers a request at its `reply_to`, through the default exchange.
    pub(crate) async fn reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<(), BrokerError> {
        let mut props = BasicProperties::default().with_content_type(ShortString::from("application/json"));
        if let Some(c) = correlation_id {
            props = props.with_correlation_id(ShortString::from(c));
        }
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.publish("", reply_to, &bytes, props).await
    }

    /// Sends a message, unchanged, to the dead-letter exchange with the
    /// reason in `x-error-code` / `x-error-message` and where it came from.
    /// Publishes a dead letter: the body unchanged, the original headers
    /// (unless they are large), and the reason.
    pub(crate) async fn dead_letter(
        &self,
        names: &Names,
        delivery_exchange: &str,
        routing_key: &str,
        props: &BasicProperties,
        body: &[u8],
        rejection: &Rejection,
    ) -> Result<(), BrokerError> {
        let original = props.headers().clone().unwrap_or_default();
        let size = table_size(&original);
        // The dead letter must fit in one header frame with what it adds:
        // headers that are large already are left out (the body is kept).
        let mut table = if size <= MAX_KEPT_HEADER_BYTES {
            original
        } else {
            let mut kept = FieldTable::default();
            if let Some(merchant) = original.inner().get(crate::protocol::envelope::MERCHANT_HEADER)
                && value_size(merchant) <= 256
            {
                kept.insert(crate::protocol::envelope::MERCHANT_HEADER.into(), merchant.clone());
            }
            kept.insert(
                "x-original-headers-dropped".into(),
                AMQPValue::LongString(LongString::from(format!("{size} bytes of headers left out"))),
            );
            kept
        };
        let mut set = |k: &str, v: &str| {
            table.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v)));
        };
        set("x-error-code", rejection.code.as_str());
        set("x-error-message", &rejection.message);
        set("x-original-routing-key", routing_key);
        set("x-original-exchange", delivery_exchange);
        let props = props.clone().with_headers(table).with_delivery_mode(2);
        self.publish(&names.dlx, routing_key, body, props).await
    }
}

/// Largest original header table a dead letter carries on.
const MAX_KEPT_HEADER_BYTES: usize = 32 * 1024;

/// About how many bytes a header table takes on the wire.
fn table_size(table: &FieldTable) -> usize {
    table
        .inner()
        .iter()
        .map(|(k, v)| k.as_str().len().saturating_add(value_size(v)).saturating_add(2))
        .fold(0usize, usize::saturating_add)
}

fn value_size(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::LongString(s) => s.as_bytes().len().saturating_add(5),
        AMQPValue::ShortString(s) => s.as_str().len().saturating_add(2),
        AMQPValue::ByteArray(b) => b.as_slice().len().saturating_add(5),
        AMQPValue::FieldTable(t) => table_size(t).saturating_add(5),
        AMQPValue::FieldArray(a) => a.as_slice().iter().map(value_size).fold(5usize, usize::saturating_add),
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_count_what_the_wire_carries() {
        let mut table = FieldTable::default();
        table.insert("x-merchantid".into(), AMQPValue::LongString("m1".into()));
        assert!(table_size(&table) < 64);
        table.insert("x-huge".into(), AMQPValue::LongString("h".repeat(300_000).into()));
        assert!(table_size(&table) > MAX_KEPT_HEADER_BYTES);
        let mut nested = FieldTable::default();
        nested.insert("inner".into(), AMQPValue::FieldTable(table));
        assert!(table_size(&nested) > 300_000);
    }
}
