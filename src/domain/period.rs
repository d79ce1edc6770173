//! Billing periods: where each period of an execution starts and ends.
//!
//! Periods follow the plan interval from the execution's
//! `billing_start_date`, optionally anchored to a day of the month by the
//! `ON` plan rule. Everything here is pure: the current time is always passed
//! in, so the same inputs give the same periods on every worker.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{PlanInterval, PlanModel, PlanRuleType, bills_on_present};

/// How an execution's periods are laid out.
///
/// Boundaries, numbered from `boundary(0) == start`:
/// - `Daily`, `Weekly`, `Fortnightly`: `start` plus k × 1, 7 or 14 days of
///   24 hours; `anchor_day` is ignored.
/// - `Monthly`, `Bimonthly`, `Quarterly`, `Halfyearly`, `Yearly` (n = 1, 2,
///   3, 6, 12 months):
///   - without an anchor, `start` plus k·n months at `start`'s time of day,
///     on `start`'s day of month clamped to each month's length;
///   - with anchor day D, a short first period up to the first day-D midnight
///     (UTC) strictly after `start`, in `start`'s month or the next (a start
///     exactly on an anchor date has no such stub), then
///     full n-month periods on day D at 00:00 UTC.
///
///   A clamp never carries over: after a short month the day goes back to
///   the start's day (or D) whenever the month has it.
/// - `Onetime`, `Aspresented`: one open-ended period from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// The plan's billing interval.
    pub interval: PlanInterval,
    /// The execution's `billing_start_date`; always the first boundary.
    pub start: DateTime<Utc>,
    /// The `ON` rule's day of month (1..=31). Values outside that range are
    /// ignored even when set directly on the field.
    pub anchor_day: Option<u32>,
}

/// A half-open billing period `[start, end)`; `end == None` means
/// open-ended (the interval has no further boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Period {
    /// First instant in the period (inclusive).
    pub start: DateTime<Utc>,
    /// First instant after the period (exclusive), or `None` if it never ends.
    pub end: Option<DateTime<Utc>>,
}

impl Period {
    /// True when `start <= t` and `t` is before `end` (if any).
    #[cfg(test)]
    pub(crate) fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && self.end.is_none_or(|end| t < end)
    }
}

/// How one interval steps from boundary to boundary.
#[derive(Debug, Clone, Copy)]
enum Step {
    Days(i64),
    Months(u32),
    Never,
}

fn step_of(interval: PlanInterval) -> Step {
    match interval {
        PlanInterval::Daily => Step::Days(1),
        PlanInterval::Weekly => Step::Days(7),
        PlanInterval::Fortnightly => Step::Days(14),
        PlanInterval::Monthly => Step::Months(1),
        PlanInterval::Bimonthly => Step::Months(2),
        PlanInterval::Quarterly => Step::Months(3),
        PlanInterval::Halfyearly => Step::Months(6),
        PlanInterval::Yearly => Step::Months(12),
        PlanInterval::Onetime | PlanInterval::Aspresented => Step::Never,
    }
}

fn valid_anchor(day: Option<u32>) -> Option<u32> {
    day.filter(|d| (1..=31).contains(d))
}

impl Schedule {
    /// Builds a schedule. An `anchor_day` outside 1..=31 is stored as `None`
    /// (no anchor), so a bad rule value degrades to un-anchored periods
    /// rather than failing billing; plan validation is expected to reject it
    /// earlier.
    pub(crate) fn new(interval: PlanInterval, start: DateTime<Utc>, anchor_day: Option<u32>) -> Schedule {
        Schedule {
            interval,
            start,
            anchor_day: valid_anchor(anchor_day),
        }
    }

    /// The k-th boundary: `boundary(0) == start`, and boundaries strictly
    /// increase with k. `None` when the interval has no boundary beyond the
    /// start (`Onetime`, `Aspresented`) and `k > 0`, or when the instant
    /// would fall outside the representable date range.
    pub(crate) fn boundary(&self, k: u32) -> Option<DateTime<Utc>> {
        if k == 0 {
            return Some(self.start);
        }
        match step_of(self.interval) {
            Step::Never => None,
            Step::Days(days) => {
                let offset = TimeDelta::try_days(i64::from(k).checked_mul(days)?)?;
                self.start.checked_add_signed(offset)
            }
            Step::Months(n) => match valid_anchor(self.anchor_day) {
                None => add_months_clamped(self.start, k.checked_mul(n)?, self.start.day()),
                // A start exactly on an anchor date has no stub: whole periods from it.
                Some(day) if is_anchor_instant(self.start, day) => {
                    add_months_clamped(self.start, k.checked_mul(n)?, day)
                }
                Some(day) => {
                    let first = first_anchor_after(self.start, day)?;
                    add_months_clamped(first, (k - 1).checked_mul(n)?, day)
                }
            },
        }
    }

