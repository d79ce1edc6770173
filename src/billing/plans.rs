//! `add_billing_plan`: an explicit schedule of debits for a
//! customer, generated from `schedule_type`/`periodicity`/`end_type` or given
//! as a `bill_sequence`, each charged on its `schedule_date` for its `amount`.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::announce_bill;
use crate::domain::bill::{BillKind, BillStatus};
use crate::domain::catalog::ActionOnFailure;
use crate::domain::ids::{check_id, new_execution_id};
use crate::domain::money::Currency;
use crate::domain::period::{add_months_clamped, check_date_window};
use crate::domain::webhook::EventName;
use crate::error::{ErrorCode, HandleError, Rejection};
use crate::protocol::billing_plan::{AddBillingPlan, EntryIn, PlanIn};
use crate::protocol::documents::num;
use crate::store;
use crate::store::bills::BillRow;

/// How many entries a schedule that never ends (`end_type` 1) lays out ahead.
pub(crate) const OPEN_ENDED_ENTRIES: usize = 12;
pub(crate) use crate::protocol::billing_plan::MAX_ENTRIES;

/// A validated schedule entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub sequence_number: u32,
    pub date: NaiveDate,
    pub amount: Decimal,
    pub reference_id: Option<String>,
}

fn date(field: &str, value: &str) -> Result<NaiveDate, Rejection> {
    let day = value.get(..10).unwrap_or(value);
    NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| {
        Rejection::field(
            field,
            format_args!("must be a date like 2026-01-31, got '{}'", crate::error::short(value)),
        )
    })
}

fn amount(field: &str, value: Decimal, currency: &Currency) -> Result<Decimal, Rejection> {
    if value <= Decimal::ZERO {
        return Err(Rejection::field(field, "must be greater than zero"));
    }
    if !currency.fits_minor_units(value) {
        return Err(Rejection::field(
            field,
            format_args!("has more decimals than {currency} allows"),
        ));
    }
    Ok(value)
}

/// Checks the plan's schedule fields whenever they are given, so a bad
/// value is named even when an explicit sequence makes them unused.
fn check_plan_fields(plan: &PlanIn, currency: &Currency) -> Result<(), Rejection> {
    if let Some(unit) = &plan.schedule_type
        && !matches!(unit.to_ascii_uppercase().as_str(), "D" | "W" | "M" | "Y")
    {
        return Err(Rejection::field("billing_plan.schedule_type", "must be D, W, M or Y"));
    }
    if plan.periodicity == Some(0) {
        return Err(Rejection::field("billing_plan.periodicity", "must be at least 1"));
    }
    if let Some(end_type) = plan.end_type
        && !(1..=3).contains(&end_type)
    {
        return Err(Rejection::field(
            "billing_plan.end_type",
            "must be 1 (never), 2 (end_date) or 3 (no_of_payments)",
        ));
    }
    if let Some(a) = plan.amount {
        amount("billing_plan.amount", a, currency)?;
    }
    if let Some(start) = &plan.start_date {
        date("billing_plan.start_date", start)?;
    }
    Ok(())
}

/// The schedule: the explicit sequence when given, else generated.
pub(crate) fn schedule(
    plan: &PlanIn,
    sequence: &[EntryIn],
    currency: &Currency,
    today: NaiveDate,
) -> Result<Vec<Entry>, Rejection> {
    check_plan_fields(plan, currency)?;
    for (field, value) in [
        ("billing_plan.start_date", &plan.start_date),
        ("billing_plan.end_date", &plan.end_date),
    ] {
        if let Some(value) = value {
            check_date_window(date(field, value)?, today).map_err(|p| Rejection::field(field, p))?;
        }
    }
    let explicit_dates = !sequence.is_empty();
    let mut entries = if explicit_dates {
        explicit(sequence, currency)?
    } else {
        generate(plan, currency)?
    };
    for (i, entry) in entries.iter().enumerate() {
        check_date_window(entry.date, today).map_err(|p| {
            if explicit_dates {
                Rejection::field(&format!("bill_sequence[{i}].schedule_date"), p)
            } else {
                Rejection::field("billing_plan.periodicity", format_args!("lays out a date that {p}"))
            }
        })?;
    }
    if entries.len() > MAX_ENTRIES {
        return Err(Rejection::field(
            "bill_sequence",
            format_args!("may hold at most {MAX_ENTRIES} entries"),
        ));
    }
    entries.sort_by_key(|e| e.sequence_number);
    for pair in entries.windows(2) {
        if pair[0].sequence_number == pair[1].sequence_number {
            return Err(Rejection::field(
                "bill_sequence",
                format_args!("repeats sequence_number {}", pair[0].sequence_number),
            ));
        }
    }
    Ok(entries)
}

