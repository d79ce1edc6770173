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

/// Results that wait while no worker runs come in as one batch: ordinary
/// successes settle together; a repeated success and a failure go one by
/// one; each ends as it would alone, and a request without an answer stays
/// out.
#[tokio::test]
async fn a_batch_of_ordinary_and_unusual_results_settles_each_as_alone() {
    use billing_worker::clock::ManualClock;

    use crate::helpers::TestApp;
    use crate::seed::{at, plan, run_billing};

    let clock = ManualClock::new(at(2026, 1, 31, 0, 0));
    let mut app = TestApp::spawn_with_clock(clock.clone()).await;
    let gateway = Gateway::start(&app.settings.amqp.prefix, |_| Answer::Silent).await;
    plan(&mut app, json!({"max_retry": 2})).await;
    let mut executions = Vec::new();
    for _ in 0..5 {
        let r = app
            .call("m1", json!({"command": "create", "plan_id": "p", "customer_id": "c1"}))
            .await;
        assert_eq!(r["success"], true, "{r}");
        executions.push(r["billing_execution_info_id"].as_str().expect("id").to_string());
    }
    clock.set(at(2026, 2, 28, 0, 0));
    run_billing(&mut app).await;
    clock.set(at(2026, 2, 28, 1, 0));
    assert_eq!(run_billing(&mut app).await["debits_requested"], 5);
    let requests = gateway.wait_for(5).await;
    let of = |requests: &[Value], execution: &str| -> Value {
        requests
            .iter()
            .find(|r| r["billing_execution_info_id"] == execution)
            .cloned()
            .expect("request of the execution")
    };

    app.stop_worker().await;
    let (ordinary, also_ordinary, twice, failing, unanswered) = (
        of(&requests, &executions[0]),
        of(&requests, &executions[1]),
        of(&requests, &executions[2]),
        of(&requests, &executions[3]),
        of(&requests, &executions[4]),
    );
    gateway.send_result(&ordinary, Answer::Success).await;
    gateway.send_result(&twice, Answer::SuccessTwice).await;
    gateway.send_result(&failing, Answer::Failure { retryable: true }).await;
    gateway.send_result(&also_ordinary, Answer::Success).await;
    let peer = app.spawn_peer(Arc::new(clock.clone())).await;

    let ids: Vec<&str> = executions.iter().map(String::as_str).collect();
    let (db, list) = (app.db.clone(), ids.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let settled: Vec<(String, String, Option<String>)> = eventually("the batch settled", || {
        let (db, list) = (db.clone(), list.clone());
        async move {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT execution_id, status, gateway_txn_id FROM bills WHERE execution_id = ANY($1)
                 ORDER BY array_position($1, execution_id)",
            )
            .bind(&list)
            .fetch_all(&db)
            .await
            .ok()?;
            let attempts: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM debit_attempts d JOIN bills b ON b.id = d.bill_id
                 WHERE b.execution_id = ANY($1) AND d.status IN ('REQUESTED', 'PENDING')",
            )
            .bind(&list)
            .fetch_one(&db)
            .await
            .ok()?;
            // Only the unanswered attempt is left waiting.
            (attempts == 1 && rows.iter().filter(|r| r.1 != "PROCESSING").count() == 4).then_some(rows)
        }
    })
    .await;
    let txn = |r: &Value| Some(format!("txn_{}", r["request_id"].as_str().expect("id")));
    let status = |i: usize| (settled[i].1.as_str(), settled[i].2.clone());
    assert_eq!(settled.len(), 5);
    assert_eq!(status(0), ("PAID", txn(&ordinary)));
    assert_eq!(status(1), ("PAID", txn(&also_ordinary)));
    assert_eq!(status(2), ("PAID", txn(&twice)));
    assert_eq!(status(3), ("RETRY_SCHEDULED", None));
    assert_eq!(status(4), ("PROCESSING", None));

    let attempts: Vec<(String, String)> = sqlx::query_as(
        "SELECT d.request_id, d.status FROM debit_attempts d JOIN bills b ON b.id = d.bill_id
         WHERE b.execution_id = ANY($1) ORDER BY d.request_id",
    )
    .bind(&list)
    .fetch_all(&app.db)
    .await
    .expect("attempts");
    let attempt = |r: &Value| {
        attempts
            .iter()
            .find(|(id, _)| r["request_id"] == id.as_str())
            .map(|(_, s)| s.as_str())
    };
    assert_eq!(attempt(&ordinary), Some("SUCCESS"));
    assert_eq!(attempt(&also_ordinary), Some("SUCCESS"));
    assert_eq!(attempt(&twice), Some("SUCCESS"));
    assert_eq!(attempt(&failing), Some("FAILURE"));
    assert_eq!(attempt(&unanswered), Some("REQUESTED"));

    // Each execution's webhooks about its bill, in the order they were written.
    let webhooks: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT execution_id, event_name, payload FROM outbox WHERE execution_id = ANY($1) ORDER BY seq",
    )
    .bind(&list)
    .fetch_all(&app.db)
    .await
    .expect("outbox");
    let events = |i: usize| -> Vec<(String, Value)> {
        webhooks
            .iter()
            .filter(|(e, _, payload)| e == &executions[i] && payload["content"].get("bill").is_some())
            .map(|(_, name, payload)| (name.clone(), payload["content"].clone()))
            .collect()
    };
    let names = |i: usize| events(i).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    let issued = ["BILLING_TXN_SCHEDULED", "BILLING_TXN_TO_BE_EXECUTED"];
    let paid = [&issued[..], &["BILLING_EXECUTION_DEBIT_EVENT"][..]].concat();
    assert_eq!(names(0), paid);
    assert_eq!(names(1), paid);
    assert_eq!(names(2), paid);
    assert_eq!(
        names(3),
        [&issued[..], &["BILLING_TXN_FAILED", "BILLING_RETRY_TXN_SCHEDULED"][..]].concat()
    );
    assert_eq!(names(4), issued);
    for (i, request) in [(0, &ordinary), (1, &also_ordinary), (2, &twice)] {
        let (_, content) = events(i).pop().expect("debit event");
        assert_eq!(content["late"], false);
        assert_eq!(content["bill"]["status"], "PAID");
        assert_eq!(content["bill"]["gateway_txn_id"], json!(txn(request)));
        assert_eq!(content["bill"]["lines"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            content["billing_execution_info"]["billing_execution_info_id"],
            executions[i].as_str()
        );
        let s = &content["settlement"];
        assert_eq!(s["debited_amount"], json!(100));
        assert_eq!(s["request_id"], request["request_id"]);
        assert_eq!(s["attempt"], 1);
        assert_eq!(s["gateway_txn_id"], json!(txn(request)));
        assert_eq!(s["currency"], "INR");
        assert!(content.get("adjustments").is_none(), "{content}");
    }
    peer.stop().await;
    gateway.stop();
    app.teardown().await;
}
