//! The usage role: take messages as they come, close a batch by size or
//! time, count it in one transaction, dead-letter what is wrong, then ack
//! the whole batch at once (`multiple`), only after the commit. Up to
//! [`IN_FLIGHT`] batches are counted at once, each in its own transaction,
//! while the next one fills; a batch is acked (and its counts show in the
//! metrics) only after every batch received before it, so acks stay in
//! order and an unacked batch never has its messages acked by a later one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{dead_letter, delivery, hold_through_outages, open_consumer, open_publisher, supervise};
use crate::broker::{BrokerError, Publisher};
use crate::context::Context;
use crate::error::{HandleError, Rejection};
use crate::protocol::envelope;
use crate::protocol::usage::{Decoded, decode_message};
use crate::usage::ingest::{Candidate, Limits, Report, ingest};

const ROLE: &str = "usage";
/// Batches counted at once, each in its own transaction and on its own connection.
const IN_FLIGHT: usize = 2;

/// Runs the role until `cancel` fires: one consumer of `billing.usage`, or
/// with `usage.shards` > 1 one per shard, each under its own supervisor
/// (role `usage.{i}`), plus one that drains what `billing.usage` still
/// holds. Each reconnects on broker faults.
pub(crate) async fn run(ctx: Arc<Context>, cancel: CancellationToken) {
    let whole = Subscription {
        queue: ctx.names.usage.clone(),
        role: ROLE,
        standby: false,
    };
    let shards = ctx.settings.usage.shards;
    let mut subscriptions = vec![whole];
    if shards > 1 {
        subscriptions.extend((0..shards).map(|shard| Subscription {
            queue: ctx.names.usage_shard(shard),
            // At most 64 names, made once per process.
            role: Box::leak(format!("{ROLE}.{shard}").into_boxed_str()),
            standby: !ctx.settings.usage.prefers(shard),
        }));
    }
    let mut roles = tokio::task::JoinSet::new();
    for sub in subscriptions {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        roles.spawn(async move {
            let role = sub.role;
            supervise(role, ctx, cancel, move |ctx, cancel| session(ctx, cancel, sub.clone())).await;
        });
    }
    while roles.join_next().await.is_some() {}
}

/// One queue the role consumes.
#[derive(Debug, Clone)]
struct Subscription {
    queue: String,
    role: &'static str,
    /// A shard this worker does not prefer: it subscribes only after
    /// `usage.standby_after`, and hands the shard back (see [`consume`]).
    standby: bool,
}

/// How a [`consume`] ended.
enum Ended {
    /// Shutdown: everything received was settled or returned.
    Stopped,
    /// Handed a standby shard back to a waiting consumer.
    HandedBack,
}

/// Consumes one queue until shutdown, subscribing again (at the back of the
/// line) after each hand-back.
async fn session(ctx: Arc<Context>, cancel: CancellationToken, sub: Subscription) -> anyhow::Result<()> {
    let mut wait = sub.standby;
    loop {
        match consume(&ctx, &cancel, &sub, wait).await? {
            Ended::Stopped => return Ok(()),
            Ended::HandedBack => {
                tracing::debug!(queue = %sub.queue, "handed a shard this worker does not prefer back");
                wait = false;
            }
        }
    }
}

/// A message of the batch and what its body holds.
struct Message {
    delivery: Delivery,
    received_at: DateTime<Utc>,
    content: Result<(String, Vec<Decoded>), Rejection>,
}

impl Message {
    fn new(ctx: &Context, delivery: Delivery) -> Message {
        let settings = &ctx.settings;
        let content = envelope::open(
            &delivery.properties,
            &delivery.data,
            settings.amqp.max_message_bytes,
            &settings.auth,
            None,
        )
        .and_then(|env| {
            Ok((
                env.merchant_id,
                decode_message(&delivery.data, settings.usage.max_events_per_message)?,
            ))
        });
        Message {
            delivery,
            received_at: ctx.clock.now(),
            content,
        }
    }

    fn events(&self) -> usize {
        self.content.as_ref().map_or(1, |(_, events)| events.len())
    }
}

/// A batch being counted, dead-lettered and acked: `false` if shutdown came first.
type Settling<'a> = Pin<Box<dyn Future<Output = Result<bool, BrokerError>> + Send + 'a>>;

