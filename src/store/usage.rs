//! Usage tables: events (the idempotency keys), aggregates, distinct values
//! and announced thresholds. Every write is one set-based statement per batch.
//! An event is known by its key ([`crate::domain::ids::usage_event_key`]),
//! kept forever; its body goes once older than the retention.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::catalog::{PlanInterval, PlanModel, PlanRuleType};
use crate::domain::period::{PeriodBasis, PlanCalendar};

/// What an event needs to be checked and placed: its execution and plan.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ExecutionContext {
    pub id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub plan_id: String,
    pub merchant_ref_id: Option<String>,
    pub status: String,
    pub credit_balance: Decimal,
    pub metric_info: serde_json::Value,
    pub billing_start_date: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub billed_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "String")]
    pub plan_interval: PlanInterval,
    #[sqlx(try_from = "String")]
    pub plan_model: PlanModel,
    #[sqlx(try_from = "String")]
    pub plan_rule_type: PlanRuleType,
    pub plan_rule_value: Option<i32>,
    pub plan_currency: String,
    pub max_amount: Option<Decimal>,
    pub metric_ids: Vec<String>,
    /// The plan's `usage_thresholds` and the execution's `usage_alerts`.
    pub usage_thresholds: serde_json::Value,
    pub usage_alerts: serde_json::Value,
    pub progressive_period_start: Option<DateTime<Utc>>,
    pub progressive_level: Option<Decimal>,
}

impl ExecutionContext {
    /// The execution's period layout on its plan.
    pub(crate) fn period_basis(&self) -> PeriodBasis {
        PeriodBasis {
            calendar: PlanCalendar::new(
                self.plan_interval,
                self.plan_model,
                self.plan_rule_type,
                self.plan_rule_value,
            ),
            billing_start_date: self.billing_start_date,
            activated_at: self.activated_at,
            created_at: self.created_at,
            billed_until: self.billed_until,
        }
    }
}

/// The contexts of the given (merchant, execution) pairs that exist. The
/// rows stay share-locked until the batch commits, so billing (which locks
/// them for update) never closes a period while a batch writes into it.
pub(crate) async fn contexts(
    conn: &mut PgConnection,
    merchants: &[String],
    ids: &[String],
) -> Result<Vec<ExecutionContext>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.merchant_id, e.customer_id, e.plan_id, e.merchant_ref_id, e.status, e.credit_balance, e.metric_info,
                e.billing_start_date, e.activated_at, e.billed_until, e.created_at,
                p.plan_interval, p.plan_model, p.plan_rule_type, p.plan_rule_value, p.plan_currency, p.max_amount,
                COALESCE((SELECT array_agg(pm.metric_id) FROM plan_metrics pm
                          WHERE pm.merchant_id = e.merchant_id AND pm.plan_id = e.plan_id), '{}') AS metric_ids,
                p.usage_thresholds, e.usage_alerts, e.progressive_period_start, e.progressive_level
         FROM UNNEST($1::text[], $2::text[]) AS k(merchant_id, id)
         JOIN executions e ON e.id = k.id AND e.merchant_id = k.merchant_id
         JOIN plans p ON p.merchant_id = e.merchant_id AND p.plan_id = e.plan_id
         ORDER BY e.id
         FOR KEY SHARE OF e",
    )
    .bind(merchants)
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Column arrays of new events.
#[derive(Debug, Default)]
pub(crate) struct EventRows {
    pub key: Vec<Uuid>,
    pub merchant_id: Vec<String>,
    pub event_id: Vec<String>,
    pub execution_id: Vec<String>,
    pub metric_id: Vec<String>,
    pub period_start: Vec<DateTime<Utc>>,
    pub value: Vec<Decimal>,
    pub ts: Vec<DateTime<Utc>>,
}

/// The event insert, static SQL with `$tail` appended (the conflict clause).
macro_rules! insert_events_sql {
    ($tail:literal) => {
        concat!(
            "INSERT INTO usage_events (key, merchant_id, event_id, execution_id, metric_id, period_start, value, ts)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                 $7::numeric[], $8::timestamptz[])",
            $tail
        )
    };
}

