//! A minimal webhook consumer for `billing-worker`.
//!
//! It takes webhooks from the `billing.webhooks` queue, skips the ones it has
//! seen already (a webhook can be published twice, always with the same
//! `message_id`), prints the event name and the merchant of the others, and
//! acknowledges each webhook only after handling it. A real delivery service
//! would post the webhook to the merchant's endpoint where this one prints,
//! and keep the ids it has seen in its own database.
//!
//! ```sh
//! cargo run --example webhook_consumer -- [--amqp-url URL] [--prefix PREFIX]
//! ```
//!
//! Start the worker first: it declares the queue (with `amqp.webhook_queue`,
//! the default). Stop with Ctrl-C. See `docs/integrations.md`.

use std::collections::{HashSet, VecDeque};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;

#[derive(Parser)]
#[command(about = "A minimal webhook consumer: prints each webhook once")]
struct Args {
    /// The broker the worker uses.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The worker's `amqp.prefix` (e.g. `t1.`); empty by default.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// How many webhook ids are remembered; the oldest are forgotten first.
const REMEMBERED_IDS: usize = 100_000;

/// The webhook ids handled so far: the pure part of the consumer.
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Seen {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True the first time `id` is offered, false for a repeat.
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id.to_string());
        self.ids.insert(id.to_string());
        true
    }
}

/// What the consumer needs of a webhook: its id, event name and merchant.
#[derive(Debug, PartialEq)]
struct Webhook {
    id: String,
    event_name: String,
    merchant_id: String,
}

/// Reads a webhook from its properties, falling back on its body: the
/// `message_id` property is the webhook's `id`, `type` its `event_name`, and
/// the `x-merchantid` header its `merchant_id`.
fn webhook(props: &BasicProperties, body: &[u8]) -> anyhow::Result<Webhook> {
    let doc: Value = serde_json::from_slice(body).context("the webhook is not JSON")?;
    let field = |name: &str| doc[name].as_str().map(str::to_string);
    let id = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .or_else(|| field("id"))
        .context("the webhook has no id")?;
    let event_name = props
        .kind()
        .as_ref()
        .map(|k| k.as_str().to_string())
        .or_else(|| field("event_name"))
        .unwrap_or_default();
    let merchant_id = merchant(props).or_else(|| field("merchant_id")).unwrap_or_default();
    Ok(Webhook {
        id,
        event_name,
        merchant_id,
    })
}

/// The `x-merchantid` header (long string, short string or byte array).
fn merchant(props: &BasicProperties) -> Option<String> {
    match props.headers().as_ref()?.inner().get("x-merchantid")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let queue = format!("{}billing.webhooks", args.prefix);

    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .context("connect to the broker")?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "webhook-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consume {queue} (start the worker first: it declares the queue)"))?;
    println!("waiting for webhooks on {queue}; Ctrl-C stops");

    let mut seen = Seen::new(REMEMBERED_IDS);
    loop {
        let delivery = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => return Err(err).context("receive a webhook"),
                None => bail!("the broker closed the consumer"),
            },
        };
        match webhook(&delivery.properties, &delivery.data) {
            Ok(hook) if seen.first_time(&hook.id) => {
                // Deliver it here (an HTTP POST to the merchant, say), then ack.
                println!("{} for merchant {} ({})", hook.event_name, hook.merchant_id, hook.id);
            }
            Ok(hook) => println!("{} again: already handled, skipped", hook.id),
            Err(err) => eprintln!("skipping an unreadable webhook: {err:#}"),
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    println!("stopping");
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use lapin::types::LongString;

    use super::*;

    #[test]
    fn an_id_is_handled_once() {
        let mut seen = Seen::new(10);
        assert!(seen.first_time("evt_1"));
        assert!(!seen.first_time("evt_1"));
        assert!(seen.first_time("evt_2"));
    }

    #[test]
    fn the_oldest_ids_are_forgotten_past_the_capacity() {
        let mut seen = Seen::new(2);
        assert!(seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        assert_eq!(seen.ids.len(), 2);
        assert!(!seen.first_time("c"));
        assert!(seen.first_time("a"), "a was forgotten");
    }

    #[test]
    fn properties_name_the_webhook_and_the_body_fills_in() {
        let body = br#"{"id": "evt_9", "event_name": "BILLING_EXECUTION_CREATED", "merchant_id": "m1", "content": {}}"#;
        let bare = webhook(&BasicProperties::default(), body).expect("webhook");
        let expected = Webhook {
            id: "evt_9".into(),
            event_name: "BILLING_EXECUTION_CREATED".into(),
            merchant_id: "m1".into(),
        };
        assert_eq!(bare, expected);

        let mut headers = FieldTable::default();
        headers.insert("x-merchantid".into(), AMQPValue::LongString(LongString::from("m2")));
        let props = BasicProperties::default()
            .with_message_id("evt_10".into())
            .with_type("BILLING_TXN_FAILED".into())
            .with_headers(headers);
        let hook = webhook(&props, br#"{"content": {}}"#).expect("webhook");
        assert_eq!(hook.id, "evt_10");
        assert_eq!(hook.event_name, "BILLING_TXN_FAILED");
        assert_eq!(hook.merchant_id, "m2");

        assert!(webhook(&BasicProperties::default(), b"not json").is_err());
        assert!(webhook(&BasicProperties::default(), b"{}").is_err());
    }
}
