//! The provisioning role: receive a command, decide, commit, answer, ack.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

use super::{mark_up, supervise};
use crate::app::Context;
use crate::backoff_policy::Backoff;
use crate::broker::{BrokerError, Publisher, Session};
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::{
    documents, envelope,
    provisioning::{self, Command},
};
use crate::store;

const ROLE: &str = "provisioning";

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
        .consume(&ctx.names.provisioning, ctx.settings.amqp.provisioning_prefetch)
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

/// What handling one message came to.
struct Handled {
    command: Option<Command>,
    result: Result<Answer, HandleError>,
}

/// A successful answer and whether webhooks were written.
struct Answer {
    response: serde_json::Value,
    announced: bool,
}

async fn handle(ctx: &Context, publisher: &Publisher, delivery: &Delivery) -> Handled {
    let env = match envelope::open(
        &delivery.properties,
        &delivery.data,
        ctx.settings.amqp.max_message_bytes,
        &ctx.settings.auth,
    ) {
        Ok(env) => env,
        Err(r) => {
            return Handled {
                command: None,
                result: Err(r.into()),
            };
        }
    };
    let command = match provisioning::parse(&delivery.data) {
        Ok(c) => c,
        Err(r) => {
            return Handled {
                command: None,
                result: Err(r.into()),
            };
        }
    };
    let result = match &command {
        Command::RunBilling(r) => run_billing(ctx, publisher, &env, r.limit).await,
        _ => execute(ctx, &env, command.clone()).await,
    };
    Handled {
        command: Some(command),
        result,
    }
}

/// `run_billing`: one scheduler pass now, answered with what it did.
async fn run_billing(
    ctx: &Context,
    publisher: &Publisher,
    env: &envelope::Envelope,
    limit: Option<u32>,
) -> Result<Answer, HandleError> {
    let limit = limit.map_or(ctx.settings.scheduler.batch_size, i64::from).max(1);
    let report = crate::billing::run::run_once(ctx, publisher, limit)
        .await
        .map_err(|e| match e {
            crate::billing::run::RunError::Handle(h) => h,
            crate::billing::run::RunError::Broker(b) => HandleError::Transient(b.to_string()),
        })?;
    let response = documents::success(&env.merchant_id, serde_json::json!({ "run": report }));
    Ok(Answer {
        response,
        announced: true,
    })
}

async fn execute(ctx: &Context, env: &envelope::Envelope, command: Command) -> Result<Answer, HandleError> {
    let name = command.name();
    // No connection is an outage whatever the error says: never the message's fault.
    let mut tx = ctx
        .pool
        .begin()
        .await
        .map_err(|e| HandleError::Transient(format!("database unavailable: {e}")))?;
    // Queries are answered fresh; only changes replay their first answer.
    let replayable = env.message_id.as_ref().filter(|_| !command_is_query(name));
    if let Some(message_id) = replayable
        && let Some(response) = store::idempotency::find(&mut tx, &env.merchant_id, message_id).await?
    {
        return Ok(Answer {
            response,
            announced: false,
        });
    }
    let notice = chrono::Duration::from_std(ctx.settings.scheduler.pre_debit_notice).unwrap_or(chrono::Duration::MAX);
    let outcome = crate::provisioning::execute(&mut tx, &env.merchant_id, ctx.clock.now(), notice, command).await?;
    if let Some(message_id) = replayable
        && !store::idempotency::save(
            &mut tx,
            &env.merchant_id,
            message_id,
            name,
            &outcome.response,
            ctx.clock.now(),
        )
        .await?
    {
        // Another worker finished the same message first: its answer stands.
        return Err(HandleError::Transient(format!(
            "message {message_id} was processed concurrently"
        )));
    }
    tx.commit().await?;
    Ok(Answer {
        response: outcome.response,
        announced: outcome.announced,
    })
}

fn command_is_query(name: &str) -> bool {
    matches!(name, "get" | "list")
}

/// Handles one delivery to the end: retried while the database is down,
/// then answered and/or dead-lettered, then acked. Broker faults bubble up
/// (the message stays unacked and comes back).
async fn process(
    ctx: &Context,
    publisher: &Publisher,
    delivery: Delivery,
    cancel: &CancellationToken,
) -> Result<(), BrokerError> {
    ctx.metrics.messages_received.with_label_values(&[ROLE]).inc();
    let started = Instant::now();
    let mut backoff = Backoff::new(
        ctx.settings.amqp.reconnect_initial,
        2.0,
        ctx.settings.amqp.reconnect_max,
        0.2,
    );
    let (command, result) = loop {
        let handled = handle(ctx, publisher, &delivery).await;
        match handled.result {
            Ok(answer) => break (handled.command, Ok(answer)),
            Err(HandleError::Rejected(rejection)) => break (handled.command, Err(rejection)),
            Err(HandleError::Transient(reason)) => {
                ctx.metrics
                    .transient_errors
                    .with_label_values(&[ROLE, "database"])
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(reason = %reason, retry_in = ?delay, "transient fault; holding the message");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    // Left unacked: the broker gives it to the next consumer.
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
        }
    };
    let command_name = command.as_ref().map_or("unparsed", Command::name);
    let reply = envelope::reply_address(&delivery.properties);
    match result {
        Ok(answer) => {
            if answer.announced {
                ctx.outbox_wake.notify_one();
            }
            if let Some((to, correlation)) = &reply {
                publisher.reply(to, correlation.as_deref(), &answer.response).await?;
            }
            ctx.metrics.commands.with_label_values(&[command_name, "ok"]).inc();
        }
        Err(rejection) => {
            let answer_only = reply.is_some() && command_is_query(command_name) && is_lookup_miss(&rejection);
            if !answer_only {
                dead_letter(ctx, publisher, &delivery, &rejection).await?;
            }
            if let Some((to, correlation)) = &reply {
                publisher
                    .reply(to, correlation.as_deref(), &documents::failure(&rejection))
                    .await?;
            }
            tracing::info!(command = command_name, code = %rejection.code, message = %rejection.message, "command rejected");
            ctx.metrics
                .commands
                .with_label_values(&[command_name, "rejected"])
                .inc();
        }
    }
    ctx.metrics
        .command_seconds
        .with_label_values(&[command_name])
        .observe(started.elapsed().as_secs_f64());
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// A query that finds nothing is an answer, not a broken message.
fn is_lookup_miss(rejection: &Rejection) -> bool {
    matches!(
        rejection.code,
        ErrorCode::ExecutionNotFound | ErrorCode::CustomerNotFound
    )
}

async fn dead_letter(
    ctx: &Context,
    publisher: &Publisher,
    delivery: &Delivery,
    rejection: &Rejection,
) -> Result<(), BrokerError> {
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
            rejection,
        )
        .await
}
