//! Exchanges, queues and bindings, declared idempotently.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::protocol::envelope::EXECUTION_HEADER;
use crate::settings::{AmqpSettings, QueueType};

/// Every name of the topology, with the configured prefix applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Exchange `billing.in` (topic): upstream services publish commands and usage to it.
    pub inbound: String,
    /// Queue `billing.usage`: what `billing.in` routes with `usage.#` (with
    /// `usage.shards` > 1 it is no longer bound, and drained).
    pub usage: String,
    /// With `usage.shards` > 1: exchange `billing.usage.route` (headers),
    /// bound to `billing.in` with `usage.#`; it passes messages with the
    /// execution header on, and the rest to its alternate exchange.
    pub usage_route: String,
    /// Exchange `billing.usage.by_execution` (consistent hash on the execution header).
    pub usage_by_execution: String,
    /// Exchange `billing.usage.by_message` (consistent hash on `message_id`),
    /// the route's alternate exchange.
    pub usage_by_message: String,
    /// Queue `billing.provisioning`: what `billing.in` routes with `provisioning.#`.
    pub provisioning: String,
    /// Exchange `billing.payments` (topic): the worker publishes debit requests to it.
    pub payments: String,
    /// Queue `billing.payments.requests`: debit requests (`payment.debit`) for the gateway.
    pub payment_requests: String,
    /// Queue `billing.payments.results`: debit results from the gateway.
    pub payment_results: String,
    /// Exchange `billing.webhooks` (topic): the outbox relay publishes webhooks to it.
    pub webhooks: String,
    /// Queue `billing.webhooks`, bound with `#`; declared when `amqp.webhook_queue` is on.
    pub webhook_queue: String,
    /// Exchange `billing.dlx` (fanout): dead letters go to it.
    pub dlx: String,
    /// Queue `billing.dead`: every dead letter.
    pub dead: String,
}

impl Names {
    /// Every name, with `prefix` prepended.
    pub fn new(prefix: &str) -> Names {
        let n = |base: &str| format!("{prefix}{base}");
        Names {
            inbound: n("billing.in"),
            usage: n("billing.usage"),
            usage_route: n("billing.usage.route"),
            usage_by_execution: n("billing.usage.by_execution"),
            usage_by_message: n("billing.usage.by_message"),
            provisioning: n("billing.provisioning"),
            payments: n("billing.payments"),
            payment_requests: n("billing.payments.requests"),
            payment_results: n("billing.payments.results"),
            webhooks: n("billing.webhooks"),
            webhook_queue: n("billing.webhooks"),
            dlx: n("billing.dlx"),
            dead: n("billing.dead"),
        }
    }

    /// Queue `billing.usage.{shard}`, one shard of usage.
    pub fn usage_shard(&self, shard: u16) -> String {
        format!("{}.{shard}", self.usage)
    }

    /// Every queue, for operators and test clean-up.
    pub fn queues(&self) -> [&str; 6] {
        [
            &self.usage,
            &self.provisioning,
            &self.payment_requests,
            &self.payment_results,
            &self.webhook_queue,
            &self.dead,
        ]
    }

    /// Every exchange.
    pub fn exchanges(&self) -> [&str; 7] {
        [
            &self.inbound,
            &self.payments,
            &self.webhooks,
            &self.dlx,
            &self.usage_route,
            &self.usage_by_execution,
            &self.usage_by_message,
        ]
    }
}

fn queue_args(settings: &AmqpSettings, dead_letter_to: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(settings.queue_type.as_str())),
    );
    if let Some(dlx) = dead_letter_to {
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(dlx)),
        );
    }
    if settings.queue_type == QueueType::Quorum {
        // Quorum queues dead-letter a message redelivered this often; the
        // worker never gets there on its own (it holds messages during
        // outages instead of requeueing them), so this only catches poison.
        args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongInt(50));
    }
    args
}