/// Binds the columns of [`EventRows`] to an [`insert_events_sql!`] query.
macro_rules! bind_event_rows {
    ($query:expr, $rows:expr) => {
        $query
            .bind(&$rows.key)
            .bind(&$rows.merchant_id)
            .bind(&$rows.event_id)
            .bind(&$rows.execution_id)
            .bind(&$rows.metric_id)
            .bind(&$rows.period_start)
            .bind(&$rows.value)
            .bind(&$rows.ts)
    };
}

/// Inserts events that are all new in one plain insert, which costs Postgres
/// much less than the speculative insertion of `ON CONFLICT`; `true` once
/// every row is in. When a key was taken already (counted before, or by a
/// transaction that committed meanwhile) it inserts nothing, leaves the
/// transaction as it was and returns `false`: then [`insert_events`] sorts
/// the new from the repeats. Keys must be unique within `rows`.
pub(crate) async fn insert_new_events(conn: &mut PgConnection, rows: &EventRows) -> Result<bool, sqlx::Error> {
    sqlx::query("SAVEPOINT new_usage_events").execute(&mut *conn).await?;
    let inserted = bind_event_rows!(sqlx::query(insert_events_sql!("")), rows)
        .execute(&mut *conn)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            sqlx::query("ROLLBACK TO SAVEPOINT new_usage_events")
                .execute(&mut *conn)
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Inserts events whose key is new and returns the keys inserted. Repeats,
/// however late and even with their body pruned, insert nothing. Keys must
/// be unique within `rows`.
pub(crate) async fn insert_events(conn: &mut PgConnection, rows: &EventRows) -> Result<Vec<Uuid>, sqlx::Error> {
    bind_event_rows!(
        sqlx::query_scalar(insert_events_sql!(" ON CONFLICT DO NOTHING RETURNING key")),
        rows
    )
    .fetch_all(conn)
    .await
}

/// Which of the given event keys were counted before.
pub(crate) async fn counted_before(conn: &mut PgConnection, keys: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT key FROM usage_events WHERE key = ANY($1)")
        .bind(keys)
        .fetch_all(conn)
        .await
}

/// Sets the bodies of up to `limit` events whose timestamp is before
/// `before` to NULL (of one merchant's events, or everyone's), keeping
/// their keys; returns how many.
pub(crate) async fn prune_event_bodies(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    merchant: Option<&str>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let pruned = sqlx::query(
        "UPDATE usage_events SET merchant_id = NULL, event_id = NULL, execution_id = NULL, metric_id = NULL,
                period_start = NULL, value = NULL, ts = NULL
         WHERE key IN (SELECT key FROM usage_events
                       WHERE ts < $1 AND ($2::text IS NULL OR merchant_id = $2)
                       LIMIT $3)",
    )
    .bind(before)
    .bind(merchant)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(pruned.rows_affected())
}

/// Deletes up to `limit` allowance events of periods that started before
/// `before` and that their execution has billed (of one merchant's
/// executions, or everyone's); returns how many.
pub(crate) async fn prune_allowance_events(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    merchant: Option<&str>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let pruned = sqlx::query(
        "DELETE FROM usage_allowance_events
         WHERE ctid IN (SELECT a.ctid FROM usage_allowance_events a
                        JOIN executions e ON e.id = a.execution_id
                        WHERE a.period_start < $1 AND e.billed_until > a.period_start
                          AND ($2::text IS NULL OR e.merchant_id = $2)
                        LIMIT $3)",
    )
    .bind(before)
    .bind(merchant)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(pruned.rows_affected())
}

/// Inserts distinct values of UNIQUE_COUNT metrics; returns the key of each
/// value that was new in its period.
pub(crate) async fn insert_unique_values(
    conn: &mut PgConnection,
    execution_id: &[String],
    metric_id: &[String],
    period_start: &[DateTime<Utc>],
    value: &[String],
) -> Result<Vec<(String, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO usage_unique_values (execution_id, metric_id, period_start, value)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[])
         ON CONFLICT DO NOTHING
         RETURNING execution_id, metric_id, period_start",
    )
    .bind(execution_id)
    .bind(metric_id)
    .bind(period_start)
    .bind(value)
    .fetch_all(conn)
    .await
}

