//! The outbox relay: publishes written webhooks with confirms, in the order
//! they were written, then marks them. A crash between publish and mark
//! publishes again with the same `id`, which consumers dedupe on.

use std::sync::Arc;
use std::time::Instant;

use lapin::BasicProperties;
use lapin::types::ShortString;
use tokio_util::sync::CancellationToken;

use super::{open_publisher, supervise};
use crate::broker::{self, Publisher};
use crate::context::Context;
use crate::error::is_transient;
use crate::protocol::envelope::MERCHANT_HEADER;
use crate::store;

const ROLE: &str = "outbox";

/// Runs the relay until `cancel` fires, then publishes what is left.
pub(crate) async fn run(ctx: Arc<Context>, cancel: CancellationToken) {
    supervise(ROLE, ctx, cancel, session).await;
}

async fn session(ctx: Arc<Context>, cancel: CancellationToken) -> anyhow::Result<()> {
    let session = open_publisher(&ctx, ROLE).await?;
    let mut measured = Instant::now();
    measure_backlog(&ctx).await;
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = ctx.outbox_wake.notified() => {
                // Let the commits of a burst land, so they leave in one batch.
                tokio::time::sleep(COALESCE).await;
                false
            }
            _ = tokio::time::sleep(ctx.settings.outbox.poll_interval) => false,
        };
        drain(&ctx, &session.publisher).await?;
        if measured.elapsed() >= BACKLOG_EVERY {
            measure_backlog(&ctx).await;
            measured = Instant::now();
        }
        if stopping {
            break;
        }
    }
    session.close().await;
    Ok(())
}

/// Publishes batches until the outbox is empty. Database faults end the
/// round quietly (the next tick tries again); broker faults end the session.
pub(crate) async fn drain(ctx: &Context, publisher: &Publisher) -> anyhow::Result<()> {
    loop {
        match relay_batch(ctx, publisher).await {
            Ok(n) if n < ctx.settings.outbox.batch_size as usize => break,
            Ok(_) => continue,
            Err(RelayError::Database(err)) => {
                ctx.metrics
                    .transient_errors
                    .with_label_values(&[ROLE, "database"])
                    .inc();
                if !is_transient(&err) {
                    tracing::error!(error = %err, "outbox relay database error");
                }
                break;
            }
            Err(RelayError::Broker(err)) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Refreshes the backlog gauges; the query scans the unpublished rows, so it
/// runs once per `BACKLOG_EVERY`, not after every batch.
async fn measure_backlog(ctx: &Context) {
    if let Ok(mut conn) = ctx.pool.acquire().await
        && let Ok((count, age)) = store::outbox::backlog(&mut conn, ctx.clock.now()).await
    {
        ctx.metrics.outbox_backlog.set(count);
        ctx.metrics.outbox_oldest_age_seconds.set(age);
    }
}

const COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

const BACKLOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
}

/// One batch: lock, read in order, publish with confirms, mark, commit.
/// Returns how many rows were read.
async fn relay_batch(ctx: &Context, publisher: &Publisher) -> Result<usize, RelayError> {
    let mut tx = ctx.pool.begin().await?;
    if !store::outbox::try_lock_relay(&mut tx).await? {
        // Another process is relaying; it keeps the order.
        return Ok(0);
    }
    let mut rows = store::outbox::pending(&mut tx, ctx.settings.outbox.batch_size).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let messages = rows
        .iter_mut()
        .map(|row| {
            let props = broker::json_properties()
                .with_message_id(ShortString::from(row.id.as_str()))
                .with_headers(broker::headers([(MERCHANT_HEADER, row.merchant_id.as_str())]))
                .with_timestamp(ctx.clock.now().timestamp().max(0) as u64)
                .with_type(ShortString::from(row.event_name.as_str()));
            // The text as stored is the body; the row keeps the rest.
            let body = std::mem::take(&mut row.payload).into_bytes();
            (
                ctx.names.webhooks.clone(),
                row.event_name.clone(),
                body,
                props as BasicProperties,
            )
        })
        .collect();
    let confirmed = publisher.publish_all(messages).await?;
    let seqs: Vec<i64> = rows[..confirmed].iter().map(|r| r.seq).collect();
    store::outbox::mark_published(&mut tx, &seqs, ctx.clock.now()).await?;
    tx.commit().await?;
    ctx.metrics
        .outbox_publish_seconds
        .observe(started.elapsed().as_secs_f64());
    for row in &rows[..confirmed] {
        ctx.metrics
            .webhooks_published
            .with_label_values(&[row.event_name.as_str()])
            .inc();
    }
    if confirmed < rows.len() {
        tracing::warn!(
            refused = rows.len() - confirmed,
            "broker refused webhooks; they stay in the outbox"
        );
        return Ok(0);
    }
    Ok(rows.len())
}
