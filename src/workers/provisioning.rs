//! The provisioning role: receive a command, decide, commit, answer, ack.

use std::sync::Arc;
use std::time::Instant;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

use super::{dead_letter, hold_through_outages, next_delivery, open_consumer, supervise};
use crate::broker::{BrokerError, Publisher};
use crate::context::Context;
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::{
    documents, envelope,
    provisioning::{self, Command},
};
use crate::store;

const ROLE: &str = "provisioning";

/// Runs the role until `cancel` fires; reconnects on broker faults.
pub(crate) async fn run(ctx: Arc<Context>, cancel: CancellationToken) {
    supervise(ROLE, ctx, cancel, session).await;
}

async fn session(ctx: Arc<Context>, cancel: CancellationToken) -> anyhow::Result<()> {
    let prefetch = ctx.settings.amqp.provisioning_prefetch;
    let (session, mut consumer) = open_consumer(&ctx, ROLE, &ctx.names.provisioning, prefetch).await?;
    while let Some(delivery) = next_delivery(&mut consumer, &cancel).await? {
        process(&ctx, &session.publisher, delivery, &cancel).await?;
    }
    // Unacked messages go back to the queue when the channel closes.
    session.close().await;
    Ok(())
}

/// A successful answer and whether webhooks were written.
struct Answer {
    response: serde_json::Value,
    announced: bool,
}

/// The tenant and the command, or why the message is unreadable.
fn parse(ctx: &Context, delivery: &Delivery) -> Result<(envelope::Envelope, Command), Rejection> {
    let settings = &ctx.settings;
    let env = envelope::open(
        &delivery.properties,
        &delivery.data,
        settings.amqp.max_message_bytes,
        &settings.auth,
        Some(&settings.amqp.reply_prefix),
    )?;
    let command = provisioning::parse(&delivery.data)?;
    if env.message_id.is_none()
        && let Some(why) = needs_message_id(&command)
    {
        return Err(Rejection::field(
            "message_id",
            format_args!("is required for {why}: it keys the command, so a redelivery never acts twice"),
        ));
    }
    Ok((env, command))
}

/// Commands that would act twice if delivered twice, unless a `message_id`
/// (or their own natural key) identifies them.
fn needs_message_id(command: &Command) -> Option<&'static str> {
    match command {
        Command::Present(_) => Some("present"),
        Command::Create(c) if c.merchant_ref_id.is_none() => Some("create without merchant_ref_id"),
        Command::AddBillingPlan(plan, _) if plan.reference_id().is_none() => {
            Some("add_billing_plan without billing_plan.reference_id")
        }
        _ => None,
    }
}

async fn handle(
    ctx: &Context,
    publisher: &Publisher,
    env: &envelope::Envelope,
    command: &Command,
) -> Result<Answer, HandleError> {
    ctx.settings.faults.check(&env.merchant_id);
    match command {
        Command::RunBilling(r) => run_billing(ctx, publisher, env, r.limit).await,
        _ => execute(ctx, env, command.clone()).await,
    }
}

/// `run_billing`: one scheduler pass now, answered with what it did.
async fn run_billing(
    ctx: &Context,
    publisher: &Publisher,
    env: &envelope::Envelope,
    limit: Option<u32>,
) -> Result<Answer, HandleError> {
    let limit = limit
        .map_or(ctx.settings.scheduler.batch_size, i64::from)
        .clamp(1, 1000);
    let report = super::billing_pass::run_once(ctx, publisher, limit, Some(&env.merchant_id))
        .await
        .map_err(|e| match e {
            super::billing_pass::RunError::Handle(h) => h,
            super::billing_pass::RunError::Broker(b) => HandleError::Transient(b.to_string()),
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
    let replayable = env.message_id.as_ref().filter(|_| !command.is_query());
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
    let parsed = crate::error::catch_panic_now(|| parse(ctx, &delivery)).unwrap_or_else(|message| {
        super::panicked(ctx, ROLE, "reading a command", &message);
        Err(Rejection::new(
            ErrorCode::InternalError,
            "the worker failed to read this message; it was set aside",
        ))
    });
    let (command, result) = match parsed {
        Err(rejection) => (None, Err(rejection)),
        Ok((env, command)) => {
            match hold_through_outages(ctx, ROLE, cancel, || handle(ctx, publisher, &env, &command)).await {
                Some(result) => (Some(command), result),
                // Left unacked: the broker gives it to the next consumer.
                None => return Ok(()),
            }
        }
    };
    let command_name = command.as_ref().map_or("unparsed", Command::name);
    let reply = envelope::reply_address(&delivery.properties, &ctx.settings.amqp.reply_prefix);
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
            let answer_only =
                reply.is_some() && command.as_ref().is_some_and(Command::is_query) && is_lookup_miss(&rejection);
            if !answer_only {
                dead_letter(ctx, publisher, ROLE, &delivery, &delivery.data, &rejection).await?;
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
        ErrorCode::ExecutionNotFound | ErrorCode::CustomerNotFound | ErrorCode::BillNotFound
    )
}