    /// The period containing instant `t`; a boundary instant belongs to the
    /// period it starts. For `t` before `start`, the first period, so usage
    /// stamped slightly early still lands in a real period. Runs in constant
    /// time however far `t` is from `start`.
    pub(crate) fn period_containing(&self, t: DateTime<Utc>) -> Period {
        let (k, start) = self.locate(t);
        Period {
            start,
            end: self.next_boundary(k),
        }
    }

    /// The period that starts at `from` when `from` is a boundary, otherwise
    /// the period containing `from` (the first period if `from` is before
    /// `start`). Because a boundary belongs to the period it starts, this is
    /// the same as [`Schedule::period_containing`]; it exists so that
    /// resuming from a stored period end reads as what it means.
    #[cfg(test)]
    pub(crate) fn period_starting_at(&self, from: DateTime<Utc>) -> Period {
        self.period_containing(from)
    }

    fn next_boundary(&self, k: u32) -> Option<DateTime<Utc>> {
        k.checked_add(1).and_then(|next| self.boundary(next))
    }

    /// Index and start of the period containing `t`. An arithmetic estimate
    /// (off by at most one period, because of clamping and partial days)
    /// is corrected by stepping, so distant instants cost no more than near
    /// ones. Boundaries strictly increase, so both loops end.
    fn locate(&self, t: DateTime<Utc>) -> (u32, DateTime<Utc>) {
        if t <= self.start {
            return (0, self.start);
        }
        let mut k = self.estimate_index(t);
        let mut start = loop {
            if k == 0 {
                break self.start;
            }
            match self.boundary(k) {
                Some(b) if b <= t => break b,
                _ => k -= 1,
            }
        };
        while let Some(next) = self.next_boundary(k) {
            if next > t {
                break;
            }
            k += 1;
            start = next;
        }
        (k, start)
    }

    /// Close guess of the index of the period containing `t` (`t > start`).
    fn estimate_index(&self, t: DateTime<Utc>) -> u32 {
        let guess = match step_of(self.interval) {
            Step::Never => 0,
            Step::Days(days) => (t - self.start).num_days() / days,
            Step::Months(n) => match valid_anchor(self.anchor_day) {
                None => (month_index(t) - month_index(self.start)) / i64::from(n),
                Some(day) => match first_anchor_after(self.start, day) {
                    Some(first) if first <= t => 1 + (month_index(t) - month_index(first)) / i64::from(n),
                    _ => 0,
                },
            },
        };
        u32::try_from(guess.max(0)).unwrap_or(u32::MAX)
    }
}

/// Months since year 0, so month distances are a subtraction.
fn month_index(t: DateTime<Utc>) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

/// Whether `t` is day `day` (clamped to its month) at 00:00 UTC.
fn is_anchor_instant(t: DateTime<Utc>, day: u32) -> bool {
    let midnight = t.date_naive().and_time(NaiveTime::MIN).and_utc();
    add_months_clamped(midnight, 0, day) == Some(t)
}

/// First instant strictly after `start` that is day `day` (clamped) at
/// 00:00 UTC, in `start`'s month or the next one.
fn first_anchor_after(start: DateTime<Utc>, day: u32) -> Option<DateTime<Utc>> {
    let midnight = start.date_naive().and_time(NaiveTime::MIN).and_utc();
    let this_month = add_months_clamped(midnight, 0, day)?;
    if this_month > start {
        Some(this_month)
    } else {
        add_months_clamped(midnight, 1, day)
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// `t` moved forward by `months` calendar months, at the same time of day,
/// on day `day` clamped to the target month's length (a `day` of 0 is taken
/// as 1). The clamp applies only to the target month, so callers keep
/// passing the wanted day and never drift after a short month. `None` when
/// the result is outside the representable date range.
pub(crate) fn add_months_clamped(t: DateTime<Utc>, months: u32, day: u32) -> Option<DateTime<Utc>> {
    let total = month_index(t).checked_add(i64::from(months))?;
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    // rem_euclid(12) is in 0..12, so the cast cannot truncate.
    let month = total.rem_euclid(12) as u32 + 1;
    let day = day.clamp(1, days_in_month(year, month));
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    Some(date.and_time(t.time()).and_utc())
}

/// Days back a date from the wire may lie (billing start, schedule dates).
pub(crate) const MAX_DAYS_BACK: u64 = 366;
/// Years ahead a date from the wire may lie.
pub(crate) const MAX_YEARS_AHEAD: u32 = 10;

/// Checks that a wire date lies within the last [`MAX_DAYS_BACK`] days and
/// the next [`MAX_YEARS_AHEAD`] years of `today`, so that no date makes the
/// worker catch up a century of periods or plan a millennium ahead.
pub(crate) fn check_date_window(date: chrono::NaiveDate, today: chrono::NaiveDate) -> Result<(), String> {
    let earliest = today.checked_sub_days(chrono::Days::new(MAX_DAYS_BACK));
    let latest = today.checked_add_months(chrono::Months::new(12 * MAX_YEARS_AHEAD));
    match (earliest, latest) {
        (Some(earliest), Some(latest)) if date >= earliest && date <= latest => Ok(()),
        _ => Err(format!(
            "must lie within the last {MAX_DAYS_BACK} days and the next {MAX_YEARS_AHEAD} years"
        )),
    }
}

/// The plan's part of an execution's period layout: its interval, its
/// model, and the day its periods are anchored to (the `ON` rule's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlanCalendar {
    pub interval: PlanInterval,
    pub(crate) model: PlanModel,
    pub anchor_day: Option<u32>,
}

impl PlanCalendar {
    /// The calendar of a plan's fields: only the `ON` rule anchors periods
    /// (`BEFORE` and `AFTER` move debits, not periods).
    pub(crate) fn new(
        interval: PlanInterval,
        model: PlanModel,
        rule_type: PlanRuleType,
        rule_value: Option<i32>,
    ) -> PlanCalendar {
        let anchor_day = (rule_type == PlanRuleType::On)
            .then_some(rule_value)
            .flatten()
            .and_then(|v| u32::try_from(v).ok());
        PlanCalendar {
            interval,
            model,
            anchor_day,
        }
    }
}

/// What an execution's periods hang on: its plan's calendar, and its start
/// (the billing start, else activation, else creation) and how far it has
/// been billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeriodBasis {
    pub calendar: PlanCalendar,
    pub billing_start_date: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub billed_until: Option<DateTime<Utc>>,
}

