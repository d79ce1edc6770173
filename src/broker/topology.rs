//! Exchanges, queues and bindings, declared idempotently.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::settings::{AmqpSettings, QueueType};

/// Every name of the topology, with the configured prefix applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Exchange `billing.in` (topic): upstream services publish commands and usage to it.
    pub inbound: String,
    /// Queue `billing.usage`: what `billing.in` routes with `usage.#`.
    pub usage: String,
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
    pub fn exchanges(&self) -> [&str; 4] {
        [&self.inbound, &self.payments, &self.webhooks, &self.dlx]
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

/// Declares the whole topology. Safe to repeat on every (re)connection.
pub(crate) async fn declare(channel: &Channel, settings: &AmqpSettings) -> Result<Names, lapin::Error> {
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
    bind(&names.usage, &names.inbound, "usage.#").await?;
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