/// Declares the whole topology, usage in `usage_shards` queues. Safe to
/// repeat on every (re)connection.
pub(crate) async fn declare(
    channel: &Channel,
    settings: &AmqpSettings,
    usage_shards: u16,
) -> Result<Names, lapin::Error> {
    let names = Names::new(&settings.prefix);
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (&names.inbound, ExchangeKind::Topic),
        (&names.payments, ExchangeKind::Topic),
        (&names.webhooks, ExchangeKind::Topic),
        (&names.dlx, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
            .await?;
    }
    let queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declare_queue = |name: &str, dlx: Option<&str>| {
        let args = queue_args(settings, dlx);
        let name = name.to_string();
        async move { channel.queue_declare(name.as_str().into(), queue, args).await }
    };
    let bind = |queue: &str, exchange: &str, key: &str| {
        let (queue, exchange, key) = (queue.to_string(), exchange.to_string(), key.to_string());
        async move {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
    };
    declare_queue(&names.dead, None).await?;
    bind(&names.dead, &names.dlx, "").await?;
    declare_queue(&names.usage, Some(&names.dlx)).await?;
    if usage_shards > 1 {
        declare_shards(channel, settings, &names, usage_shards).await?;
        // The shards take every new message; what the queue holds still drains.
        channel
            .queue_unbind(
                names.usage.as_str().into(),
                names.inbound.as_str().into(),
                "usage.#".into(),
                FieldTable::default(),
            )
            .await?;
    } else {
        bind(&names.usage, &names.inbound, "usage.#").await?;
        // Back to one queue: the shards get nothing new (deleting an exchange that is not there is no error).
        channel
            .exchange_delete(names.usage_route.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    declare_queue(&names.provisioning, Some(&names.dlx)).await?;
    bind(&names.provisioning, &names.inbound, "provisioning.#").await?;
    declare_queue(&names.payment_requests, None).await?;
    bind(&names.payment_requests, &names.payments, "payment.debit").await?;
    declare_queue(&names.payment_results, Some(&names.dlx)).await?;
    if settings.webhook_queue {
        declare_queue(&names.webhook_queue, None).await?;
        bind(&names.webhook_queue, &names.webhooks, "#").await?;
    }
    Ok(names)
}

fn table(pairs: impl IntoIterator<Item = (&'static str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(ShortString::from(k), v);
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Usage in `usage_shards` queues: `billing.in` routes `usage.#` to
/// a headers exchange that passes messages carrying [`EXECUTION_HEADER`] to
/// a consistent-hash exchange on that header, and (as its alternate
/// exchange) every other message to one hashing on `message_id`; both bind
/// every shard with weight 1. Shards take one consumer at a time.
async fn declare_shards(
    channel: &Channel,
    settings: &AmqpSettings,
    names: &Names,
    usage_shards: u16,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let hash = || ExchangeKind::Custom("x-consistent-hash".into());
    for (name, kind, args) in [
        (
            &names.usage_by_execution,
            hash(),
            table([("hash-header", text(EXECUTION_HEADER))]),
        ),
        (
            &names.usage_by_message,
            hash(),
            table([("hash-property", text("message_id"))]),
        ),
        (
            &names.usage_route,
            ExchangeKind::Headers,
            table([("alternate-exchange", text(&names.usage_by_message))]),
        ),
    ] {
        channel
            .exchange_declare(name.as_str().into(), kind, durable, args)
            .await?;
    }
    let exchange_bind = |destination: &str, source: &str, key: &str, args: FieldTable| {
        channel.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            args,
        )
    };
    exchange_bind(&names.usage_route, &names.inbound, "usage.#", FieldTable::default()).await?;
    // A header given with no value matches its presence, whatever it holds.
    let present = table([("x-match", text("all")), (EXECUTION_HEADER, AMQPValue::Void)]);
    exchange_bind(&names.usage_by_execution, &names.usage_route, "", present).await?;
    for shard in 0..usage_shards {
        let queue = names.usage_shard(shard);
        let mut args = queue_args(settings, Some(&names.dlx));
        args.insert(ShortString::from("x-single-active-consumer"), AMQPValue::Boolean(true));
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel.queue_declare(queue.as_str().into(), options, args).await?;
        for exchange in [&names.usage_by_execution, &names.usage_by_message] {
            // The binding key of a consistent-hash exchange is the queue's weight.
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "1".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_prefix() {
        let names = Names::new("t1.");
        assert_eq!(names.usage, "t1.billing.usage");
        assert_eq!(names.dead, "t1.billing.dead");
        assert_eq!(Names::new("").inbound, "billing.in");
    }
}