impl PeriodBasis {
    /// The schedule of periods, anchored when the plan says so. Plans billed
    /// as presented (and `ONETIME`) have one open period, which starts again
    /// where the last bill ended.
    pub(crate) fn schedule(&self) -> Schedule {
        let PlanCalendar {
            mut interval,
            model,
            anchor_day,
        } = self.calendar;
        let mut start = self.billing_start_date.or(self.activated_at).unwrap_or(self.created_at);
        if bills_on_present(interval, model) || interval == PlanInterval::Onetime {
            interval = PlanInterval::Aspresented;
            start = self.billed_until.unwrap_or(start);
        }
        Schedule::new(interval, start, anchor_day)
    }

    /// The start of the period usage at instant `t` counts in: its own
    /// period, unless that was billed already, then the open one.
    pub(crate) fn period_for(&self, schedule: &Schedule, t: DateTime<Utc>) -> DateTime<Utc> {
        let at = match self.billed_until {
            Some(billed) if t < billed => billed,
            _ => t,
        };
        schedule.period_containing(at).start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// All periods that end at or before `now`, in order, starting with the
    /// one containing `from` (the periods a worker that was away catches up). At most `limit` periods are returned, so one call does
    /// bounded work; call again from the last period's end for the rest.
    /// Open-ended intervals never close and give none.
    fn closed_periods(s: &Schedule, from: DateTime<Utc>, now: DateTime<Utc>, limit: usize) -> Vec<Period> {
        let mut out = Vec::new();
        let (mut k, mut start) = s.locate(from);
        while out.len() < limit {
            let Some(end) = s.next_boundary(k) else {
                break;
            };
            if end > now {
                break;
            }
            out.push(Period { start, end: Some(end) });
            // next_boundary(k) was Some, so k + 1 did not overflow.
            k += 1;
            start = end;
        }
        out
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid RFC 3339 in test")
            .with_timezone(&Utc)
    }

    fn boundaries(s: &Schedule, count: u32) -> Vec<Option<DateTime<Utc>>> {
        (0..count).map(|k| s.boundary(k)).collect()
    }

    const ALL: [PlanInterval; 10] = [
        PlanInterval::Onetime,
        PlanInterval::Daily,
        PlanInterval::Weekly,
        PlanInterval::Fortnightly,
        PlanInterval::Monthly,
        PlanInterval::Bimonthly,
        PlanInterval::Quarterly,
        PlanInterval::Halfyearly,
        PlanInterval::Yearly,
        PlanInterval::Aspresented,
    ];

    #[test]
    fn boundaries_follow_interval_anchor_and_month_ends() {
        use PlanInterval::*;
        // (interval, start, anchor, boundary(0..) expected)
        let cases: &[(PlanInterval, &str, Option<u32>, &[&str])] = &[
            // Anchor 31 clamps in February and returns to 31 in March.
            (
                Monthly,
                "2026-01-31T00:00:00Z",
                Some(31),
                &[
                    "2026-01-31T00:00:00Z",
                    "2026-02-28T00:00:00Z",
                    "2026-03-31T00:00:00Z",
                    "2026-04-30T00:00:00Z",
                    "2026-05-31T00:00:00Z",
                ],
            ),
            (
                Monthly,
                "2028-01-31T00:00:00Z",
                Some(31),
                &["2028-01-31T00:00:00Z", "2028-02-29T00:00:00Z", "2028-03-31T00:00:00Z"],
            ),
            // Anchors 29/30/31 across 2027 (common) and 2028 (leap).
            (
                Monthly,
                "2027-02-01T09:00:00Z",
                Some(29),
                &["2027-02-01T09:00:00Z", "2027-02-28T00:00:00Z", "2027-03-29T00:00:00Z"],
            ),
            (
                Monthly,
                "2027-12-30T12:00:00Z",
                Some(29),
                &[
                    "2027-12-30T12:00:00Z",
                    "2028-01-29T00:00:00Z",
                    "2028-02-29T00:00:00Z",
                    "2028-03-29T00:00:00Z",
                ],
            ),
            (
                Monthly,
                "2027-01-30T08:00:00Z",
                Some(30),
                &["2027-01-30T08:00:00Z", "2027-02-28T00:00:00Z", "2027-03-30T00:00:00Z"],
            ),
            (
                Monthly,
                "2028-01-31T00:00:00Z",
                Some(30),
                &["2028-01-31T00:00:00Z", "2028-02-29T00:00:00Z", "2028-03-30T00:00:00Z"],
            ),
            (
                Monthly,
                "2027-11-15T00:00:00Z",
                Some(31),
                &[
                    "2027-11-15T00:00:00Z",
                    "2027-11-30T00:00:00Z",
                    "2027-12-31T00:00:00Z",
                    "2028-01-31T00:00:00Z",
                    "2028-02-29T00:00:00Z",
                    "2028-03-31T00:00:00Z",
                ],
            ),
            // First anchored boundary: later this month, next month, or next
            // month when start is exactly on the anchor.
            (
                Monthly,
                "2026-01-10T15:00:00Z",
                Some(1),
                &["2026-01-10T15:00:00Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"],
            ),
            (
                Monthly,
                "2026-01-10T15:00:00Z",
                Some(20),
                &["2026-01-10T15:00:00Z", "2026-01-20T00:00:00Z", "2026-02-20T00:00:00Z"],
            ),
            (
                Monthly,
                "2026-01-20T00:00:00Z",
                Some(20),
                &["2026-01-20T00:00:00Z", "2026-02-20T00:00:00Z", "2026-03-20T00:00:00Z"],
            ),
            (
                Monthly,
                "2026-01-20T00:00:01Z",
                Some(20),
                &["2026-01-20T00:00:01Z", "2026-02-20T00:00:00Z"],
            ),
            // Longer anchored intervals: short stub, then full periods.
            (
                Quarterly,
                "2026-01-10T15:00:00Z",
                Some(1),
                &[
                    "2026-01-10T15:00:00Z",
                    "2026-02-01T00:00:00Z",
                    "2026-05-01T00:00:00Z",
                    "2026-08-01T00:00:00Z",
                ],
            ),
            (
                Yearly,
                "2026-03-05T10:00:00Z",
                Some(31),
                &["2026-03-05T10:00:00Z", "2026-03-31T00:00:00Z", "2027-03-31T00:00:00Z"],
            ),
            // No anchor: start's time of day and day of month, clamped.
            (
                Monthly,
                "2026-01-31T10:30:00Z",
                None,
                &[
                    "2026-01-31T10:30:00Z",
                    "2026-02-28T10:30:00Z",
                    "2026-03-31T10:30:00Z",
                    "2026-04-30T10:30:00Z",
                    "2026-05-31T10:30:00Z",
                ],
            ),
            (
                Bimonthly,
                "2025-12-31T23:59:59Z",
                None,
                &[
                    "2025-12-31T23:59:59Z",
                    "2026-02-28T23:59:59Z",
                    "2026-04-30T23:59:59Z",
                    "2026-06-30T23:59:59Z",
                    "2026-08-31T23:59:59Z",
                ],
            ),
            (
                Halfyearly,
                "2026-08-31T06:00:00Z",
                None,
                &["2026-08-31T06:00:00Z", "2027-02-28T06:00:00Z", "2027-08-31T06:00:00Z"],
            ),
            (
                Yearly,
                "2028-02-29T12:00:00Z",
                None,
                &[
                    "2028-02-29T12:00:00Z",
                    "2029-02-28T12:00:00Z",
                    "2030-02-28T12:00:00Z",
                    "2031-02-28T12:00:00Z",
                    "2032-02-29T12:00:00Z",
                ],
            ),
            // Day-based intervals ignore the anchor.
            (
                Daily,
                "2026-02-27T18:00:00Z",
                Some(1),
                &["2026-02-27T18:00:00Z", "2026-02-28T18:00:00Z", "2026-03-01T18:00:00Z"],
            ),
            (
                Weekly,
                "2026-12-28T00:00:00Z",
                Some(15),
                &["2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z", "2027-01-11T00:00:00Z"],
            ),
            (
                Fortnightly,
                "2028-02-20T05:00:00Z",
                None,
                &["2028-02-20T05:00:00Z", "2028-03-05T05:00:00Z", "2028-03-19T05:00:00Z"],
            ),
        ];
        for (interval, start, anchor, expected) in cases {
            let s = Schedule::new(*interval, at(start), *anchor);
            let want: Vec<_> = expected.iter().map(|e| Some(at(e))).collect();
            let count = u32::try_from(expected.len()).expect("small table");
            assert_eq!(
                boundaries(&s, count),
                want,
                "{interval:?} from {start} anchor {anchor:?}"
            );
        }
    }

    #[test]
    fn open_ended_intervals_have_only_the_start() {
        let start = at("2026-03-01T12:00:00Z");
        for interval in [PlanInterval::Onetime, PlanInterval::Aspresented] {
            let s = Schedule::new(interval, start, Some(5));
            assert_eq!(s.boundary(0), Some(start));
            assert_eq!(s.boundary(1), None);
            assert_eq!(s.boundary(u32::MAX), None);
            let open = Period { start, end: None };
            for t in ["2020-01-01T00:00:00Z", "2026-03-01T12:00:00Z", "2226-03-01T12:00:00Z"] {
                assert_eq!(s.period_containing(at(t)), open, "{interval:?} at {t}");
                assert_eq!(s.period_starting_at(at(t)), open, "{interval:?} at {t}");
            }
        }
    }

    #[test]
    fn out_of_range_anchor_is_no_anchor() {
        let start = at("2026-01-31T10:30:00Z");
        for bad in [Some(0), Some(32), Some(u32::MAX), None] {
            let s = Schedule::new(PlanInterval::Monthly, start, bad);
            assert_eq!(s.anchor_day, None, "{bad:?}");
            assert_eq!(s.boundary(1), Some(at("2026-02-28T10:30:00Z")));
        }
        // Set directly on the public field: still ignored.
        let direct = Schedule {
            interval: PlanInterval::Monthly,
            start,
            anchor_day: Some(40),
        };
        assert_eq!(direct.boundary(1), Some(at("2026-02-28T10:30:00Z")));
        assert_eq!(
            direct.period_containing(at("2026-03-01T00:00:00Z")).start,
            at("2026-02-28T10:30:00Z")
        );
    }

    #[test]
    fn boundaries_past_the_date_range_are_none() {
        let start = at("2026-01-01T00:00:00Z");
        for interval in ALL {
            let s = Schedule::new(interval, start, Some(15));
            assert_eq!(s.boundary(u32::MAX), None, "{interval:?}");
        }
        let near_end = DateTime::<Utc>::MAX_UTC - TimeDelta::days(3);
        let s = Schedule::new(PlanInterval::Monthly, near_end, None);
        assert_eq!(s.boundary(1), None);
        assert_eq!(
            s.period_containing(DateTime::<Utc>::MAX_UTC),
            Period {
                start: near_end,
                end: None
            }
        );
        let s = Schedule::new(PlanInterval::Daily, near_end, None);
        assert!(s.boundary(3).is_some());
        assert_eq!(s.boundary(4), None);
        let last = s.period_containing(DateTime::<Utc>::MAX_UTC);
        assert_eq!(last.end, None);
        assert!(last.contains(DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn add_months_clamped_keeps_time_and_clamps_day() {
        // (t, months, day, expected)
        let cases: &[(&str, u32, u32, Option<&str>)] = &[
            ("2026-01-31T10:30:00Z", 1, 31, Some("2026-02-28T10:30:00Z")),
            ("2028-01-31T10:30:00Z", 1, 31, Some("2028-02-29T10:30:00Z")),
            ("2026-01-31T10:30:00Z", 2, 31, Some("2026-03-31T10:30:00Z")),
            ("2026-01-15T00:00:00Z", 0, 31, Some("2026-01-31T00:00:00Z")),
            ("2026-01-15T00:00:00Z", 0, 0, Some("2026-01-01T00:00:00Z")),
            ("2026-11-30T23:59:59.5Z", 3, 30, Some("2027-02-28T23:59:59.5Z")),
            ("2100-01-29T00:00:00Z", 1, 29, Some("2100-02-28T00:00:00Z")),
            ("2000-01-29T00:00:00Z", 1, 29, Some("2000-02-29T00:00:00Z")),
            ("2026-12-31T00:00:00Z", 12, 31, Some("2027-12-31T00:00:00Z")),
            ("2026-01-01T00:00:00Z", u32::MAX, 1, None),
        ];
        for (t, months, day, expected) in cases {
            assert_eq!(
                add_months_clamped(at(t), *months, *day),
                expected.map(at),
                "{t} + {months} months, day {day}"
            );
        }
    }

    #[test]
    fn period_containing_on_and_around_boundaries() {
        let anchored = Schedule::new(PlanInterval::Monthly, at("2026-01-10T15:00:00Z"), Some(1));
        let plain = Schedule::new(PlanInterval::Monthly, at("2026-01-31T10:30:00Z"), None);
        // (schedule, t, expected start, expected end)
        let cases: &[(&Schedule, &str, &str, &str)] = &[
            // Before start: the first period.
            (
                &anchored,
                "2025-06-01T00:00:00Z",
                "2026-01-10T15:00:00Z",
                "2026-02-01T00:00:00Z",
            ),
            (
                &anchored,
                "2026-01-10T14:59:59Z",
                "2026-01-10T15:00:00Z",
                "2026-02-01T00:00:00Z",
            ),
            // Start itself and inside the stub.
            (
                &anchored,
                "2026-01-10T15:00:00Z",
                "2026-01-10T15:00:00Z",
                "2026-02-01T00:00:00Z",
            ),
            (
                &anchored,
                "2026-01-31T23:59:59.999999999Z",
                "2026-01-10T15:00:00Z",
                "2026-02-01T00:00:00Z",
            ),
            // A boundary belongs to the period it starts.
            (
                &anchored,
                "2026-02-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
            ),
            (
                &anchored,
                "2026-02-28T23:59:59Z",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
            ),
            (
                &anchored,
                "2026-03-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
                "2026-04-01T00:00:00Z",
            ),
            // Clamped month ends without an anchor.
            (
                &plain,
                "2026-02-28T10:29:59Z",
                "2026-01-31T10:30:00Z",
                "2026-02-28T10:30:00Z",
            ),
            (
                &plain,
                "2026-02-28T10:30:00Z",
                "2026-02-28T10:30:00Z",
                "2026-03-31T10:30:00Z",
            ),
            (
                &plain,
                "2026-03-31T10:29:59Z",
                "2026-02-28T10:30:00Z",
                "2026-03-31T10:30:00Z",
            ),
            (
                &plain,
                "2026-03-31T10:30:00Z",
                "2026-03-31T10:30:00Z",
                "2026-04-30T10:30:00Z",
            ),
            // Early in the month but before the clamped day: previous period.
            (
                &plain,
                "2026-05-01T00:00:00Z",
                "2026-04-30T10:30:00Z",
                "2026-05-31T10:30:00Z",
            ),
            // Far in the future.
            (
                &anchored,
                "2426-07-15T08:00:00Z",
                "2426-07-01T00:00:00Z",
                "2426-08-01T00:00:00Z",
            ),
            (
                &plain,
                "2426-02-28T10:30:00Z",
                "2426-02-28T10:30:00Z",
                "2426-03-31T10:30:00Z",
            ),
            (
                &plain,
                "2426-02-28T10:29:00Z",
                "2426-01-31T10:30:00Z",
                "2426-02-28T10:30:00Z",
            ),
        ];
        for (s, t, start, end) in cases {
            let p = s.period_containing(at(t));
            assert_eq!(
                p,
                Period {
                    start: at(start),
                    end: Some(at(end))
                },
                "at {t}"
            );
        }
    }

    #[test]
    fn period_containing_far_future_daily() {
        let start = at("2026-01-01T06:00:00Z");
        let s = Schedule::new(PlanInterval::Daily, start, None);
        // (t, expected k of the containing period)
        let cases: &[(TimeDelta, u32)] = &[
            (TimeDelta::days(5000) + TimeDelta::hours(3), 5000),
            (TimeDelta::days(5000), 5000),
            (TimeDelta::days(5000) - TimeDelta::seconds(1), 4999),
            (TimeDelta::days(7345) - TimeDelta::nanoseconds(1), 7344),
            // ~100,000 years ahead: tens of millions of periods, which
            // would be far too slow to walk one by one.
            (TimeDelta::days(36_524_250) + TimeDelta::minutes(1), 36_524_250),
        ];
        for (offset, k) in cases {
            let p = s.period_containing(start + *offset);
            let k_start = start + TimeDelta::days(i64::from(*k));
            assert_eq!(
                p,
                Period {
                    start: k_start,
                    end: Some(k_start + TimeDelta::days(1))
                },
                "offset {offset}"
            );
        }
        let weekly = Schedule::new(PlanInterval::Fortnightly, start, None);
        let p = weekly.period_containing(start + TimeDelta::days(14 * 3000 + 13));
        assert_eq!(p.start, start + TimeDelta::days(14 * 3000));
    }

    #[test]
    fn period_starting_at_boundary_or_inside() {
        let s = Schedule::new(PlanInterval::Monthly, at("2026-01-10T15:00:00Z"), Some(1));
        let cases: &[(&str, &str, &str)] = &[
            ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"),
            ("2026-03-15T00:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"),
            ("2026-01-10T15:00:00Z", "2026-01-10T15:00:00Z", "2026-02-01T00:00:00Z"),
            ("2025-12-01T00:00:00Z", "2026-01-10T15:00:00Z", "2026-02-01T00:00:00Z"),
        ];
        for (from, start, end) in cases {
            assert_eq!(
                s.period_starting_at(at(from)),
                Period {
                    start: at(start),
                    end: Some(at(end))
                },
                "from {from}"
            );
        }
    }

    #[test]
    fn closed_periods_catch_up() {
        let s = Schedule::new(PlanInterval::Monthly, at("2026-01-10T15:00:00Z"), Some(1));
        let p = |start: &str, end: &str| Period {
            start: at(start),
            end: Some(at(end)),
        };
        let jan = p("2026-01-10T15:00:00Z", "2026-02-01T00:00:00Z");
        let feb = p("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z");
        let mar = p("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z");
        let apr = p("2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z");
        // (from, now, limit, expected)
        let cases: &[(&str, &str, usize, Vec<Period>)] = &[
            // Three missed periods.
            ("2026-01-10T15:00:00Z", "2026-04-15T00:00:00Z", 10, vec![jan, feb, mar]),
            // From inside a period: starts with that period.
            ("2026-02-14T00:00:00Z", "2026-04-15T00:00:00Z", 10, vec![feb, mar]),
            // From before start: from the first period.
            ("2025-01-01T00:00:00Z", "2026-03-01T00:00:00Z", 10, vec![jan, feb]),
            // A period ending exactly at `now` is closed.
            ("2026-02-01T00:00:00Z", "2026-05-01T00:00:00Z", 10, vec![feb, mar, apr]),
            ("2026-02-01T00:00:00Z", "2026-04-30T23:59:59Z", 10, vec![feb, mar]),
            // `now` inside the first period: none closed yet.
            ("2026-01-10T15:00:00Z", "2026-01-31T00:00:00Z", 10, vec![]),
            ("2026-01-10T15:00:00Z", "2026-01-10T15:00:00Z", 10, vec![]),
            // `now` before `from`: none.
            ("2026-03-01T00:00:00Z", "2026-01-01T00:00:00Z", 10, vec![]),
            // Limit respected.
            ("2026-01-10T15:00:00Z", "2026-04-15T00:00:00Z", 2, vec![jan, feb]),
            ("2026-01-10T15:00:00Z", "2026-04-15T00:00:00Z", 0, vec![]),
        ];
        for (from, now, limit, expected) in cases {
            assert_eq!(
                &closed_periods(&s, at(from), at(now), *limit),
                expected,
                "from {from} now {now} limit {limit}"
            );
        }
    }

    #[test]
    fn closed_periods_huge_limit_and_open_ended() {
        let start = at("2026-01-01T00:00:00Z");
        let daily = Schedule::new(PlanInterval::Daily, start, None);
        let got = closed_periods(&daily, start, at("2026-01-31T12:00:00Z"), usize::MAX);
        assert_eq!(got.len(), 30);
        assert_eq!(got.last().and_then(|p| p.end), Some(at("2026-01-31T00:00:00Z")));
        for interval in [PlanInterval::Onetime, PlanInterval::Aspresented] {
            let s = Schedule::new(interval, start, None);
            assert!(closed_periods(&s, start, at("2099-01-01T00:00:00Z"), 100).is_empty());
        }
    }

    fn interval_strategy() -> impl Strategy<Value = PlanInterval> {
        proptest::sample::select(ALL.to_vec())
    }

    /// Schedules from 1900 to 2300, sub-second starts included, with valid,
    /// invalid and missing anchors.
    fn schedule_strategy() -> impl Strategy<Value = Schedule> {
        (
            interval_strategy(),
            -2_208_988_800_i64..10_413_792_000_i64,
            0_u32..1_000_000_000,
            proptest::option::of(0_u32..=33),
        )
            .prop_filter_map("representable start", |(interval, secs, nanos, anchor)| {
                DateTime::from_timestamp(secs, nanos).map(|start| Schedule::new(interval, start, anchor))
            })
    }

    /// An offset of up to ~60 years, biased towards exact boundaries too.
    fn offset_strategy() -> impl Strategy<Value = TimeDelta> {
        prop_oneof![
            (0_i64..1_900_000_000).prop_map(TimeDelta::seconds),
            (0_i64..22_000).prop_map(TimeDelta::days),
            (0_i64..86_400_000_000_000).prop_map(TimeDelta::nanoseconds),
        ]
    }

    proptest! {
        #[test]
        fn containing_period_holds_t(s in schedule_strategy(), offset in offset_strategy()) {
            let t = s.start + offset;
            let p = s.period_containing(t);
            prop_assert!(p.start <= t, "{p:?} starts after {t}");
            if let Some(end) = p.end {
                prop_assert!(t < end, "{p:?} ends at or before {t}");
            }
            prop_assert!(p.contains(t));
            prop_assert_eq!(s.period_starting_at(t), p);
        }

        #[test]
        fn periods_tile_without_gaps_or_overlaps(
            s in schedule_strategy(),
            offset in offset_strategy(),
        ) {
            let p = s.period_containing(s.start + offset);
            // The start of a period is in that same period.
            prop_assert_eq!(s.period_containing(p.start), p);
            if let Some(end) = p.end {
                let next = s.period_containing(end);
                prop_assert_eq!(next.start, end);
                prop_assert_eq!(s.period_starting_at(end), next);
                // The instant before the end is still in `p`.
                prop_assert_eq!(s.period_containing(end - TimeDelta::nanoseconds(1)), p);
            }
        }

        #[test]
        fn boundaries_strictly_increase(s in schedule_strategy()) {
            prop_assert_eq!(s.boundary(0), Some(s.start));
            let mut prev = s.start;
            for k in 1..60 {
                match s.boundary(k) {
                    Some(b) => {
                        prop_assert!(b > prev, "boundary({k}) = {b} not after {prev}");
                        // A boundary starts its own period.
                        prop_assert_eq!(s.period_containing(b).start, b);
                        prev = b;
                    }
                    None => {
                        prop_assert!(matches!(
                            s.interval,
                            PlanInterval::Onetime | PlanInterval::Aspresented
                        ));
                        break;
                    }
                }
            }
        }

        #[test]
        fn anchored_boundaries_land_on_the_anchor_day(
            s in schedule_strategy(),
            k in 1_u32..200,
        ) {
            let months = matches!(
                s.interval,
                PlanInterval::Monthly
                    | PlanInterval::Bimonthly
                    | PlanInterval::Quarterly
                    | PlanInterval::Halfyearly
                    | PlanInterval::Yearly
            );
            if let (true, Some(day), Some(b)) = (months, s.anchor_day, s.boundary(k)) {
                prop_assert_eq!(b.time(), NaiveTime::MIN);
                prop_assert_eq!(b.day(), day.min(days_in_month(b.year(), b.month())));
                if k == 1 {
                    // The stub ends within about a month of the start.
                    prop_assert!(b > s.start);
                    prop_assert!(b - s.start <= TimeDelta::days(31));
                }
            }
        }

        #[test]
        fn containing_matches_a_step_by_step_walk(
            s in schedule_strategy(),
            offset in (0_i64..400_000_000).prop_map(TimeDelta::seconds),
        ) {
            let t = s.start + offset;
            let mut k = 0;
            while let Some(next) = s.boundary(k + 1) {
                if next > t {
                    break;
                }
                k += 1;
            }
            let expected = Period { start: s.boundary(k).unwrap_or(s.start), end: s.boundary(k + 1) };
            prop_assert_eq!(s.period_containing(t), expected);
        }

        #[test]
        fn closed_periods_are_contiguous_and_closed(
            s in schedule_strategy(),
            from_offset in (0_i64..100_000_000).prop_map(TimeDelta::seconds),
            span in (0_i64..200_000_000).prop_map(TimeDelta::seconds),
            limit in 0_usize..50,
        ) {
            let from = s.start + from_offset;
            let now = from + span;
            let got = closed_periods(&s, from, now, limit);
            prop_assert!(got.len() <= limit);
            if let Some(first) = got.first() {
                prop_assert_eq!(*first, s.period_containing(from));
            }
            for pair in got.windows(2) {
                prop_assert_eq!(pair[0].end, Some(pair[1].start));
            }
            for p in &got {
                prop_assert!(p.end.is_some_and(|end| end <= now));
            }
            // Stopped early only because of the limit or an unfinished period.
            if got.len() < limit {
                let next = got.last().and_then(|p| p.end).unwrap_or_else(|| s.period_containing(from).start);
                prop_assert!(s.period_containing(next).end.is_none_or(|end| end > now));
            }
        }
    }

    #[test]
    fn a_start_on_the_anchor_gets_whole_periods() {
        use chrono::TimeZone;
        let start = Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).single().expect("date");
        let quarterly = Schedule::new(PlanInterval::Quarterly, start, Some(20));
        assert_eq!(
            quarterly.boundary(1),
            Utc.with_ymd_and_hms(2026, 4, 20, 0, 0, 0).single()
        );
        assert_eq!(
            quarterly.boundary(2),
            Utc.with_ymd_and_hms(2026, 7, 20, 0, 0, 0).single()
        );
        let p = quarterly.period_containing(Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().expect("date"));
        assert_eq!(
            (p.start, p.end),
            (start, Utc.with_ymd_and_hms(2026, 4, 20, 0, 0, 0).single())
        );
    }
}