/// Column arrays of aggregate deltas, one row per key, sorted by key so that
/// concurrent workers lock rows in the same order.
#[derive(Debug, Default)]
pub(crate) struct AggregateDeltas {
    pub execution_id: Vec<String>,
    pub metric_id: Vec<String>,
    pub period_start: Vec<DateTime<Utc>>,
    pub sum: Vec<Decimal>,
    pub count: Vec<i64>,
    pub max: Vec<Option<Decimal>>,
    pub latest_ts: Vec<Option<DateTime<Utc>>>,
    pub latest_event_id: Vec<Option<String>>,
    pub latest_value: Vec<Option<Decimal>>,
    pub unique_count: Vec<i64>,
    pub weighted: Vec<Decimal>,
    pub fee: Vec<Decimal>,
}

/// Adds deltas to the running aggregates in one statement.
pub(crate) async fn add_aggregates(conn: &mut PgConnection, d: &AggregateDeltas) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO usage_aggregates AS a (execution_id, metric_id, period_start, sum, count, max,
             latest_ts, latest_event_id, latest_value, unique_count, weighted, fee)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::numeric[], $5::int8[], $6::numeric[],
             $7::timestamptz[], $8::text[], $9::numeric[], $10::int8[], $11::numeric[], $12::numeric[])
         ON CONFLICT (execution_id, metric_id, period_start) DO UPDATE SET
             sum = a.sum + EXCLUDED.sum,
             weighted = a.weighted + EXCLUDED.weighted,
             fee = a.fee + EXCLUDED.fee,
             count = a.count + EXCLUDED.count,
             max = GREATEST(a.max, EXCLUDED.max),
             unique_count = a.unique_count + EXCLUDED.unique_count,
             latest_ts = CASE WHEN EXCLUDED.latest_ts IS NOT NULL AND (a.latest_ts IS NULL
                     OR (EXCLUDED.latest_ts, EXCLUDED.latest_event_id) > (a.latest_ts, a.latest_event_id))
                 THEN EXCLUDED.latest_ts ELSE a.latest_ts END,
             latest_value = CASE WHEN EXCLUDED.latest_ts IS NOT NULL AND (a.latest_ts IS NULL
                     OR (EXCLUDED.latest_ts, EXCLUDED.latest_event_id) > (a.latest_ts, a.latest_event_id))
                 THEN EXCLUDED.latest_value ELSE a.latest_value END,
             latest_event_id = CASE WHEN EXCLUDED.latest_ts IS NOT NULL AND (a.latest_ts IS NULL
                     OR (EXCLUDED.latest_ts, EXCLUDED.latest_event_id) > (a.latest_ts, a.latest_event_id))
                 THEN EXCLUDED.latest_event_id ELSE a.latest_event_id END",
    )
    .bind(&d.execution_id)
    .bind(&d.metric_id)
    .bind(&d.period_start)
    .bind(&d.sum)
    .bind(&d.count)
    .bind(&d.max)
    .bind(&d.latest_ts)
    .bind(&d.latest_event_id)
    .bind(&d.latest_value)
    .bind(&d.unique_count)
    .bind(&d.weighted)
    .bind(&d.fee)
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored aggregate.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AggregateRow {
    pub execution_id: String,
    pub metric_id: String,
    pub period_start: DateTime<Utc>,
    pub sum: Decimal,
    pub count: i64,
    pub max: Option<Decimal>,
    pub latest_ts: Option<DateTime<Utc>>,
    pub latest_event_id: Option<String>,
    pub latest_value: Option<Decimal>,
    pub unique_count: i64,
    pub weighted: Decimal,
    pub fee: Decimal,
}

/// Aggregates of the given (execution, period) pairs.
pub(crate) async fn aggregates(
    conn: &mut PgConnection,
    execution_id: &[String],
    period_start: &[DateTime<Utc>],
) -> Result<Vec<AggregateRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.* FROM UNNEST($1::text[], $2::timestamptz[]) AS k(execution_id, period_start)
         JOIN usage_aggregates a ON a.execution_id = k.execution_id AND a.period_start = k.period_start",
    )
    .bind(execution_id)
    .bind(period_start)
    .fetch_all(conn)
    .await
}