fn explicit(sequence: &[EntryIn], currency: &Currency) -> Result<Vec<Entry>, Rejection> {
    sequence
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if let Some(r) = &e.reference_id {
                check_id(r).map_err(|p| Rejection::field(&format!("bill_sequence[{i}].reference_id"), p))?;
            }
            Ok(Entry {
                sequence_number: e.sequence_number.unwrap_or(i as u32 + 1),
                date: date(&format!("bill_sequence[{i}].schedule_date"), &e.schedule_date)?,
                amount: amount(&format!("bill_sequence[{i}].amount"), e.amount, currency)?,
                reference_id: e.reference_id.clone(),
            })
        })
        .collect()
}

/// Dates from `start_date` every `periodicity` days (D), weeks (W), months
/// (M, on `bill_day` when given) or years (Y), until `end_type` says stop:
/// 1 never (the next twelve are laid out), 2 `end_date`, 3 `no_of_payments`.
pub(crate) fn generate(plan: &PlanIn, currency: &Currency) -> Result<Vec<Entry>, Rejection> {
    let start = date(
        "billing_plan.start_date",
        plan.start_date
            .as_deref()
            .ok_or_else(|| Rejection::field("billing_plan.start_date", "is required"))?,
    )?;
    let every = plan.periodicity.unwrap_or(1);
    if every == 0 {
        return Err(Rejection::field("billing_plan.periodicity", "must be at least 1"));
    }
    let unit = plan
        .schedule_type
        .as_deref()
        .map(str::to_ascii_uppercase)
        .ok_or_else(|| Rejection::field("billing_plan.schedule_type", "is required"))?;
    if !matches!(unit.as_str(), "D" | "W" | "M" | "Y") {
        return Err(Rejection::field("billing_plan.schedule_type", "must be D, W, M or Y"));
    }
    let amount = amount(
        "billing_plan.amount",
        plan.amount
            .ok_or_else(|| Rejection::field("billing_plan.amount", "is required"))?,
        currency,
    )?;
    let (limit, end) = match plan.end_type.unwrap_or(1) {
        1 => (OPEN_ENDED_ENTRIES, None),
        2 => {
            let end = date(
                "billing_plan.end_date",
                plan.end_date
                    .as_deref()
                    .ok_or_else(|| Rejection::field("billing_plan.end_date", "is required when end_type is 2"))?,
            )?;
            if end < start {
                return Err(Rejection::field(
                    "billing_plan.end_date",
                    "must not be before start_date",
                ));
            }
            (MAX_ENTRIES + 1, Some(end))
        }
        3 => match plan.no_of_payments {
            Some(n) if n >= 1 => (n as usize, None),
            _ => {
                return Err(Rejection::field(
                    "billing_plan.no_of_payments",
                    "must be at least 1 when end_type is 3",
                ));
            }
        },
        _ => {
            return Err(Rejection::field(
                "billing_plan.end_type",
                "must be 1 (never), 2 (end_date) or 3 (no_of_payments)",
            ));
        }
    };
    let day = match (unit.as_str(), plan.bill_day) {
        ("M", Some(d)) if !(1..=31).contains(&d) => {
            return Err(Rejection::field("billing_plan.bill_day", "must be between 1 and 31"));
        }
        ("M", Some(d)) => d,
        _ => start.day(),
    };
    // With a bill day, the first payment falls on it, on or after the start.
    let first = if unit == "M" && plan.bill_day.is_some() {
        let midnight = start
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| Rejection::field("billing_plan.start_date", "is out of range"))?;
        let this = add_months_clamped(midnight, 0, day).map(|t| t.date_naive());
        match this {
            Some(d) if d >= start => d,
            _ => add_months_clamped(midnight, 1, day)
                .map(|t| t.date_naive())
                .unwrap_or(start),
        }
    } else {
        start
    };
    let mut entries = Vec::new();
    for k in 0..limit.min(MAX_ENTRIES + 1) as u32 {
        let Some(step) = k.checked_mul(every) else {
            break;
        };
        let d = match unit.as_str() {
            "D" => first.checked_add_days(chrono::Days::new(step.into())),
            "W" => first.checked_add_days(chrono::Days::new(u64::from(step) * 7)),
            "M" => first
                .and_hms_opt(0, 0, 0)
                .and_then(|t| add_months_clamped(t.and_utc(), step, day))
                .map(|t| t.date_naive()),
            _ => step
                .checked_mul(12)
                .and_then(|months| first.checked_add_months(Months::new(months))),
        };
        let Some(d) = d else { break };
        if end.is_some_and(|end| d > end) {
            break;
        }
        entries.push(Entry {
            sequence_number: k + 1,
            date: d,
            amount,
            reference_id: plan.reference_id.clone(),
        });
    }
    Ok(entries)
}

