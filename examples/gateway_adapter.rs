//! A minimal payment gateway adapter for `billing-worker`.
//!
//! It takes debit requests from `billing.payments.requests`, "charges" each
//! one (it only prints it) and answers `SUCCESS` to the request's `reply_to`
//! with the request's `x-merchantid` header and its `request_id`. A request
//! sent again with an `idempotency_key` already handled is not charged again:
//! it gets the first answer once more. The keys are kept in memory only, so a
//! real adapter keeps them in its own database instead.
//!
//! ```sh
//! cargo run --example gateway_adapter -- [--amqp-url URL] [--prefix PREFIX]
//! ```
//!
//! Start the worker first: it declares the queues. Stop with Ctrl-C. See
//! `docs/integrations.md`.

use std::collections::{HashMap, VecDeque};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "A minimal payment gateway adapter: answers SUCCESS to every debit request")]
struct Args {
    /// The broker the worker uses.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The worker's `amqp.prefix` (e.g. `t1.`); empty by default.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// How many idempotency keys are remembered; the oldest are forgotten first.
const REMEMBERED_KEYS: usize = 100_000;

/// The header that names the merchant (tenant).
const MERCHANT_HEADER: &str = "x-merchantid";

/// The answers already given, by idempotency key: the pure part of the adapter.
struct Answers {
    by_key: HashMap<String, Value>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Answers {
    fn new(capacity: usize) -> Self {
        Answers {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The answer to `request`, and whether it is new (a charge to make).
    /// A request whose key was answered before gets the same answer again.
    fn answer(&mut self, request: &Value) -> anyhow::Result<(Value, bool)> {
        let request_id = request["request_id"]
            .as_str()
            .context("the request has no request_id")?;
        // Every request carries an idempotency_key; fall back on the request id.
        let key = request["idempotency_key"].as_str().unwrap_or(request_id);
        if let Some(first) = self.by_key.get(key) {
            return Ok((first.clone(), false));
        }
        let answer = json!({
            "request_id": request_id,
            "status": "SUCCESS",
            "gateway_txn_id": format!("gw_{}", uuid::Uuid::new_v4().simple()),
        });
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_key.remove(&oldest);
        }
        self.order.push_back(key.to_string());
        self.by_key.insert(key.to_string(), answer.clone());
        Ok((answer, true))
    }
}

/// A string header of a message (long string, short string or byte array).
fn header(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let requests_queue = format!("{}billing.payments.requests", args.prefix);
    let results_queue = format!("{}billing.payments.results", args.prefix);

    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .context("connect to the broker")?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            requests_queue.as_str().into(),
            "gateway-adapter".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consume {requests_queue} (start the worker first: it declares the queue)"))?;
    println!("waiting for debit requests on {requests_queue}; Ctrl-C stops");

    let mut answers = Answers::new(REMEMBERED_KEYS);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => handle(&channel, &results_queue, &mut answers, delivery).await?,
                Some(Err(err)) => return Err(err).context("receive a debit request"),
                None => bail!("the broker closed the consumer"),
            },
        }
    }
    println!("stopping");
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}

/// Answers one debit request, then acknowledges it.
async fn handle(
    channel: &Channel,
    results_queue: &str,
    answers: &mut Answers,
    delivery: Delivery,
) -> anyhow::Result<()> {
    let props = &delivery.properties;
    let request: Value = match serde_json::from_slice(&delivery.data) {
        Ok(request) => request,
        Err(err) => {
            eprintln!("dropping a request that is not JSON: {err}");
            delivery.acker.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    let (answer, new) = match answers.answer(&request) {
        Ok(answer) => answer,
        Err(err) => {
            eprintln!("dropping a request: {err:#}");
            delivery.acker.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    let merchant = header(props, MERCHANT_HEADER).unwrap_or_default();
    if new {
        // A real adapter charges the customer here, with request["token"].
        println!(
            "charge {} {} for bill {} of merchant {} (attempt {}, key {})",
            request["amount"].as_str().unwrap_or("?"),
            request["currency"].as_str().unwrap_or("?"),
            request["bill_id"].as_str().unwrap_or("?"),
            merchant,
            request["attempt"],
            request["idempotency_key"].as_str().unwrap_or("-"),
        );
    } else {
        println!(
            "repeat of {}: not charged again, same answer",
            request["idempotency_key"].as_str().unwrap_or("?")
        );
    }

    // Answer to reply_to, through the default exchange, with the request's merchant.
    let reply_to = props
        .reply_to()
        .as_ref()
        .map(|r| r.as_str().to_string())
        .unwrap_or_else(|| results_queue.to_string());
    let mut headers = FieldTable::default();
    headers.insert(
        MERCHANT_HEADER.into(),
        AMQPValue::LongString(LongString::from(merchant.as_str())),
    );
    let mut result_props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = answer["request_id"].as_str() {
        result_props = result_props.with_correlation_id(id.into());
    }
    let body = serde_json::to_vec(&answer)?;
    let confirmation = channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            result_props,
        )
        .await?
        .await?;
    if confirmation.is_ack() {
        if confirmation.take_message().is_some() {
            // No such queue: the answer came back. The worker times the
            // attempt out and tries again with a new request.
            eprintln!("no queue {reply_to}: the answer was returned");
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    } else {
        eprintln!("the broker refused the answer; the request goes back to the queue");
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        delivery.acker.nack(requeue).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(request_id: &str, key: &str) -> Value {
        json!({"request_id": request_id, "idempotency_key": key, "bill_id": "bill_1",
               "attempt": 1, "amount": "400.00", "currency": "INR"})
    }

    #[test]
    fn a_new_key_is_charged_and_answered_success_with_its_request_id() {
        let mut answers = Answers::new(10);
        let (answer, new) = answers.answer(&request("req_1", "bill_1:1")).expect("answer");
        assert!(new);
        assert_eq!(answer["request_id"], "req_1");
        assert_eq!(answer["status"], "SUCCESS");
        assert!(answer["gateway_txn_id"].as_str().is_some_and(|t| t.starts_with("gw_")));
    }

    #[test]
    fn a_repeated_key_is_not_charged_again_and_gets_the_first_answer() {
        let mut answers = Answers::new(10);
        let (first, _) = answers.answer(&request("req_1", "bill_1:1")).expect("answer");
        let (again, new) = answers.answer(&request("req_1", "bill_1:1")).expect("answer");
        assert!(!new);
        assert_eq!(first, again);
        let (retry, new) = answers.answer(&request("req_2", "bill_1:2")).expect("answer");
        assert!(new, "a retry is a new attempt with its own key");
        assert_eq!(retry["request_id"], "req_2");
    }

    #[test]
    fn without_a_key_the_request_id_is_the_key() {
        let mut answers = Answers::new(10);
        let bare = json!({"request_id": "req_9"});
        assert!(answers.answer(&bare).expect("answer").1);
        assert!(!answers.answer(&bare).expect("answer").1);
        assert!(answers.answer(&json!({"status": "?"})).is_err());
    }

    #[test]
    fn the_oldest_keys_are_forgotten_past_the_capacity() {
        let mut answers = Answers::new(2);
        for key in ["k1", "k2", "k3"] {
            assert!(answers.answer(&request("req", key)).expect("answer").1);
        }
        assert_eq!(answers.by_key.len(), 2);
        assert!(
            answers.answer(&request("req", "k1")).expect("answer").1,
            "k1 was forgotten"
        );
        assert!(!answers.answer(&request("req", "k3")).expect("answer").1);
    }
}
