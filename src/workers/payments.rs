//! The payment-results role: take a gateway's debit result, settle the bill
//! in one transaction, ack after the commit. Repeats and late results change
//! nothing twice.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

use super::{mark_up, supervise};
use crate::app::Context;
use crate::backoff_policy::Backoff;
use crate::billing::debits::{DebitResult, apply_result};
use crate::broker::{BrokerError, Publisher, Session};
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
    let session = Session::open(&ctx.settings.amqp, ROLE)
        .await
        .context("open broker session")?;
    let mut consumer = session
        .consume(&ctx.names.payment_results, ctx.settings.amqp.provisioning_prefetch)
        .await
        .context("consume")?;
    mark_up(&ctx, ROLE);
    loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => return Err(err).context("consumer failed"),
                None => anyhow::bail!("consumer was cancelled by the broker"),
            },
        };
        process(&ctx, &session.publisher, delivery, &cancel).await?;
    }
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
    let amqp = &ctx.settings.amqp;
    let mut backoff = Backoff::new(amqp.reconnect_initial, 2.0, amqp.reconnect_max, 0.2);
    let outcome = loop {
        let result = match parse(ctx, &delivery) {
            Ok(result) => apply(ctx, &result).await,
            Err(rejection) => Err(rejection.into()),
        };
        match result {
            Err(HandleError::Transient(reason)) => {
                ctx.metrics
                    .transient_errors
                    .with_label_values(&[ROLE, "database"])
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(reason = %reason, retry_in = ?delay, "transient fault; holding the result");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
            Err(HandleError::Rejected(rejection)) => break Err(rejection),
            Ok(applied) => break Ok(applied),
        }
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
