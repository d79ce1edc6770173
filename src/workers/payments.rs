//! The payment-results role: take a gateway's debit result, settle the bill
//! in one transaction, ack after the commit. Repeats and late results change
//! nothing twice.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

use super::{hold_through_outages, next_delivery, open_consumer, supervise};
use crate::app::Context;
use crate::billing::debits::{DebitResult, apply_result};
use crate::broker::{BrokerError, Publisher};
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::de::decode;

const ROLE: &str = "payments";

/// Runs the role until `cancel` fires; reconnects on broker faults.
pub async fn run(ctx: Arc<Context>, cancel: CancellationToken) {
    let session_ctx = ctx.clone();
    supervise(ROLE, ctx, cancel.clone(), move || {
        session(session_ctx.clone(), cancel.clone())
    })
    .await;
}

async fn session(ctx: Arc<Context>, cancel: CancellationToken) -> anyhow::Result<()> {
    let prefetch = ctx.settings.amqp.provisioning_prefetch;
    let (session, mut consumer) = open_consumer(&ctx, ROLE, &ctx.names.payment_results, prefetch).await?;
    while let Some(delivery) = next_delivery(&mut consumer, &cancel).await? {
        process(&ctx, &session.publisher, delivery, &cancel).await?;
    }
    // Unacked messages go back to the queue when the channel closes.
    session.close().await;
    Ok(())
}

fn parse(ctx: &Context, delivery: &Delivery) -> Result<DebitResult, Rejection> {
    let max = ctx.settings.amqp.max_message_bytes;
    if delivery.data.len() > max {
        return Err(Rejection::new(
            ErrorCode::MessageTooLarge,
            format!("body is {} bytes, more than the limit of {max}", delivery.data.len()),
        ));
    }
    decode(&delivery.data)
}

async fn process(
    ctx: &Context,
    publisher: &Publisher,
    delivery: Delivery,
    cancel: &CancellationToken,
) -> Result<(), BrokerError> {
    ctx.metrics.messages_received.with_label_values(&[ROLE]).inc();
    let outcome = match parse(ctx, &delivery) {
        Err(rejection) => Err(rejection),
        Ok(result) => match hold_through_outages(ctx, ROLE, cancel, || apply(ctx, &result)).await {
            Some(outcome) => outcome,
            None => return Ok(()),
        },
    };
    match outcome {
        Ok(label) => {
            ctx.metrics.debit_attempts.with_label_values(&[label]).inc();
            ctx.outbox_wake.notify_one();
        }
        Err(rejection) => {
            ctx.metrics
                .dead_letters
                .with_label_values(&[ROLE, rejection.code.as_str()])
                .inc();
            publisher
                .dead_letter(
                    &ctx.names,
                    delivery.exchange.as_str(),
                    delivery.routing_key.as_str(),
                    &delivery.properties,
                    &delivery.data,
                    &rejection,
                )
                .await?;
        }
    }
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

async fn apply(ctx: &Context, result: &DebitResult) -> Result<&'static str, HandleError> {
    use crate::billing::debits::ResultOutcome;
    let started = std::time::Instant::now();
    let mut tx = ctx
        .pool
        .begin()
        .await
        .map_err(|e| HandleError::Transient(format!("database unavailable: {e}")))?;
    let (outcome, roundtrip) = apply_result(&mut tx, result, &ctx.settings.retry, ctx.clock.now()).await?;
    tx.commit().await?;
    ctx.metrics
        .payment_result_seconds
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        ResultOutcome::Paid => ctx.metrics.bills_settled.with_label_values(&["paid"]).inc(),
        ResultOutcome::Failed(status) if status != "RETRY_SCHEDULED" => ctx
            .metrics
            .bills_settled
            .with_label_values(&[status.to_ascii_lowercase().as_str()])
            .inc(),
        _ => {}
    }
    if let Some(rt) = roundtrip {
        ctx.metrics
            .debit_roundtrip_seconds
            .observe(rt.num_milliseconds().max(0) as f64 / 1000.0);
    }
    Ok(outcome.as_str())
}
