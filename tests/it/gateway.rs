//! A fake payment gateway: a real peer on the bus that takes debit requests
//! from `billing.payments.requests`, records them, and answers as told.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::helpers::{amqp_url, eventually};

/// How the gateway answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Success,
    Failure {
        retryable: bool,
    },
    /// No answer at all (the worker times out).
    Silent,
    /// The same success, sent twice.
    SuccessTwice,
}

type Script = dyn Fn(&Value) -> Answer + Send + Sync;

/// The gateway and everything it was asked.
pub struct Gateway {
    pub requests: Arc<Mutex<Vec<Value>>>,
    channel: Channel,
    results_queue: String,
    _connection: Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts answering requests of the topology with this prefix.
    pub async fn start(prefix: &str, script: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> Gateway {
        let names = billing_worker::broker::Names::new(prefix);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("gateway connects");
        let channel = connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                names.payment_requests.as_str().into(),
                "gateway".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume requests");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, replies, results_queue) = (requests.clone(), channel.clone(), names.payment_results.clone());
        let script: Arc<Script> = Arc::new(script);
        let queue = results_queue.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let request: Value = serde_json::from_slice(&delivery.data).expect("request is JSON");
                seen.lock().expect("lock").push(request.clone());
                let answer = script(&request);
                let reply_to = delivery
                    .properties
                    .reply_to()
                    .as_ref()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or(queue.clone());
                for result in results(&request, &answer) {
                    publish(&replies, &reply_to, &result).await;
                }
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
        Gateway {
            requests,
            channel,
            results_queue,
            _connection: connection,
            task,
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Value> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        let requests = self.requests.clone();
        eventually(&format!("{n} debit requests at the gateway"), || {
            let requests = requests.clone();
            async move {
                let seen = requests.lock().expect("lock").clone();
                (seen.len() >= n).then_some(seen)
            }
        })
        .await
    }

    /// Sends a result for a request, as a late or repeated answer would.
    pub async fn send_result(&self, request: &Value, answer: Answer) {
        for result in results(request, &answer) {
            publish(&self.channel, &self.results_queue, &result).await;
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

fn results(request: &Value, answer: &Answer) -> Vec<Value> {
    let id = request["request_id"].clone();
    let success = json!({"request_id": id, "status": "SUCCESS", "gateway_txn_id": format!("txn_{}", id.as_str().unwrap_or_default())});
    match answer {
        Answer::Success => vec![success],
        Answer::SuccessTwice => vec![success.clone(), success],
        Answer::Failure { retryable } => vec![
            json!({"request_id": id, "status": "FAILURE", "error_code": "INSUFFICIENT_FUNDS",
            "error_message": "card declined", "retryable": retryable}),
        ],
        Answer::Silent => Vec::new(),
    }
}

async fn publish(channel: &Channel, queue: &str, body: &Value) {
    let bytes = serde_json::to_vec(body).expect("json");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &bytes,
            BasicProperties::default(),
        )
        .await
        .expect("publish result");
}