/// Consumes `sub.queue` in batches until shutdown. A standby subscription
/// first waits `usage.standby_after` (when `wait`), so that workers that
/// prefer the shard subscribe first; single-active-consumer then lets it
/// count only while no earlier subscriber is there. Every `standby_after`
/// in which it received anything, it hands the shard back: it settles what it
/// holds and ends, what it had received but not counted returning to the
/// head of the queue, and subscribes again behind whoever waits (a worker
/// that prefers the shard, back from a restart, takes over; with nobody
/// waiting it is active again at once).
async fn consume(ctx: &Context, cancel: &CancellationToken, sub: &Subscription, wait: bool) -> anyhow::Result<Ended> {
    let usage = &ctx.settings.usage;
    let (session, mut consumer) = if wait {
        let session = open_publisher(ctx, sub.role).await?;
        tokio::select! {
            _ = cancel.cancelled() => {
                session.close().await;
                return Ok(Ended::Stopped);
            }
            _ = tokio::time::sleep(usage.standby_after) => {}
        }
        let consumer = session.consume(&sub.queue, usage.prefetch).await.context("consume")?;
        (session, consumer)
    } else {
        open_consumer(ctx, sub.role, &sub.queue, usage.prefetch).await?
    };
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + usage.standby_after, usage.standby_after);
    let mut received_since_check = false;
    let mut handing_back = false;
    // Batches being settled, oldest first, and the signal the newest sends once settled.
    let mut settling: FuturesOrdered<Settling<'_>> = FuturesOrdered::new();
    let mut newest: Option<oneshot::Receiver<bool>> = None;
    let mut stopping = false;
    loop {
        let mut batch = Vec::new();
        let (mut events, mut bytes) = (0, 0);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut timed_out = false;
        // A batch closes on events, on bytes (bounding the memory one
        // transaction holds), or on time after its first message; it goes
        // to the database once fewer than IN_FLIGHT batches are, and fills
        // on until then.
        loop {
            let full = events >= usage.batch_size || bytes >= usage.batch_bytes;
            if settling.len() < IN_FLIGHT && (full || timed_out || stopping) {
                break;
            }
            tokio::select! {
                biased;
                Some(done) = settling.next(), if !settling.is_empty() => {
                    if !done? {
                        // Shutdown came first: what was received since returns to the queue.
                        stopping = true;
                        batch.clear();
                    }
                }
                next = consumer.next(), if !full && !stopping => {
                    received_since_check = true;
                    let message = Message::new(ctx, delivery(next)?);
                    events += message.events();
                    bytes += message.delivery.data.len();
                    batch.push(message);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + usage.batch_timeout);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() && !timed_out => {
                    timed_out = true;
                }
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                }
                _ = check.tick(), if sub.standby && !stopping => {
                    if std::mem::take(&mut received_since_check) {
                        stopping = true;
                        handing_back = true;
                    }
                }
            }
        }
        if !batch.is_empty() {
            let (settled, signal) = oneshot::channel();
            let after = newest.replace(signal);
            settling.push_back(Box::pin(settle_in_order(
                ctx,
                &session.publisher,
                batch,
                cancel,
                after,
                settled,
            )));
        }
        if stopping {
            while let Some(done) = settling.next().await {
                done?;
            }
            break;
        }
    }
    drop(settling);
    // Anything not acked returns to the queue when the channel closes.
    session.close().await;
    Ok(if handing_back && !cancel.is_cancelled() {
        Ended::HandedBack
    } else {
        Ended::Stopped
    })
}

/// [`settle`], then tells the next batch whether this one was acked.
async fn settle_in_order(
    ctx: &Context,
    publisher: &Publisher,
    batch: Vec<Message>,
    cancel: &CancellationToken,
    after: Option<oneshot::Receiver<bool>>,
    settled: oneshot::Sender<bool>,
) -> Result<bool, BrokerError> {
    let outcome = settle(ctx, publisher, batch, cancel, after).await;
    let _ = settled.send(matches!(outcome, Ok(true)));
    outcome
}

/// Where a candidate event came from: its message and its text in the body.
type Origin = (usize, std::ops::Range<usize>);