/// The level each WEIGHTED_SUM metric had when a period started: the sum
/// of its increments in every earlier period of the execution.
pub(crate) async fn levels_before(
    conn: &mut PgConnection,
    execution_id: &str,
    metric_ids: &[String],
    period_start: DateTime<Utc>,
) -> Result<Vec<(String, Decimal)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT metric_id, SUM(sum) FROM usage_aggregates
         WHERE execution_id = $1 AND metric_id = ANY($2) AND period_start < $3
         GROUP BY metric_id",
    )
    .bind(execution_id)
    .bind(metric_ids)
    .bind(period_start)
    .fetch_all(conn)
    .await
}

/// Column arrays of events that a free allowance may take.
#[derive(Debug, Default)]
pub(crate) struct AllowanceRows {
    pub execution_id: Vec<String>,
    pub metric_id: Vec<String>,
    pub period_start: Vec<DateTime<Utc>>,
    pub ts: Vec<DateTime<Utc>>,
    pub event_id: Vec<String>,
    pub value: Vec<Decimal>,
}

/// Keeps events of metrics with a free allowance in the order it takes them.
pub(crate) async fn insert_allowance_events(conn: &mut PgConnection, rows: &AllowanceRows) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO usage_allowance_events (execution_id, metric_id, period_start, ts, event_id, value)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::numeric[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&rows.execution_id)
    .bind(&rows.metric_id)
    .bind(&rows.period_start)
    .bind(&rows.ts)
    .bind(&rows.event_id)
    .bind(&rows.value)
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` of a period's allowance events after `after` (a
/// `(timestamp, event_id)` position), in that order.
pub(crate) async fn allowance_events(
    conn: &mut PgConnection,
    execution_id: &str,
    metric_id: &str,
    period_start: DateTime<Utc>,
    after: Option<&(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<(DateTime<Utc>, String, Decimal)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ts, event_id, value FROM usage_allowance_events
         WHERE execution_id = $1 AND metric_id = $2 AND period_start = $3
           AND ($4::timestamptz IS NULL OR (ts, event_id) > ($4, $5))
         ORDER BY ts, event_id
         LIMIT $6",
    )
    .bind(execution_id)
    .bind(metric_id)
    .bind(period_start)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1.as_str()))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records a threshold for a period; `true` the first time only.
pub(crate) async fn record_threshold(
    conn: &mut PgConnection,
    execution_id: &str,
    period_start: DateTime<Utc>,
    kind: &str,
    amount: Decimal,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO usage_thresholds (execution_id, period_start, kind, amount, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(execution_id)
    .bind(period_start)
    .bind(kind)
    .bind(amount)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Locks executions (in id order, so concurrent writers never deadlock)
/// before webhooks about them are written. `FOR NO KEY UPDATE` waits for
/// every other writer of these rows, and for billing (`FOR UPDATE`), but not
/// for batches that only read them (`FOR KEY SHARE`): two batches on one
/// execution, each holding that share lock, never wait on each other here.
pub(crate) async fn lock_executions(conn: &mut PgConnection, ids: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM executions WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Of these alert amounts of (execution, period) pairs, those already
/// announced.
pub(crate) async fn alerts_sent(
    conn: &mut PgConnection,
    execution_ids: &[String],
    periods: &[DateTime<Utc>],
) -> Result<Vec<(String, DateTime<Utc>, Decimal)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.execution_id, a.period_start, a.amount
         FROM UNNEST($1::text[], $2::timestamptz[]) AS k(execution_id, period_start)
         JOIN usage_alerts_sent a USING (execution_id, period_start)",
    )
    .bind(execution_ids)
    .bind(periods)
    .fetch_all(conn)
    .await
}

/// Records an alert as announced; `false` if it already was.
pub(crate) async fn record_alert(
    conn: &mut PgConnection,
    execution_id: &str,
    period_start: DateTime<Utc>,
    amount: Decimal,
    used_amount: Decimal,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO usage_alerts_sent (execution_id, period_start, amount, used_amount, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(execution_id)
    .bind(period_start)
    .bind(amount)
    .bind(used_amount)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks executions as due for an interim bill (the caller holds their locks).
pub(crate) async fn mark_progressive_due(
    conn: &mut PgConnection,
    ids: &[String],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE executions SET progressive_due_at = $2 WHERE id = ANY($1) AND progressive_due_at IS NULL")
        .bind(ids)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}
