//! `add_billing_plan`: `billing::plans::parse` on any body, then, for a body
//! that decodes, the checks the command makes before it reads the database:
//! the ids, the currency and `billing::plans::schedule` (the explicit
//! `bill_sequence`, or the entries generated from the plan's fields).
//!
//! Invariants: every rejection keeps the shared promises (code `INVALID_JSON`
//! or `INVALID_FIELD`; message length and quotes); an accepted schedule holds
//! at most 366 entries with distinct, increasing sequence numbers and amounts
//! greater than zero in whole minor units; a generated schedule starts on or
//! after `start_date`, steps exactly `periodicity` days, weeks, months or years
//! (a month's day clamped to its length), ends by `end_date` (end_type 2) and
//! holds at most `no_of_payments` (end_type 3) or 12 (end_type 1) entries.
#![no_main]

use billing_worker::billing::plans::{self, Entry, MAX_ENTRIES, OPEN_ENDED_ENTRIES};
use billing_worker::protocol::billing_plan::{self, AddBillingPlan};
use billing_worker::domain::ids::check_id;
use billing_worker::domain::money::Currency;
use billing_worker::error::{ErrorCode, Rejection};
use billing_worker_fuzz::check_rejection;
use chrono::{Datelike, NaiveDate};
use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;

const CODES: &[ErrorCode] = &[ErrorCode::InvalidJson, ErrorCode::InvalidField];

fn reject(body: &[u8], rejection: &Rejection) {
    check_rejection("billing_plan", rejection, CODES, &[body]);
}

fuzz_target!(|body: &[u8]| {
    let request = match billing_plan::parse(body) {
        Ok(request) => request,
        Err(rejection) => return reject(body, &rejection),
    };
    let plan = &request.billing_plan;
    if let Err(problem) = check_id(&plan.customer_id) {
        reject(body, &Rejection::field("billing_plan.customer_id", problem));
    }
    if let Some(Err(problem)) = plan.reference_id.as_deref().map(check_id) {
        reject(body, &Rejection::field("billing_plan.reference_id", problem));
    }
    let currency = match Currency::parse(plan.currency.as_deref().unwrap_or("INR")) {
        Ok(currency) => currency,
        Err(problem) => return reject(body, &Rejection::field("billing_plan.currency", problem)),
    };
    // A fixed day, so that a run is repeatable; the seeds' dates lie near it.
    let today = chrono::NaiveDate::from_ymd_opt(2021, 6, 1).unwrap_or_default();
    match plans::schedule(plan, &request.bill_sequence, &currency, today) {
        Ok(entries) => check_schedule(&request, &currency, &entries),
        Err(rejection) => reject(body, &rejection),
    }
});

fn month_index(d: NaiveDate) -> i64 {
    i64::from(d.year()) * 12 + i64::from(d.month0())
}

fn last_day_of_month(d: NaiveDate) -> u32 {
    (28..=31).rev().find(|&day| d.with_day(day).is_some()).unwrap_or(28)
}

fn check_schedule(request: &AddBillingPlan, currency: &Currency, entries: &[Entry]) {
    let plan = &request.billing_plan;
    assert!(
        entries.len() <= MAX_ENTRIES,
        "[billing_plan] invariant `entry-limit`: {} entries accepted",
        entries.len()
    );
    for pair in entries.windows(2) {
        assert!(
            pair[0].sequence_number < pair[1].sequence_number,
            "[billing_plan] invariant `sequence-numbers`: {} then {}",
            pair[0].sequence_number,
            pair[1].sequence_number
        );
    }
    for e in entries {
        assert!(
            e.amount > Decimal::ZERO && currency.fits_minor_units(e.amount),
            "[billing_plan] invariant `amounts`: entry {} for {} {currency} accepted",
            e.sequence_number,
            e.amount
        );
    }
    if !request.bill_sequence.is_empty() {
        assert_eq!(
            entries.len(),
            request.bill_sequence.len(),
            "[billing_plan] invariant `explicit-entries`: another number of entries than sent"
        );
        return;
    }

    // Generated: the oracle below follows the README's rules, not the code.
    let Some(first) = entries.first() else { return };
    let start = plan
        .start_date
        .as_deref()
        .and_then(|s| NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").ok())
        .expect("[billing_plan] invariant `generated`: a schedule generated without a valid start_date");
    assert!(
        first.date >= start,
        "[billing_plan] invariant `generated-start`: first entry {} before start_date {start}",
        first.date
    );
    let every = i64::from(plan.periodicity.unwrap_or(1));
    let unit = plan.schedule_type.as_deref().unwrap_or_default().to_ascii_uppercase();
    for (k, e) in entries.iter().enumerate() {
        let k = k as i64;
        assert_eq!(
            e.sequence_number as i64,
            k + 1,
            "[billing_plan] invariant `generated-numbers`"
        );
        let step_ok = match unit.as_str() {
            "D" => (e.date - first.date).num_days() == k * every,
            "W" => (e.date - first.date).num_days() == 7 * k * every,
            "M" => {
                let day = plan.bill_day.unwrap_or(start.day());
                month_index(e.date) - month_index(first.date) == k * every
                    && e.date.day() == day.min(last_day_of_month(e.date))
            }
            "Y" => {
                i64::from(e.date.year() - first.date.year()) == k * every
                    && e.date.month() == first.date.month()
                    && e.date.day() == first.date.day().min(last_day_of_month(e.date))
            }
            other => panic!("[billing_plan] invariant `generated`: schedule_type {other:?} generated entries"),
        };
        assert!(
            step_ok,
            "[billing_plan] invariant `generated-step`: entry {} on {} is not {} x {every} {unit} after {}",
            k + 1,
            e.date,
            k,
            first.date
        );
    }
    let last = entries.last().unwrap_or(first);
    match plan.end_type.unwrap_or(1) {
        1 => assert!(
            entries.len() <= OPEN_ENDED_ENTRIES,
            "[billing_plan] invariant `generated-end`: {} entries for a schedule that never ends",
            entries.len()
        ),
        2 => {
            let end = plan
                .end_date
                .as_deref()
                .and_then(|s| NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").ok());
            assert!(
                end.is_some_and(|end| last.date <= end),
                "[billing_plan] invariant `generated-end`: entry on {} after end_date {end:?}",
                last.date
            );
        }
        3 => assert!(
            plan.no_of_payments.is_some_and(|n| entries.len() <= n as usize),
            "[billing_plan] invariant `generated-end`: {} entries for no_of_payments {:?}",
            entries.len(),
            plan.no_of_payments
        ),
        other => panic!("[billing_plan] invariant `generated-end`: end_type {other} accepted"),
    }
}
