//! A fake payment gateway: a real peer on the bus that takes debit requests
//! from `billing.payments.requests`, records them, and answers as told. Its
//! results carry the request's `x-merchantid` back, as a gateway must.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::helpers::{amqp_url, eventually, header};

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
    /// The `x-merchantid` of each request, by request id.
    merchants: Arc<Mutex<HashMap<String, String>>>,
    /// The broker user its results name (`user_id`), if any.
    user_id: Option<String>,
    channel: Channel,
    results_queue: String,
    _connection: Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts answering requests of the topology with this prefix.
    pub async fn start(prefix: &str, script: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> Gateway {
        Self::start_as(prefix, None, script).await
    }

    /// Like [`Gateway::start`], its results naming the broker user `user_id`.
    pub async fn start_as(
        prefix: &str,
        user_id: Option<&str>,
        script: impl Fn(&Value) -> Answer + Send + Sync + 'static,
    ) -> Gateway {
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
        let merchants = Arc::new(Mutex::new(HashMap::new()));
        let user_id = user_id.map(str::to_string);
        let (seen, replies, results_queue) = (requests.clone(), channel.clone(), names.payment_results.clone());
        let (merchant_of, user) = (merchants.clone(), user_id.clone());
        let script: Arc<Script> = Arc::new(script);
        let queue = results_queue.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let request: Value = serde_json::from_slice(&delivery.data).expect("request is JSON");
                let merchant = header(&delivery.properties, "x-merchantid");
                if let (Some(id), Some(m)) = (request["request_id"].as_str(), &merchant) {
                    merchant_of.lock().expect("lock").insert(id.to_string(), m.clone());
                }
                seen.lock().expect("lock").push(request.clone());
                let answer = script(&request);
                let reply_to = delivery
                    .properties
                    .reply_to()
                    .as_ref()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or(queue.clone());
                for result in results(&request, &answer) {
                    publish(&replies, &reply_to, &result, merchant.as_deref(), user.as_deref()).await;
                }
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
        Gateway {
            requests,
            merchants,
            user_id,
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

    /// Sends a result for a request, as a late or repeated answer would,
    /// with the request's `x-merchantid`.
    pub async fn send_result(&self, request: &Value, answer: Answer) {
        let merchant = request["request_id"]
            .as_str()
            .and_then(|id| self.merchants.lock().expect("lock").get(id).cloned());
        self.send_result_as(request, answer, merchant.as_deref()).await;
    }

    /// Sends a result naming `merchant` (or no merchant at all) in
    /// `x-merchantid`, as a forged or broken result would.
    pub async fn send_result_as(&self, request: &Value, answer: Answer, merchant: Option<&str>) {
        for result in results(request, &answer) {
            publish(
                &self.channel,
                &self.results_queue,
                &result,
                merchant,
                self.user_id.as_deref(),
            )
            .await;
        }
    }

    /// Like [`Gateway::send_result_as`], with the given `user_id` property.
    pub async fn send_result_by(&self, request: &Value, answer: Answer, merchant: Option<&str>, user: Option<&str>) {
        for result in results(request, &answer) {
            publish(&self.channel, &self.results_queue, &result, merchant, user).await;
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

async fn publish(channel: &Channel, queue: &str, body: &Value, merchant: Option<&str>, user: Option<&str>) {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut props = BasicProperties::default();
    if let Some(m) = merchant {
        let mut headers = FieldTable::default();
        headers.insert("x-merchantid".into(), AMQPValue::LongString(LongString::from(m)));
        props = props.with_headers(headers);
    }
    if let Some(u) = user {
        props = props.with_user_id(u.into());
    }
    channel
        .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &bytes, props)
        .await
        .expect("publish result");
}
