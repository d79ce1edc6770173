//! The scheduler role: a billing pass every `scheduler.tick` (`run_billing`
//! runs one at once, in the provisioning role). Passes of several processes never collide: every step
//! claims its rows with `FOR UPDATE SKIP LOCKED`.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::billing_pass::{RunError, run_once};
use super::{open_publisher, supervise};
use crate::context::Context;
use crate::error::HandleError;

const ROLE: &str = "scheduler";

/// Runs the role until `cancel` fires.
pub(crate) async fn run(ctx: Arc<Context>, cancel: CancellationToken) {
    supervise(ROLE, ctx, cancel, session).await;
}

async fn session(ctx: Arc<Context>, cancel: CancellationToken) -> anyhow::Result<()> {
    let session = open_publisher(&ctx, ROLE).await?;
    loop {
        let started = std::time::Instant::now();
        let pass = crate::error::catch_panic(run_once(
            &ctx,
            &session.publisher,
            ctx.settings.scheduler.batch_size,
            None,
        ))
        .await
        .unwrap_or_else(|panic| {
            super::panicked(&ctx, ROLE, "running a billing pass", &panic);
            Err(RunError::Handle(HandleError::Transient(format!(
                "the pass panicked: {panic}"
            ))))
        });
        ctx.metrics
            .scheduler_pass_seconds
            .observe(started.elapsed().as_secs_f64());
        match pass {
            Ok(report) => tracing::debug!(?report, "billing pass"),
            Err(RunError::Broker(err)) => return Err(err).context("publish debit requests"),
            Err(RunError::Handle(HandleError::Transient(reason) | HandleError::Conflict(reason))) => {
                ctx.metrics
                    .transient_errors
                    .with_label_values(&[ROLE, "database"])
                    .inc();
                tracing::warn!(reason = %reason, "billing pass interrupted; the next tick goes on");
            }
            Err(RunError::Handle(HandleError::Rejected(rejection))) => {
                tracing::error!(error = %rejection, "billing pass failed; the next tick tries again");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(ctx.settings.scheduler.tick) => {}
            _ = ctx.billing_wake.notified() => {}
        }
    }
    session.close().await;
    Ok(())
}
