//! Usage in shards (`usage.shards` > 1) on the three-node cluster (whose
//! nodes have the consistent-hash exchange): messages spread over
//! `billing.usage.{i}` by the execution header, or by `message_id` without
//! it; one execution's messages stay on one shard; every event is counted
//! once; a worker hands a shard it does not prefer back to one that does.

use std::sync::Arc;
use std::time::Duration;

use billing_worker::clock::SystemClock;
use billing_worker::protocol::envelope::EXECUTION_HEADER;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString, ShortString};
use serde_json::json;

use crate::Cluster;
use crate::helpers::{Sandbox, TestApp, eventually, with_merchant};

const SHARDS: u16 = 3;

async fn sharded(cluster: &Cluster, change: impl FnOnce(&mut billing_worker::settings::Settings)) -> TestApp {
    let mut sandbox = Sandbox::new().await;
    sandbox.settings.amqp.url = secrecy::SecretString::from(cluster.url.clone());
    sandbox.settings.amqp.queue_type = billing_worker::settings::QueueType::Quorum;
    sandbox.settings.usage.shards = SHARDS;
    change(&mut sandbox.settings);
    TestApp::spawn_with(sandbox, Arc::new(SystemClock)).await
}

/// A persistent usage message of `m1`, with the execution header when given.
fn props(header: Option<&str>, message_id: Option<&str>) -> BasicProperties {
    let mut props = with_merchant(BasicProperties::default().with_delivery_mode(2), "m1");
    if let Some(value) = header {
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(EXECUTION_HEADER),
            AMQPValue::LongString(LongString::from(value)),
        );
        props = props.with_headers(headers);
    }
    if let Some(id) = message_id {
        props = props.with_message_id(id.into());
    }
    props
}

async fn depths(app: &TestApp) -> Vec<u32> {
    let mut depths = Vec::new();
    for shard in 0..SHARDS {
        depths.push(app.queue_depth(&app.names.usage_shard(shard)).await);
    }
    depths
}

async fn execution(app: &mut TestApp) -> String {
    crate::helpers::seed_catalog(app, "m1").await;
    app.create_execution(
        "m1",
        json!({"command": "create", "plan_id": "test_3", "customer_id": "cth_1", "amount": 0}),
    )
    .await
}

fn event(id: &str, execution: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"event_id": id, "billing_execution_info_id": execution, "metric_id": "storage", "value": 1}),
    )
    .expect("json")
}

#[tokio::test]
async fn usage_in_shards_is_spread_kept_together_counted_once_and_handed_back() {
    let cluster = Cluster::up().await;
    shards_spread_messages_keep_an_execution_together_and_count_each_event_once(&cluster).await;
    a_worker_hands_a_shard_it_does_not_prefer_back_to_one_that_does(&cluster).await;
    drop(cluster);
}

async fn shards_spread_messages_keep_an_execution_together_and_count_each_event_once(cluster: &Cluster) {
    let mut app = sharded(cluster, |_| {}).await;
    let id = execution(&mut app).await;
    app.stop_worker().await;

    // One header value: one shard, however many messages.
    for n in 0..10 {
        app.publish_raw("usage.a", &event(&format!("same-{n}"), &id), props(Some(&id), None))
            .await;
    }
    let one = depths(&app).await;
    assert_eq!(one.iter().sum::<u32>(), 10, "{one:?}");
    assert_eq!(one.iter().filter(|&&d| d > 0).count(), 1, "{one:?}");
    // Many header values, or none and many message ids: spread over the shards.
    for n in 0..60 {
        app.publish_raw(
            "usage.b",
            &event(&format!("h-{n}"), &id),
            props(Some(&format!("exec-{n}")), None),
        )
        .await;
        app.publish_raw(
            "usage.c",
            &event(&format!("m-{n}"), &id),
            props(None, Some(&format!("msg-{n}"))),
        )
        .await;
    }
    let spread = depths(&app).await;
    assert_eq!(spread.iter().sum::<u32>(), 130, "{spread:?}");
    assert!(spread.iter().all(|&d| d > 10), "every shard takes some: {spread:?}");
    // The single queue is no longer bound; nothing reaches it.
    assert_eq!(app.queue_depth(&app.names.usage).await, 0);

    // Repeats on other shards than the first copy are still repeats.
    app.publish_raw("usage.d", &event("same-0", &id), props(None, Some("repeat-1")))
        .await;
    app.publish_raw("usage.d", &event("h-1", &id), props(Some("elsewhere"), None))
        .await;
    let peer = app.spawn_peer(Arc::new(SystemClock)).await;
    app.wait_for_count("every event counted once", "SELECT count(*) FROM usage_events", 130)
        .await;
    eventually("the repeats seen", || async {
        let (_, metrics) = crate::helpers::http_get(peer.http, "/metrics").await;
        metrics.contains("billing_usage_events_duplicate_total 2").then_some(())
    })
    .await;
    assert_eq!(depths(&app).await, vec![0; SHARDS as usize]);
    let sum: i64 = sqlx::query_scalar("SELECT sum(sum)::bigint FROM usage_aggregates")
        .fetch_one(&app.db)
        .await
        .expect("sum");
    assert_eq!(sum, 130);
    peer.stop().await;
    app.teardown().await;
}

/// Events counted by a worker, from its metrics.
async fn counted_by(http: std::net::SocketAddr) -> u64 {
    let (_, metrics) = crate::helpers::http_get(http, "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("billing_usage_events_counted_total "))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

async fn a_worker_hands_a_shard_it_does_not_prefer_back_to_one_that_does(cluster: &Cluster) {
    let mut app = sharded(cluster, |s| {
        s.usage.standby_after = Duration::from_millis(300);
        s.usage.preferred_shards = vec![0];
    })
    .await;
    let id = execution(&mut app).await;
    let mut sent = 0;
    // Alone, the first worker stands by on shards 1 and 2, and counts them too.
    let total = wave(&app, &id, "alone", &mut sent).await;
    app.wait_for_count("every event counted", "SELECT count(*) FROM usage_events", total)
        .await;
    assert_eq!(counted_by(app.http).await, 30);

    // A second worker that prefers shards 1 and 2 comes and waits: the first
    // hands them back after its next standby interval and the second takes
    // over (the first keeps shard 0, which it prefers).
    let mut settings = app.settings.clone();
    settings.usage.preferred_shards = vec![1, 2];
    let peer = app.spawn_peer_with(settings, Arc::new(SystemClock)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    let total = loop {
        round += 1;
        let total = wave(&app, &id, &format!("round{round}"), &mut sent).await;
        app.wait_for_count("every event counted", "SELECT count(*) FROM usage_events", total)
            .await;
        if counted_by(peer.http).await > 0 {
            break total;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second worker never got a shard"
        );
    };
    let first = counted_by(app.http).await;
    assert_eq!(
        first + counted_by(peer.http).await,
        total as u64,
        "each event counted by one worker"
    );
    peer.stop().await;
    app.teardown().await;
}

/// Thirty events of `execution`, each with its own execution header; the
/// events sent so far.
async fn wave(app: &TestApp, execution: &str, name: &str, sent: &mut i64) -> i64 {
    for n in 0..30 {
        let body = event(&format!("{name}-{n}"), execution);
        app.publish_raw("usage.w", &body, props(Some(&format!("exec-{n}")), None))
            .await;
    }
    *sent += 30;
    *sent
}
