//! The worker loops. Each role runs in a supervisor that (re)connects with
//! backoff, so a broker restart never stops the process.

pub(crate) mod billing_pass;
pub(crate) mod outbox_relay;
pub(crate) mod payments;
pub(crate) mod provisioning;
pub(crate) mod scheduler;
pub(crate) mod usage;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::Consumer;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

use crate::backoff_policy::Backoff;
use crate::broker::Session;
use crate::context::Context;
use crate::error::{ErrorCode, HandleError, MAX_CONFLICT_RETRIES, Rejection};

/// A session that ran this long before failing was healthy: start the
/// reconnect delays from the beginning.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Runs `session` until it returns `Ok` (a clean stop) or `cancel` fires,
/// reconnecting with backoff after each failure.
pub(crate) async fn supervise<F, Fut>(role: &'static str, ctx: Arc<Context>, cancel: CancellationToken, session: F)
where
    F: Fn(Arc<Context>, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let amqp = &ctx.settings.amqp;
    let mut backoff = Backoff::reconnect(amqp);
    ctx.health.register(role);
    while !cancel.is_cancelled() {
        let started = Instant::now();
        ctx.metrics.broker_connects.with_label_values(&[role]).inc();
        let result = match crate::error::catch_panic(session(ctx.clone(), cancel.clone())).await {
            Ok(result) => result,
            Err(message) => {
                panicked(&ctx, role, "running the role's session", &message);
                Err(anyhow::anyhow!("panicked: {message}"))
            }
        };
        ctx.health.set(role, false);
        ctx.metrics.role_up.with_label_values(&[role]).set(0);
        match result {
            Ok(()) => break,
            Err(err) => {
                if started.elapsed() > HEALTHY_SESSION {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(role, error = %format!("{err:#}"), retry_in = ?delay, "role stopped; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(role, "role stopped");
}

/// Runs `attempt` until it is something other than a transient fault,
/// waiting with backoff between tries. A conflict with a concurrent worker
/// is tried again at most [`MAX_CONFLICT_RETRIES`] times, then refused. A
/// panic inside `attempt` is caught, counted and refused as
/// `INTERNAL_ERROR`: one message never stops its role. `None` if `cancel`
/// fired first: the work stays unacked and the broker hands it out again.
pub(crate) async fn hold_through_outages<T, F, Fut>(
    ctx: &Context,
    role: &'static str,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Option<Result<T, Rejection>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HandleError>>,
{
    let amqp = &ctx.settings.amqp;
    let mut backoff = Backoff::reconnect(amqp);
    let mut conflicts = 0;
    loop {
        let (kind, reason) = match catch_panic(ctx, role, attempt()).await {
            Ok(Ok(value)) => return Some(Ok(value)),
            Ok(Err(HandleError::Rejected(rejection))) => return Some(Err(rejection)),
            Err(rejection) => return Some(Err(rejection)),
            Ok(Err(HandleError::Conflict(reason))) => {
                conflicts += 1;
                if conflicts > MAX_CONFLICT_RETRIES {
                    return Some(Err(Rejection::new(
                        ErrorCode::InternalError,
                        format!(
                            "the change kept conflicting with concurrent work after {MAX_CONFLICT_RETRIES} retries"
                        ),
                    )));
                }
                ("conflict", reason)
            }
            Ok(Err(HandleError::Transient(reason))) => ("database", reason),
        };
        ctx.metrics.transient_errors.with_label_values(&[role, kind]).inc();
        let delay = if kind == "conflict" {
            Duration::from_millis(10 * u64::from(conflicts))
        } else {
            backoff.next_delay()
        };
        tracing::warn!(role, reason = %reason, retry_in = ?delay, "{kind}; holding the work");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return None,
        }
    }
}

/// Counts (`billing_role_panics_total{role}`) and logs a panic that `role`
/// caught while `doing` something; the role goes on.
pub(crate) fn panicked(ctx: &Context, role: &'static str, doing: &str, message: &str) {
    ctx.metrics.role_panics.with_label_values(&[role]).inc();
    tracing::error!(role, panic = %message, "a bug panicked while {doing}; the role goes on");
}

/// Runs `work`, turning a panic inside it into an `INTERNAL_ERROR`
/// rejection: counted under `role`, logged with its message.
pub(crate) async fn catch_panic<T>(
    ctx: &Context,
    role: &'static str,
    work: impl Future<Output = T>,
) -> Result<T, Rejection> {
    match crate::error::catch_panic(work).await {
        Ok(value) => Ok(value),
        Err(message) => {
            panicked(ctx, role, "handling a message", &message);
            Err(Rejection::new(
                ErrorCode::InternalError,
                format!(
                    "the worker failed on this message ({}); it was set aside",
                    crate::error::short(&message)
                ),
            ))
        }
    }
}

/// Opens a role's broker session and starts consuming `queue`; the role is
/// up from here.
pub(crate) async fn open_consumer(
    ctx: &Context,
    role: &'static str,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Session, Consumer)> {
    let session = Session::open(&ctx.settings.amqp, ctx.settings.usage.shards, role)
        .await
        .context("open broker session")?;
    let consumer = session.consume(queue, prefetch).await.context("consume")?;
    mark_up(ctx, role);
    Ok((session, consumer))
}

/// Opens a broker session for a role that only publishes, and marks the
/// role up.
pub(crate) async fn open_publisher(ctx: &Context, role: &'static str) -> anyhow::Result<Session> {
    let session = Session::open(&ctx.settings.amqp, ctx.settings.usage.shards, role)
        .await
        .context("open broker session")?;
    mark_up(ctx, role);
    Ok(session)
}

/// The next delivery, `None` once `cancel` fires; an error when the
/// consumer fails or the broker cancels it (the supervisor reconnects).
pub(crate) async fn next_delivery(
    consumer: &mut Consumer,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Delivery>> {
    tokio::select! {
        _ = cancel.cancelled() => Ok(None),
        next = consumer.next() => delivery(next).map(Some),
    }
}

/// A delivery from a consumer's stream item.
pub(crate) fn delivery(next: Option<Result<Delivery, lapin::Error>>) -> anyhow::Result<Delivery> {
    match next {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(err)) => Err(err).context("consumer failed"),
        None => anyhow::bail!("consumer was cancelled by the broker"),
    }
}

/// Dead-letters `body` (the whole delivery, or one event of it) with the
/// delivery's properties and routing, and counts it under `role`.
pub(crate) async fn dead_letter(
    ctx: &Context,
    publisher: &crate::broker::Publisher,
    role: &'static str,
    delivery: &Delivery,
    body: &[u8],
    rejection: &Rejection,
) -> Result<(), crate::broker::BrokerError> {
    ctx.metrics
        .dead_letters
        .with_label_values(&[role, rejection.code.as_str()])
        .inc();
    publisher
        .dead_letter(
            &ctx.names,
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            &delivery.properties,
            body,
            rejection,
        )
        .await
}

/// Marks a role up once it consumes.
pub(crate) fn mark_up(ctx: &Context, role: &'static str) {
    ctx.health.set(role, true);
    ctx.metrics.role_up.with_label_values(&[role]).set(1);
}
