//! One pass of the scheduler: issue bills for closed periods, send due
//! notices, recover expired leases, and request due debits. Every step
//! claims rows with `FOR UPDATE SKIP LOCKED`, so any number of processes may
//! run passes side by side and each attempt happens once.

use chrono::{DateTime, Duration, Utc};
use lapin::types::ShortString;
use serde::Serialize;

use crate::billing::debits::{request_body, time_out};
use crate::billing::issue::{BillBatch, PlanCache, bill_due_execution, bill_progressive};
use crate::broker::{self, BrokerError, Publisher};
use crate::context::Context;
use crate::domain::bill::BillStatus;
use crate::domain::webhook::{EventName, Webhook};
use crate::error::{ErrorCode, HandleError, Rejection, catch_panic, short};
use crate::protocol::envelope::MERCHANT_HEADER;
use crate::store;
use crate::store::bills::BillRow;

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct RunReport {
    pub credit_expired: usize,
    pub bills_issued: usize,
    pub interim_bills: usize,
    pub notices_sent: usize,
    pub debits_requested: usize,
    pub debits_timed_out: usize,
    pub event_bodies_pruned: usize,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Handle(#[from] HandleError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<sqlx::Error> for RunError {
    fn from(err: sqlx::Error) -> Self {
        RunError::Handle(err.into())
    }
}

fn duration(d: std::time::Duration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

/// Runs one pass over at most `limit` rows per step, over every merchant's
/// due work or (`run_billing`) over one merchant's.
pub(crate) async fn run_once(
    ctx: &Context,
    publisher: &Publisher,
    limit: i64,
    merchant: Option<&str>,
) -> Result<RunReport, RunError> {
    let mut report = RunReport::default();
    let now = ctx.clock.now();
    // Credit that expired by now pays no bill of this pass.
    report.credit_expired = expire_credit(ctx, now, limit, merchant).await?;
    report.bills_issued = issue_due(ctx, now, limit, merchant).await?;
    report.interim_bills = issue_interim(ctx, now, limit, merchant).await?;
    report.notices_sent = send_notices(ctx, now, limit, merchant).await?;
    report.debits_timed_out = recover(ctx, publisher, now, limit, merchant).await?;
    report.debits_requested = request_due(ctx, publisher, now, limit, merchant).await?;
    report.event_bodies_pruned = prune_usage(ctx, now, limit, merchant).await?;
    if let Ok(mut conn) = ctx.pool.acquire().await
        && let Ok(age) = store::bills::oldest_due_age(&mut conn, ctx.clock.now()).await
    {
        ctx.metrics.oldest_due_bill_age_seconds.set(age);
    }
    if report.credit_expired
        + report.bills_issued
        + report.interim_bills
        + report.notices_sent
        + report.debits_timed_out
        > 0
    {
        ctx.outbox_wake.notify_one();
    }
    Ok(report)
}

/// Most rounds of catch-up in one pass; what is left waits for the next tick.
const MAX_ROUNDS: usize = 8;

/// Closes due periods, in rounds: each round takes up to ten transactions'
/// worth of due executions in merchant-fair order (see
/// [`store::executions::due_for_billing`]), each execution catching up a
/// bounded number of periods, so a merchant with a huge backlog never
/// starves another.
async fn issue_due(ctx: &Context, now: DateTime<Utc>, limit: i64, merchant: Option<&str>) -> Result<usize, RunError> {
    let notice = duration(ctx.settings.scheduler.pre_debit_notice);
    let chunk = usize::try_from(limit).unwrap_or(1).max(1);
    let mut issued = 0;
    for _ in 0..MAX_ROUNDS {
        let ids = {
            let mut conn = ctx.pool.acquire().await?;
            store::executions::due_for_billing(&mut conn, now, merchant, limit.saturating_mul(10)).await?
        };
        let mut progress = false;
        for ids in ids.chunks(chunk) {
            let (bills, locked) = issue_chunk(ctx, ids, now, notice).await?;
            issued += bills;
            progress |= locked > 0;
        }
        if !progress {
            break;
        }
    }
    Ok(issued)
}

/// Bills a chunk of executions in one transaction; if the store refuses
/// it, bills them one per transaction so that only the execution at fault
/// is parked. Returns (bills issued, executions taken).
async fn issue_chunk(
    ctx: &Context,
    ids: &[String],
    now: DateTime<Utc>,
    notice: Duration,
) -> Result<(usize, usize), RunError> {
    match issue_together(ctx, ids, now, notice).await {
        Err(RunError::Handle(HandleError::Rejected(rejection))) => {
            tracing::warn!(error = %rejection, executions = ids.len(), "billing a chunk failed; billing its executions one by one");
            let mut total = (0, 0);
            for id in ids {
                let one = std::slice::from_ref(id);
                match issue_together(ctx, one, now, notice).await {
                    Ok((bills, locked)) => {
                        total.0 += bills;
                        total.1 += locked;
                    }
                    Err(RunError::Handle(HandleError::Rejected(rejection))) => {
                        let mut tx = ctx.pool.begin().await?;
                        park(ctx, &mut tx, id, &rejection, now).await?;
                        tx.commit().await?;
                        total.1 += 1;
                    }
                    Err(other) => return Err(other),
                }
            }
            Ok(total)
        }
        other => other,
    }
}

/// One transaction: lock the executions still due, plan each one's bills
/// apart (an execution whose bill cannot be made is parked and the others
/// go on), then write them all set-based.
async fn issue_together(
    ctx: &Context,
    ids: &[String],
    now: DateTime<Utc>,
    notice: Duration,
) -> Result<(usize, usize), RunError> {
    let mut tx = ctx.pool.begin().await?;
    let mut executions = store::executions::lock_for_billing(&mut tx, ids, now).await?;
    if executions.is_empty() {
        return Ok((0, 0));
    }
    let locked = executions.len();
    let mut cache = PlanCache::default();
    let mut batch = BillBatch::default();
    let mut parked = Vec::new();
    for execution in &mut executions {
        let before = execution.clone();
        let mut own = BillBatch::default();
        let planned = catch_panic(async {
            ctx.settings.faults.check(&execution.merchant_id);
            bill_due_execution(&mut tx, &mut cache, execution, now, notice, &mut own).await
        })
        .await;
        let rejection = match planned {
            Ok(Ok(())) => {
                batch.absorb(own);
                continue;
            }
            Ok(Err(HandleError::Rejected(rejection))) => rejection,
            Ok(Err(other)) => return Err(other.into()),
            Err(panic) => {
                let doing = format!("billing execution {} (it is parked)", execution.id);
                super::panicked(ctx, "scheduler", &doing, &panic);
                // The transaction may be mid-statement: start again one by one.
                return Err(HandleError::Rejected(Rejection::new(
                    ErrorCode::InternalError,
                    format!("billing failed unexpectedly ({})", short(&panic)),
                ))
                .into());
            }
        };
        *execution = before;
        parked.push((execution.id.clone(), rejection));
    }
    let outcomes: Vec<(BillStatus, bool)> = batch
        .bills
        .iter()
        .map(|b| {
            (
                b.status,
                b.status == BillStatus::Paid && b.total > rust_decimal::Decimal::ZERO,
            )
        })
        .collect();
    let parked_ids: Vec<&str> = parked.iter().map(|(id, _)| id.as_str()).collect();
    executions.retain(|e| !parked_ids.contains(&e.id.as_str()));
    batch.executions = executions;
    batch.write(&mut tx, now).await?;
    for (id, rejection) in &parked {
        park(ctx, &mut tx, id, rejection, now).await?;
    }
    tx.commit().await?;
    for (status, paid_by_credit) in &outcomes {
        ctx.metrics.bills.with_label_values(&[status.as_str()]).inc();
        if *paid_by_credit {
            ctx.metrics.bills_settled.with_label_values(&["paid_by_credit"]).inc();
        }
    }
    Ok((outcomes.len(), locked))
}

/// Expires what is left of credit grants whose `expires_at` has come, one
/// transaction per round of executions.
async fn expire_credit(
    ctx: &Context,
    now: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<usize, RunError> {
    let mut expired = 0;
    for _ in 0..MAX_ROUNDS {
        let mut tx = ctx.pool.begin().await?;
        let ids = store::ledger::with_expired_grants(&mut tx, now, merchant, limit).await?;
        if ids.is_empty() {
            break;
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut round = 0;
        for mut execution in store::executions::lock_many_by_id(&mut tx, &ids).await? {
            round += crate::billing::credit::expire(&mut tx, &mut execution, now).await?;
        }
        tx.commit().await?;
        ctx.metrics.credit_grants_expired.inc_by(round as u64);
        expired += round;
        if (ids.len() as i64) < limit {
            break;
        }
    }
    Ok(expired)
}

/// Drops the bodies of usage events older than `usage.event_retention`
/// (their keys stay, so a repeat is still a repeat) and the allowance events
/// of billed periods that old; a bounded number of rounds per pass.
async fn prune_usage(ctx: &Context, now: DateTime<Utc>, limit: i64, merchant: Option<&str>) -> Result<usize, RunError> {
    let retention = ctx.settings.usage.event_retention;
    // Zero keeps bodies forever; a retention reaching before the calendar's start prunes nothing.
    let Some(before) = now
        .checked_sub_signed(duration(retention))
        .filter(|_| !retention.is_zero())
    else {
        return Ok(0);
    };
    let rows = limit.saturating_mul(10);
    let mut pruned = 0;
    for _ in 0..MAX_ROUNDS {
        let mut conn = ctx.pool.acquire().await?;
        let bodies = store::usage::prune_event_bodies(&mut conn, before, merchant, rows).await?;
        let allowance = store::usage::prune_allowance_events(&mut conn, before, merchant, rows).await?;
        ctx.metrics.event_bodies_pruned.inc_by(bodies);
        pruned += bodies as usize;
        if bodies < rows as u64 && allowance < rows as u64 {
            break;
        }
    }
    Ok(pruned)
}

/// Makes the interim bills of executions whose usage reached their next
/// progressive threshold.
async fn issue_interim(
    ctx: &Context,
    now: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<usize, RunError> {
    let notice = duration(ctx.settings.scheduler.pre_debit_notice);
    let ids = {
        let mut conn = ctx.pool.acquire().await?;
        store::executions::progressive_due(&mut conn, now, merchant, limit).await?
    };
    let mut issued = 0;
    for id in ids {
        let mut tx = ctx.pool.begin().await?;
        let Some(mut execution) = store::executions::lock_progressive_due(&mut tx, std::slice::from_ref(&id), now)
            .await?
            .pop()
        else {
            continue;
        };
        let mut cache = PlanCache::default();
        let mut batch = BillBatch::default();
        match bill_progressive(&mut tx, &mut cache, &mut execution, now, notice, &mut batch).await {
            Ok(()) => {}
            Err(HandleError::Rejected(rejection)) => {
                drop(tx);
                let mut tx = ctx.pool.begin().await?;
                store::executions::clear_progressive_due(&mut tx, &id).await?;
                park(ctx, &mut tx, &id, &rejection, now).await?;
                tx.commit().await?;
                continue;
            }
            Err(other) => return Err(other.into()),
        }
        let made = batch.bills.len();
        batch.executions.push(execution);
        batch.write(&mut tx, now).await?;
        tx.commit().await?;
        ctx.metrics.interim_bills.inc_by(made as u64);
        issued += made;
    }
    Ok(issued)
}

/// Parks an execution whose bill cannot be made, in the caller's
/// transaction: its error is kept, a metric counts it, and (when the error
/// is news) `BILLING_EXECUTION_ERROR` tells its merchant.
async fn park(
    ctx: &Context,
    conn: &mut sqlx::PgConnection,
    execution_id: &str,
    rejection: &Rejection,
    now: DateTime<Utc>,
) -> Result<(), RunError> {
    let retry_at = now + duration(ctx.settings.scheduler.park_for);
    let error = format!("{}: {}", rejection.code, rejection.message);
    ctx.metrics
        .execution_errors
        .with_label_values(&[rejection.code.as_str()])
        .inc();
    tracing::warn!(execution = %execution_id, error = %error, "billing of an execution failed; parked");
    if store::executions::park(conn, execution_id, &error, retry_at, now).await?
        && let Some(execution) = store::executions::lock_by_id(conn, execution_id).await?
    {
        let content = serde_json::json!({
            "billing_execution_info": crate::protocol::documents::execution_summary(&execution),
            "error_code": rejection.code.as_str(),
            "error_message": rejection.message,
            "retry_at": crate::protocol::documents::timestamp(retry_at),
        });
        let webhook = Webhook::new(EventName::ExecutionError, &execution.merchant_id, now, content);
        store::outbox::enqueue(conn, &webhook, Some(execution_id)).await?;
        ctx.outbox_wake.notify_one();
    }
    Ok(())
}

/// Bills of explicit schedules whose notice is due: announce, and move the
/// debit so that it runs at least the notice after the announcement.
async fn send_notices(
    ctx: &Context,
    now: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<usize, RunError> {
    let notice = duration(ctx.settings.scheduler.pre_debit_notice);
    let mut tx = ctx.pool.begin().await?;
    let bills = store::bills::claim_notices(&mut tx, now + notice, limit, merchant).await?;
    for mut bill in bills.iter().cloned() {
        bill.notice_sent_at = Some(now);
        bill.next_attempt_at = Some(bill.due_at.max(now + notice));
        bill.updated_at = now;
        store::bills::update(&mut tx, &bill).await?;
        let execution = match &bill.execution_id {
            Some(id) => store::executions::lock_by_id(&mut tx, id).await?,
            None => None,
        };
        crate::billing::announce_bill(
            &mut tx,
            EventName::TxnToBeExecuted,
            &bill,
            execution.as_ref(),
            now,
            None,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(bills.len())
}

/// Leases that ran out: requests that never left are sent again (same
/// request id, so the gateway sees one attempt); requests without a result
/// in time count as retryable failures.
async fn recover(
    ctx: &Context,
    publisher: &Publisher,
    now: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<usize, RunError> {
    let lease_until = now + duration(ctx.settings.scheduler.lease);
    let mut tx = ctx.pool.begin().await?;
    let expired = store::bills::claim_expired(&mut tx, now, &ctx.instance, lease_until, limit, merchant).await?;
    let mut resend = Vec::new();
    let mut timed_out = 0;
    for e in expired {
        if e.requested_at.is_none() {
            resend.push(e.bill);
        } else {
            let status = time_out(&mut tx, e.bill, &ctx.settings.retry, now).await?;
            if status != BillStatus::RetryScheduled {
                ctx.metrics
                    .bills_settled
                    .with_label_values(&[status.as_str().to_ascii_lowercase().as_str()])
                    .inc();
            }
            ctx.metrics.debit_attempts.with_label_values(&["timeout"]).inc();
            timed_out += 1;
        }
    }
    tx.commit().await?;
    send(ctx, publisher, &resend, now).await?;
    Ok(timed_out)
}

/// Claims due bills, records their attempts, then sends the requests.
async fn request_due(
    ctx: &Context,
    publisher: &Publisher,
    now: DateTime<Utc>,
    limit: i64,
    merchant: Option<&str>,
) -> Result<usize, RunError> {
    let lease_until = now + duration(ctx.settings.scheduler.lease);
    let mut total = 0;
    loop {
        let mut tx = ctx.pool.begin().await?;
        let bills = store::bills::claim_due(&mut tx, now, &ctx.instance, lease_until, limit, merchant).await?;
        if bills.is_empty() {
            break;
        }
        store::bills::insert_attempts(&mut tx, &bills, now).await?;
        tx.commit().await?;
        send(ctx, publisher, &bills, now).await?;
        total += bills.len();
        if (bills.len() as i64) < limit {
            break;
        }
    }
    Ok(total)
}

/// Publishes debit requests with confirms, then marks those confirmed.
async fn send(ctx: &Context, publisher: &Publisher, bills: &[BillRow], now: DateTime<Utc>) -> Result<(), RunError> {
    if bills.is_empty() {
        return Ok(());
    }
    // Only bills still waiting for this attempt are asked for: a late
    // success may have paid one since it was claimed. The rows stay locked
    // until the requests are marked, so no result slips in between.
    let mut tx = ctx.pool.begin().await?;
    let wanted: Vec<String> = bills.iter().filter_map(|b| b.request_id.clone()).collect();
    let still = store::bills::lock_still_processing(&mut tx, &wanted).await?;
    let bills: Vec<&BillRow> = bills
        .iter()
        .filter(|b| b.request_id.as_ref().is_some_and(|r| still.contains(r)))
        .collect();
    let messages = bills
        .iter()
        .map(|bill| {
            let request_id = bill.request_id.clone().unwrap_or_default();
            let props = broker::json_properties()
                .with_message_id(ShortString::from(request_id.as_str()))
                .with_correlation_id(ShortString::from(request_id.as_str()))
                .with_reply_to(ShortString::from(ctx.names.payment_results.as_str()))
                .with_headers(broker::headers([(MERCHANT_HEADER, bill.merchant_id.as_str())]));
            let body = serde_json::to_vec(&request_body(bill)).unwrap_or_default();
            (ctx.names.payments.clone(), "payment.debit".to_string(), body, props)
        })
        .collect();
    let confirmed = publisher.publish_all(messages).await?;
    let ids: Vec<String> = bills[..confirmed].iter().filter_map(|b| b.request_id.clone()).collect();
    let deadline = now + duration(ctx.settings.payments.result_timeout);
    store::bills::mark_requested(&mut tx, &ids, ctx.clock.now(), deadline).await?;
    tx.commit().await?;
    for _ in 0..confirmed {
        ctx.metrics.debit_attempts.with_label_values(&["requested"]).inc();
    }
    Ok(())
}