/// The plan as stored: the request's fields with their defaults.
fn stored_plan(
    id: &str,
    merchant_id: &str,
    plan: &PlanIn,
    currency: &Currency,
    max_retry: u32,
    first_date: Option<NaiveDate>,
    now: DateTime<Utc>,
) -> store::billing_plans::BillingPlanRow {
    let day = |s: &str| NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").ok();
    let text = |v: &Option<Value>| {
        v.as_ref().map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let small = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    store::billing_plans::BillingPlanRow {
        id: id.to_string(),
        merchant_id: merchant_id.to_string(),
        customer_id: plan.customer_id.clone(),
        token: plan.token.clone(),
        plan_type: text(&plan.plan_type),
        schedule_type: plan
            .schedule_type
            .as_deref()
            .map(str::to_ascii_uppercase)
            .unwrap_or_else(|| "M".into()),
        periodicity: small(plan.periodicity.unwrap_or(1)),
        start_date: plan
            .start_date
            .as_deref()
            .and_then(day)
            .or(first_date)
            .unwrap_or_else(|| now.date_naive()),
        end_date: plan.end_date.as_deref().and_then(day),
        end_type: small(plan.end_type.unwrap_or(1)),
        no_of_payments: plan.no_of_payments.map(small),
        amount: plan.amount.unwrap_or(Decimal::ZERO),
        currency: currency.as_str().to_string(),
        reference_id: plan.reference_id.clone(),
        max_retry: small(max_retry),
        active: plan.active.unwrap_or(true),
        billing_mode: text(&plan.billing_mode),
        bill_day: plan.bill_day.map(small),
    }
}

/// Creates the plan and its bills; a repeat with the same `reference_id`
/// answers with what the first one created.
pub(crate) async fn add(
    conn: &mut PgConnection,
    merchant_id: &str,
    now: DateTime<Utc>,
    request: AddBillingPlan,
    raw: Value,
) -> Result<Value, HandleError> {
    let plan = &request.billing_plan;
    check_id(&plan.customer_id).map_err(|p| Rejection::field("billing_plan.customer_id", p))?;
    if let Some(r) = &plan.reference_id {
        check_id(r).map_err(|p| Rejection::field("billing_plan.reference_id", p))?;
        if let Some(id) = store::billing_plans::find_by_reference(conn, merchant_id, r).await? {
            return answer(conn, &id, now).await;
        }
    }
    if store::customers::find(conn, merchant_id, &plan.customer_id)
        .await?
        .is_none()
    {
        return Err(Rejection::new(
            ErrorCode::CustomerNotFound,
            format!(
                "billing_plan.customer_id '{}' does not exist for this merchant",
                plan.customer_id
            ),
        )
        .into());
    }
    let currency = Currency::parse(plan.currency.as_deref().unwrap_or("INR"))
        .map_err(|p| Rejection::field("billing_plan.currency", p))?;
    let max_retry = plan.max_retry.unwrap_or(crate::domain::catalog::DEFAULT_MAX_RETRY);
    if max_retry > crate::domain::catalog::MAX_RETRY_LIMIT {
        return Err(Rejection::field(
            "billing_plan.max_retry",
            format_args!("must be at most {}", crate::domain::catalog::MAX_RETRY_LIMIT),
        )
        .into());
    }
    let entries = schedule(plan, &request.bill_sequence, &currency, now.date_naive())?;
    let id = format!("bp_{}", new_execution_id());
    let row = stored_plan(
        &id,
        merchant_id,
        plan,
        &currency,
        max_retry,
        entries.first().map(|e| e.date),
        now,
    );
    store::billing_plans::insert(conn, &row, &raw, now).await?;
    if plan.active.unwrap_or(true) {
        for entry in &entries {
            let due_at = entry.date.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or(now);
            let bill = BillRow {
                id: format!("bill_{}", new_execution_id()),
                merchant_id: merchant_id.to_string(),
                customer_id: plan.customer_id.clone(),
                execution_id: None,
                billing_plan_id: Some(id.clone()),
                kind: BillKind::Sequence,
                bill_key: None,
                period_start: None,
                period_end: None,
                sequence_number: Some(entry.sequence_number as i32),
                reference_id: entry.reference_id.clone(),
                currency: currency.to_string(),
                total: entry.amount,
                credit_applied: Decimal::ZERO,
                amount_due: entry.amount,
                status: BillStatus::Scheduled,
                action_on_failure: ActionOnFailure::Skip,
                token: plan.token.clone(),
                due_at,
                notice_sent_at: None,
                attempt: 0,
                max_retry: max_retry as i32,
                next_attempt_at: Some(due_at),
                request_id: None,
                lease_owner: None,
                lease_expires_at: None,
                last_error: None,
                gateway_txn_id: None,
                settled_at: None,
                created_at: now,
                updated_at: now,
            };
            store::bills::insert(conn, &bill).await?;
            let line = crate::domain::bill::Line {
                kind: crate::domain::bill::LineKind::ScheduledAmount,
                metric_id: None,
                quantity: None,
                amount: entry.amount,
                description: format!("payment {} of the schedule", entry.sequence_number),
            };
            store::bills::insert_lines(conn, &bill.id, std::slice::from_ref(&line)).await?;
            let plan_ref =
                json!({"billing_plan_id": id, "customer_id": plan.customer_id, "reference_id": plan.reference_id});
            announce_bill(
                conn,
                EventName::TxnScheduled,
                &bill,
                None,
                now,
                Some(("billing_plan", plan_ref)),
            )
            .await?;
        }
    }
    answer(conn, &id, now).await
}

/// The answer document of `add_billing_plan`.
async fn answer(conn: &mut PgConnection, id: &str, now: DateTime<Utc>) -> Result<Value, HandleError> {
    let Some(plan) = store::billing_plans::find(conn, id).await? else {
        return Err(HandleError::Transient("billing plan vanished".into()));
    };
    let bills = store::billing_plans::bills(conn, id).await?;
    Ok(json!({
        "success": true,
        "billing_response": {
            "result_code": 1,
            "result_text": "SUCCESS",
            "result_sub_code": "000",
            "transaction_datetime": now.format("%m/%d/%Y %H:%M:%S").to_string(),
        },
        "billing_plan": {
            "abid": plan.id,
            "customer_id": plan.customer_id,
            "token": plan.token,
            "plan_type": plan.plan_type,
            "schedule_type": plan.schedule_type,
            "amount": num(plan.amount),
            "currency": plan.currency,
            "start_date": plan.start_date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "end_date": plan.end_date.map(|d| d.to_string()),
            "periodicity": plan.periodicity,
            "end_type": plan.end_type,
            "no_of_payments": plan.no_of_payments,
            "reference_id": plan.reference_id.unwrap_or_default(),
            "name": "",
            "active": plan.active,
            "billing_mode": plan.billing_mode,
            "max_retry": plan.max_retry,
            "bill_day": plan.bill_day,
        },
        "bill_sequence": bills.iter().map(|b| json!({
            "bill_id": b.id,
            "reference_id": b.reference_id.clone().unwrap_or_default(),
            "sequence_number": b.sequence_number,
            "amount": num(b.amount_due),
            "schedule_date": b.due_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "status": b.status,
        })).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inr() -> Currency {
        Currency::parse("INR").expect("currency")
    }

    fn plan(v: Value) -> PlanIn {
        serde_json::from_value(v).expect("plan")
    }

    fn dates(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.date.to_string()).collect()
    }

    #[test]
    fn keys_in_any_case_and_the_documented_example() {
        let body = br#"{"command":"add_billing_plan","billing_plan":{"customer_id":"1000602","Token":"927640180941111",
            "plan_type":"1","schedule_type":"M","start_date":"2021-01-14","end_date":null,"periodicity":"2","end_type":"3",
            "no_of_payments":2,"amount":"10.00","reference_id":"987654","max_retry":4,"active":true,"billing_mode":"0","Bill_Day":9},
            "Bill_Sequence":[{"amount":"10","Schedule_Date":"2021-05-17","reference_id":"16789","sequence_number":"1"}]}"#;
        let parsed = crate::protocol::billing_plan::parse(body).expect("parses");
        assert_eq!(parsed.billing_plan.token.as_deref(), Some("927640180941111"));
        assert_eq!(parsed.billing_plan.bill_day, Some(9));
        assert_eq!(parsed.bill_sequence.len(), 1);
        let today = NaiveDate::from_ymd_opt(2021, 1, 10).expect("date");
        let entries = schedule(&parsed.billing_plan, &parsed.bill_sequence, &inr(), today).expect("schedule");
        assert_eq!(dates(&entries), ["2021-05-17"]);
        assert_eq!(entries[0].amount, Decimal::TEN);
        // Dates outside the window are refused, whichever field holds them.
        let later = NaiveDate::from_ymd_opt(2026, 12, 2).expect("date");
        let err = schedule(&parsed.billing_plan, &parsed.bill_sequence, &inr(), later).expect_err("1900-like");
        assert!(err.message.starts_with("billing_plan.start_date"), "{}", err.message);
    }

    #[test]
    fn a_schedule_never_reaches_past_ten_years() {
        let p = plan(
            json!({"customer_id":"c","schedule_type":"Y","start_date":"2026-12-01","periodicity":20,"end_type":3,"no_of_payments":3,"amount":"10"}),
        );
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).expect("date");
        let err = schedule(&p, &[], &inr(), today).expect_err("far future");
        assert!(err.message.starts_with("billing_plan.periodicity"), "{}", err.message);
    }

    #[test]
    fn generated_monthly_on_a_bill_day_every_two_months() {
        let p = plan(
            json!({"customer_id":"c","schedule_type":"M","start_date":"2021-01-14","periodicity":2,"end_type":3,"no_of_payments":3,"amount":"10","bill_day":9}),
        );
        assert_eq!(
            dates(&generate(&p, &inr()).expect("ok")),
            ["2021-02-09", "2021-04-09", "2021-06-09"]
        );
        let p = plan(
            json!({"customer_id":"c","schedule_type":"M","start_date":"2024-01-31","end_type":3,"no_of_payments":3,"amount":"10"}),
        );
        assert_eq!(
            dates(&generate(&p, &inr()).expect("ok")),
            ["2024-01-31", "2024-02-29", "2024-03-31"]
        );
    }

    #[test]
    fn end_types() {
        let p = plan(
            json!({"customer_id":"c","schedule_type":"W","start_date":"2026-01-01","end_type":2,"end_date":"2026-01-29","amount":"1"}),
        );
        assert_eq!(generate(&p, &inr()).expect("ok").len(), 5);
        let p =
            plan(json!({"customer_id":"c","schedule_type":"D","start_date":"2026-01-01","end_type":1,"amount":"1"}));
        assert_eq!(generate(&p, &inr()).expect("ok").len(), OPEN_ENDED_ENTRIES);
        let p = plan(
            json!({"customer_id":"c","schedule_type":"Y","start_date":"2028-02-29","end_type":3,"no_of_payments":2,"amount":"1"}),
        );
        assert_eq!(dates(&generate(&p, &inr()).expect("ok")), ["2028-02-29", "2029-02-28"]);
    }

    #[test]
    fn rules_name_their_field() {
        let cases = [
            (
                json!({"customer_id":"c","schedule_type":"Q","start_date":"2026-01-01","amount":"1"}),
                "billing_plan.schedule_type",
            ),
            (
                json!({"customer_id":"c","schedule_type":"M","amount":"1"}),
                "billing_plan.start_date",
            ),
            (
                json!({"customer_id":"c","schedule_type":"M","start_date":"2026-01-01","amount":"0"}),
                "billing_plan.amount",
            ),
            (
                json!({"customer_id":"c","schedule_type":"M","start_date":"2026-01-01","amount":"1","end_type":3}),
                "billing_plan.no_of_payments",
            ),
            (
                json!({"customer_id":"c","schedule_type":"M","start_date":"2026-01-01","amount":"1","end_type":2}),
                "billing_plan.end_date",
            ),
            (
                json!({"customer_id":"c","schedule_type":"M","start_date":"2026-01-01","amount":"1.001"}),
                "billing_plan.amount",
            ),
        ];
        for (p, field) in cases {
            let err = generate(&plan(p), &inr()).expect_err("invalid");
            assert!(err.message.starts_with(field), "{field}: {}", err.message);
        }
        let err = schedule(
            &plan(json!({"customer_id":"c","schedule_type":"Q"})),
            &[EntryIn {
                amount: Decimal::ONE,
                schedule_date: "2026-01-01".into(),
                reference_id: None,
                sequence_number: None,
            }],
            &inr(),
            NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
        )
        .expect_err("bad schedule_type even with a sequence");
        assert!(err.message.starts_with("billing_plan.schedule_type"), "{}", err.message);
        let bad = vec![EntryIn {
            amount: Decimal::ONE,
            schedule_date: "17/05/2021".into(),
            reference_id: None,
            sequence_number: None,
        }];
        let today = NaiveDate::from_ymd_opt(2021, 5, 1).expect("date");
        let err = schedule(&plan(json!({"customer_id":"c"})), &bad, &inr(), today).expect_err("bad date");
        assert!(
            err.message.starts_with("bill_sequence[0].schedule_date"),
            "{}",
            err.message
        );
    }
}
