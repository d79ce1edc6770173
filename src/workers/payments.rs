//! The payment-results role: take the gateway's debit results that are
//! waiting (up to a batch), settle their bills in one transaction, then ack
//! them at once after the commit. Repeats change nothing twice; late
//! successes are always recorded; a result that does not come from the
//! bill's merchant (`x-merchantid`, and the broker user when authentication
//! is on) is dead-lettered `FORBIDDEN`.

use std::sync::Arc;
use std::time::Instant;

use chrono::Duration;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

use super::{dead_letter, delivery, hold_through_outages, next_delivery, open_consumer, supervise};
use crate::billing::debits::{DebitResult, ResultOutcome, Sender, apply_results};
use crate::broker::{BrokerError, Publisher};
use crate::context::Context;
use crate::domain::bill::BillStatus;
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::de::decode;
use crate::protocol::envelope;

const ROLE: &str = "payments";

/// Most results settled in one transaction.
const RESULT_BATCH: usize = 200;

/// Runs the role until `cancel` fires; reconnects on broker faults.
pub(crate) async fn run(ctx: Arc<Context>, cancel: CancellationToken) {
    supervise(ROLE, ctx, cancel, session).await;
}

async fn session(ctx: Arc<Context>, cancel: CancellationToken) -> anyhow::Result<()> {
    let prefetch = ctx.settings.amqp.provisioning_prefetch.max(RESULT_BATCH as u16);
    let (session, mut consumer) = open_consumer(&ctx, ROLE, &ctx.names.payment_results, prefetch).await?;
    while let Some(first) = next_delivery(&mut consumer, &cancel).await? {
        // The results already waiting join the first: one commit for all.
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + ctx.settings.usage.batch_timeout;
        while batch.len() < RESULT_BATCH {
            tokio::select! {
                biased;
                next = consumer.next() => batch.push(delivery(next)?),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !settle(&ctx, &session.publisher, &batch, &cancel).await? {
            break;
        }
    }
    // Unacked messages go back to the queue when the channel closes.
    session.close().await;
    Ok(())
}

/// A readable result and who sent it.
struct Received {
    result: DebitResult,
    /// The merchant the envelope names, or why it names none; checked
    /// against the bill's merchant once the request is found.
    sender: Result<String, Rejection>,
}

fn parse(ctx: &Context, delivery: &Delivery) -> Result<Received, Rejection> {
    let max = ctx.settings.amqp.max_message_bytes;
    if delivery.data.len() > max {
        return Err(Rejection::new(
            ErrorCode::MessageTooLarge,
            format!("body is {} bytes, more than the limit of {max}", delivery.data.len()),
        ));
    }
    let result = decode(&delivery.data)?;
    let sender = match envelope::open(&delivery.properties, &delivery.data, max, &ctx.settings.auth, None) {
        Ok(env) => Ok(env.merchant_id),
        Err(why) if matches!(why.code, ErrorCode::MissingMerchant | ErrorCode::Forbidden) => Err(why),
        Err(other) => return Err(other),
    };
    Ok(Received { result, sender })
}

/// Settles a batch: the readable results in one transaction (one by one if
/// that transaction is refused, so only the result at fault is set aside),
/// dead letters for the rest, then one ack for all. `false` if shutdown
/// came first (the batch stays unacked and comes back).
async fn settle(
    ctx: &Context,
    publisher: &Publisher,
    batch: &[Delivery],
    cancel: &CancellationToken,
) -> Result<bool, BrokerError> {
    ctx.metrics
        .messages_received
        .with_label_values(&[ROLE])
        .inc_by(batch.len() as u64);
    let parsed: Vec<Result<Received, Rejection>> = batch.iter().map(|d| parse(ctx, d)).collect();
    let readable: Vec<&Received> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut refused: Vec<(usize, Rejection)> = parsed
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().err().map(|r| (i, r.clone())))
        .collect();
    if !readable.is_empty() {
        match hold_through_outages(ctx, ROLE, cancel, || apply(ctx, &readable)).await {
            None => return Ok(false),
            Some(Ok(applied)) => record(ctx, &applied),
            Some(Err(_)) => {
                // Something in the batch cannot be applied: find it.
                for (i, p) in parsed.iter().enumerate() {
                    let Ok(result) = p else { continue };
                    let one = [result];
                    match hold_through_outages(ctx, ROLE, cancel, || apply(ctx, &one)).await {
                        None => return Ok(false),
                        Some(Ok(applied)) => record(ctx, &applied),
                        Some(Err(rejection)) => refused.push((i, rejection)),
                    }
                }
            }
        }
        ctx.outbox_wake.notify_one();
    }
    refused.sort_by_key(|(i, _)| *i);
    for (i, rejection) in &refused {
        let d = &batch[*i];
        dead_letter(ctx, publisher, ROLE, d, &d.data, rejection).await?;
    }
    if let Some(last) = batch.last() {
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
    }
    Ok(true)
}

/// Applies results in one transaction, in the order they came.
async fn apply(ctx: &Context, results: &[&Received]) -> Result<Vec<(ResultOutcome, Option<Duration>)>, HandleError> {
    let started = Instant::now();
    let mut tx = ctx
        .pool
        .begin()
        .await
        .map_err(|e| HandleError::Transient(format!("database unavailable: {e}")))?;
    let batch: Vec<(&DebitResult, Sender<'_>)> = results
        .iter()
        .map(|received| (&received.result, received.sender.as_deref()))
        .collect();
    let applied = apply_results(&mut tx, &batch, &ctx.settings.retry, ctx.clock.now()).await?;
    tx.commit().await?;
    ctx.metrics
        .payment_result_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(applied)
}

fn record(ctx: &Context, applied: &[(ResultOutcome, Option<Duration>)]) {
    for (outcome, roundtrip) in applied {
        ctx.metrics.debit_attempts.with_label_values(&[outcome.as_str()]).inc();
        match outcome {
            ResultOutcome::Paid => ctx.metrics.bills_settled.with_label_values(&["paid"]).inc(),
            ResultOutcome::PaidLate => ctx.metrics.bills_settled.with_label_values(&["paid_late"]).inc(),
            ResultOutcome::DoubleCharge => ctx.metrics.double_charges.inc(),
            ResultOutcome::Failed(status) if *status != BillStatus::RetryScheduled => ctx
                .metrics
                .bills_settled
                .with_label_values(&[status.as_str().to_ascii_lowercase().as_str()])
                .inc(),
            _ => {}
        }
        if let Some(rt) = roundtrip {
            ctx.metrics
                .debit_roundtrip_seconds
                .observe(rt.num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
}
