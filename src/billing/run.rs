//! One pass of the scheduler: issue bills for closed periods, send due
//! notices, recover expired leases, and request due debits. Every step
//! claims rows with `FOR UPDATE SKIP LOCKED`, so any number of processes may
//! run passes side by side and each attempt happens once.

use chrono::{DateTime, Duration, Utc};
use lapin::types::ShortString;
use serde::Serialize;

use super::debits::{request_body, time_out};
use super::issue::{BillBatch, PlanCache, bill_due_execution};
use crate::app::Context;
use crate::broker::{self, BrokerError, Publisher};
use crate::error::HandleError;
use crate::protocol::envelope::MERCHANT_HEADER;
use crate::protocol::webhook::EventName;
use crate::store;
use crate::store::bills::BillRow;

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RunReport {
    pub bills_issued: usize,
    pub notices_sent: usize,
    pub debits_requested: usize,
    pub debits_timed_out: usize,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
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

/// Runs one pass over at most `limit` rows per step.
pub async fn run_once(ctx: &Context, publisher: &Publisher, limit: i64) -> Result<RunReport, RunError> {
    let mut report = RunReport::default();
    let now = ctx.clock.now();
    report.bills_issued = issue_due(ctx, now, limit).await?;
    report.notices_sent = send_notices(ctx, now, limit).await?;
    report.debits_timed_out = recover(ctx, publisher, now, limit).await?;
    report.debits_requested = request_due(ctx, publisher, now, limit).await?;
    if let Ok(mut conn) = ctx.pool.acquire().await
        && let Ok(age) = store::bills::oldest_due_age(&mut conn, ctx.clock.now()).await
    {
        ctx.metrics.oldest_due_bill_age_seconds.set(age);
    }
    if report.bills_issued + report.notices_sent + report.debits_timed_out > 0 {
        ctx.outbox_wake.notify_one();
    }
    Ok(report)
}

/// Closes due periods: a batch of executions per transaction, planned in
/// memory and written set-based.
async fn issue_due(ctx: &Context, now: DateTime<Utc>, limit: i64) -> Result<usize, RunError> {
    let notice = duration(ctx.settings.scheduler.pre_debit_notice);
    let mut issued = 0;
    loop {
        let mut tx = ctx.pool.begin().await?;
        let mut executions = store::executions::lock_due_for_billing(&mut tx, now, limit).await?;
        if executions.is_empty() {
            break;
        }
        let claimed = executions.len();
        let mut cache = PlanCache::default();
        let mut batch = BillBatch::default();
        for execution in &mut executions {
            bill_due_execution(&mut tx, &mut cache, execution, now, notice, &mut batch).await?;
        }
        let outcomes: Vec<(String, bool)> = batch
            .bills
            .iter()
            .map(|b| {
                (
                    b.status.clone(),
                    b.status == super::issue::PAID && b.total > rust_decimal::Decimal::ZERO,
                )
            })
            .collect();
        batch.executions = executions;
        batch.write(&mut tx, now).await?;
        tx.commit().await?;
        for (status, paid_by_credit) in &outcomes {
            ctx.metrics.bills.with_label_values(&[status.as_str()]).inc();
            if *paid_by_credit {
                ctx.metrics.bills_settled.with_label_values(&["paid_by_credit"]).inc();
            }
        }
        issued += outcomes.len();
        if (claimed as i64) < limit {
            break;
        }
    }
    Ok(issued)
}

/// Bills of explicit schedules whose notice is due: announce, and move the
/// debit so that it runs at least the notice after the announcement.
async fn send_notices(ctx: &Context, now: DateTime<Utc>, limit: i64) -> Result<usize, RunError> {
    let notice = duration(ctx.settings.scheduler.pre_debit_notice);
    let mut tx = ctx.pool.begin().await?;
    let bills = store::bills::claim_notices(&mut tx, now + notice, limit).await?;
    for mut bill in bills.iter().cloned() {
        bill.notice_sent_at = Some(now);
        bill.next_attempt_at = Some(bill.due_at.max(now + notice));
        bill.updated_at = now;
        store::bills::update(&mut tx, &bill).await?;
        let execution = match &bill.execution_id {
            Some(id) => store::executions::lock_by_id(&mut tx, id).await?,
            None => None,
        };
        super::announce_bill(
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
async fn recover(ctx: &Context, publisher: &Publisher, now: DateTime<Utc>, limit: i64) -> Result<usize, RunError> {
    let lease_until = now + duration(ctx.settings.scheduler.lease);
    let mut tx = ctx.pool.begin().await?;
    let expired = store::bills::claim_expired(&mut tx, now, &ctx.instance, lease_until, limit).await?;
    let mut resend = Vec::new();
    let mut timed_out = 0;
    for e in expired {
        if e.requested_at.is_none() {
            resend.push(e.bill);
        } else {
            let status = time_out(&mut tx, e.bill, &ctx.settings.retry, now).await?;
            if status != "RETRY_SCHEDULED" {
                ctx.metrics
                    .bills_settled
                    .with_label_values(&[status.to_ascii_lowercase().as_str()])
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
async fn request_due(ctx: &Context, publisher: &Publisher, now: DateTime<Utc>, limit: i64) -> Result<usize, RunError> {
    let lease_until = now + duration(ctx.settings.scheduler.lease);
    let mut total = 0;
    loop {
        let mut tx = ctx.pool.begin().await?;
        let bills = store::bills::claim_due(&mut tx, now, &ctx.instance, lease_until, limit).await?;
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
    let mut conn = ctx.pool.acquire().await?;
    store::bills::mark_requested(&mut conn, &ids, ctx.clock.now(), deadline).await?;
    for _ in 0..confirmed {
        ctx.metrics.debit_attempts.with_label_values(&["requested"]).inc();
    }
    Ok(())
}