/// Counts, dead-letters and acks one batch; its transaction may run while
/// the batch before it is being settled, but nothing is acked, dead-lettered
/// or shown in the metrics before `after` says that batch was acked. `false`
/// if shutdown came first or the batch before was not acked (this batch
/// stays unacked and is redelivered).
async fn settle(
    ctx: &Context,
    publisher: &Publisher,
    batch: Vec<Message>,
    cancel: &CancellationToken,
    after: Option<oneshot::Receiver<bool>>,
) -> Result<bool, BrokerError> {
    let metrics = &ctx.metrics;
    let mut candidates = Vec::new();
    let mut origins: Vec<Origin> = Vec::new();
    let mut dead: Vec<(usize, Option<std::ops::Range<usize>>, Rejection)> = Vec::new();
    for (m, message) in batch.iter().enumerate() {
        match &message.content {
            Err(rejection) => dead.push((m, None, rejection.clone())),
            Ok((merchant, events)) => {
                for decoded in events {
                    match &decoded.event {
                        Ok(event) => {
                            candidates.push(Candidate {
                                merchant_id: merchant.clone(),
                                event: event.clone(),
                                received_at: message.received_at,
                            });
                            origins.push((m, decoded.span.clone()));
                        }
                        Err(rejection) => dead.push((m, Some(decoded.span.clone()), rejection.clone())),
                    }
                }
            }
        }
    }
    let outcome = if candidates.is_empty() {
        None
    } else {
        match count_with_retry(ctx, &candidates, cancel).await {
            Some(outcome) => Some(outcome),
            None => return Ok(false),
        }
    };
    if let Some(after) = after
        && !after.await.unwrap_or(false)
    {
        return Ok(false);
    }
    metrics
        .usage_events_received
        .inc_by((candidates.len() + dead.len()) as u64);
    metrics.usage_batch_size.observe(candidates.len() as f64);

    if let Some(outcome) = outcome {
        match outcome {
            Ok(report) => {
                for (i, rejection) in report.rejected {
                    let (m, span) = origins[i].clone();
                    dead.push((m, Some(span), rejection));
                }
                metrics.usage_events_counted.inc_by(report.counted as u64);
                metrics.usage_events_duplicate.inc_by(report.duplicates as u64);
                if report.announced {
                    ctx.outbox_wake.notify_one();
                }
                if report.progressive_due {
                    ctx.billing_wake.notify_one();
                }
            }
            // A fault that is not an outage: count message by message so
            // that only the message that cannot be counted is set aside.
            Err(rejection) if batch.len() > 1 => {
                tracing::warn!(error = %rejection, "batch failed; counting its messages one by one");
                return settle_one_by_one(ctx, publisher, batch, cancel).await;
            }
            Err(rejection) => dead.push((0, None, rejection)),
        }
    }

    // Dead letters leave in the order their events were sent.
    dead.sort_by_key(|(m, span, _)| (*m, span.as_ref().map_or(0, |s| s.start)));
    for (m, span, rejection) in &dead {
        let d = &batch[*m].delivery;
        let body = span.as_ref().map_or(d.data.as_slice(), |s| &d.data[s.clone()]);
        dead_letter(ctx, publisher, ROLE, d, body, rejection).await?;
    }
    if let Some(last) = batch.last() {
        last.delivery.acker.ack(BasicAckOptions { multiple: true }).await?;
    }
    Ok(true)
}

async fn settle_one_by_one(
    ctx: &Context,
    publisher: &Publisher,
    batch: Vec<Message>,
    cancel: &CancellationToken,
) -> Result<bool, BrokerError> {
    for message in batch {
        if !Box::pin(settle(ctx, publisher, vec![message], cancel, None)).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs the batch's transaction until it commits or is refused; holds on
/// through database outages. `None` if shutdown came first.
async fn count_with_retry(
    ctx: &Context,
    candidates: &[Candidate],
    cancel: &CancellationToken,
) -> Option<Result<Report, Rejection>> {
    let limits = Limits {
        future_tolerance: chrono::Duration::from_std(ctx.settings.usage.future_tolerance)
            .unwrap_or(chrono::Duration::minutes(5)),
    };
    hold_through_outages(ctx, ROLE, cancel, || async move {
        let started = Instant::now();
        let report = count(ctx, candidates, limits).await?;
        ctx.metrics
            .usage_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(report)
    })
    .await
}

async fn count(ctx: &Context, candidates: &[Candidate], limits: Limits) -> Result<Report, HandleError> {
    if !ctx.settings.faults.panic_on_merchant.is_empty() {
        candidates
            .iter()
            .for_each(|c| ctx.settings.faults.check(&c.merchant_id));
    }
    let mut tx = ctx
        .pool
        .begin()
        .await
        .map_err(|e| HandleError::Transient(format!("database unavailable: {e}")))?;
    let report = ingest(&mut tx, candidates, limits, ctx.clock.now()).await?;
    tx.commit().await?;
    Ok(report)
}
