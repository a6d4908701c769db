//! Cron schedules: [`Schedule`] declarations, the [`CatchUp`] policy, the
//! [`ScheduledTick`] a scheduled workflow receives, and the tick arithmetic
//! behind the executors' schedule loop (`plan`), kept pure so it is tested
//! on its own.
//!
//! There is no leader. Every executor that declares a schedule tries to fire
//! it when a tick is due, in one transaction: lock the schedule's row (`FOR
//! UPDATE SKIP LOCKED`), read its cursor and the database clock, enqueue one
//! workflow per due tick, move the cursor. The tick's workflow ID is derived
//! from the schedule and the tick time ([`tick_id`]), so even a transaction
//! that ran twice would enqueue each tick once; the cursor is what keeps a
//! tick from firing again after retention deleted its workflow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::queue::DEFAULT_QUEUE;

/// The longest schedule name, in characters (a tick's workflow ID is the
/// name plus 31 characters and must fit in 256).
pub const SCHEDULE_NAME_MAX_CHARS: usize = 128;

/// The most ticks one firing transaction enqueues; a longer backlog of
/// on-time ticks continues in the next transaction.
pub(crate) const TICKS_PER_FIRE_MAX: usize = 1000;

/// The largest bound of [`CatchUp::All`].
pub const CATCH_UP_MAX: u32 = 10_000;

/// What happens to ticks missed while no executor could fire them (every
/// executor down, or the schedule's row locked by one that died). A tick is
/// *missed* when it is more than the schedule's grace late
/// ([`Schedule::grace`]); later ticks run under every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Missed ticks never run.
    Skip,
    /// Of the missed ticks, only the most recent runs. The default.
    #[default]
    Latest,
    /// Every missed tick runs, oldest first, but at most the `max` most
    /// recent (1 to [`CATCH_UP_MAX`]).
    All {
        /// How many missed ticks run at most.
        max: u32,
    },
}

impl CatchUp {
    /// The stored form: `skip`, `latest` or `all`, and the bound for `all`.
    pub(crate) fn to_stored(self) -> (&'static str, Option<u32>) {
        match self {
            CatchUp::Skip => ("skip", None),
            CatchUp::Latest => ("latest", None),
            CatchUp::All { max } => ("all", Some(max)),
        }
    }

    /// The inverse of [`to_stored`](Self::to_stored); `None` for a value no
    /// version of Tandem writes.
    pub(crate) fn from_stored(policy: &str, max: Option<u32>) -> Option<CatchUp> {
        match (policy, max) {
            ("skip", _) => Some(CatchUp::Skip),
            ("latest", _) => Some(CatchUp::Latest),
            ("all", Some(max)) => Some(CatchUp::All { max }),
            _ => None,
        }
    }
}

impl std::fmt::Display for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatchUp::Skip => f.write_str("skip"),
            CatchUp::Latest => f.write_str("latest"),
            CatchUp::All { max } => write!(f, "all (at most {max})"),
        }
    }
}

/// The input of a scheduled workflow: which schedule and which tick.
///
/// A scheduled workflow is an ordinary [`Workflow`](crate::Workflow) whose
/// `Input` is this type; start it by hand with a tick of your choosing to
/// backfill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledTick {
    /// The schedule's name.
    pub schedule: String,
    /// The tick: when the cron expression said to run, in milliseconds since
    /// the Unix epoch (not when it did run).
    pub scheduled_at_ms: i64,
}

impl ScheduledTick {
    /// The tick as a [`SystemTime`].
    pub fn scheduled_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.scheduled_at_ms).unwrap_or(0))
    }
}

/// A cron schedule: run a workflow at every tick of a cron expression.
/// Declare it with [`EngineBuilder::schedule`](crate::EngineBuilder::schedule).
///
/// ```
/// use std::time::Duration;
/// use tandem::{CatchUp, Schedule};
///
/// // sec min hour day-of-month month day-of-week [year]
/// let nightly = Schedule::new("nightly-report", "0 30 3 * * *")?
///     .time_zone("Europe/Paris")?
///     .catch_up(CatchUp::Latest)
///     .grace(Duration::from_secs(120));
/// # Ok::<(), tandem::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    pub(crate) name: String,
    pub(crate) cron: String,
    pub(crate) time_zone: String,
    pub(crate) queue: String,
    pub(crate) catch_up: CatchUp,
    pub(crate) grace: Duration,
}

impl Schedule {
    /// A schedule named `name` (1 to [`SCHEDULE_NAME_MAX_CHARS`] characters;
    /// the name is its identity in the database) ticking at `cron`: six or
    /// seven fields, `sec min hour day-of-month month day-of-week [year]`,
    /// in UTC unless [`time_zone`](Self::time_zone) says otherwise.
    /// Defaults: the `default` queue, [`CatchUp::Latest`], a grace of 60 s.
    pub fn new(name: impl Into<String>, cron: &str) -> Result<Schedule, Error> {
        let name = name.into();
        let chars = name.chars().count();
        if chars == 0 || chars > SCHEDULE_NAME_MAX_CHARS || name.contains('\0') {
            return Err(Error::InvalidSchedule {
                name,
                reason: format!(
                    "a name is 1 to {SCHEDULE_NAME_MAX_CHARS} characters, none of them NUL"
                ),
            });
        }
        let schedule = Schedule {
            name,
            cron: cron.trim().to_owned(),
            time_zone: "UTC".to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            catch_up: CatchUp::default(),
            grace: Duration::from_secs(60),
        };
        Spec::parse(&schedule.name, &schedule.cron, &schedule.time_zone)?;
        Ok(schedule)
    }

    /// The time zone the cron expression is read in: an IANA name such as
    /// `Europe/Paris` (Tandem bundles the time-zone database). In a zone with
    /// daylight saving time, a wall-clock time that does not exist that day
    /// ticks shifted forward by the gap (02:30 becomes 03:30), and one that
    /// happens twice ticks once, at its first occurrence.
    pub fn time_zone(mut self, zone: &str) -> Result<Schedule, Error> {
        self.time_zone = zone.trim().to_owned();
        Spec::parse(&self.name, &self.cron, &self.time_zone)?;
        Ok(self)
    }

    /// The queue its workflows are enqueued on (it must be declared on the
    /// executor that declares the schedule).
    pub fn queue(mut self, queue: impl Into<String>) -> Schedule {
        self.queue = queue.into();
        self
    }

    /// What happens to ticks missed during downtime. Default:
    /// [`CatchUp::Latest`]. A bound of [`CatchUp::All`] outside 1 to
    /// [`CATCH_UP_MAX`] is clamped into it.
    pub fn catch_up(mut self, catch_up: CatchUp) -> Schedule {
        self.catch_up = match catch_up {
            CatchUp::All { max } => CatchUp::All {
                max: max.clamp(1, CATCH_UP_MAX),
            },
            other => other,
        };
        self
    }

    /// How late a tick may fire and still count as on time rather than
    /// missed. Default: 60 s, so a restart or a deploy loses no tick under
    /// any policy.
    pub fn grace(mut self, grace: Duration) -> Schedule {
        self.grace = grace;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The row executors register for it.
    pub(crate) fn decl(&self, workflow: &str) -> crate::storage::ScheduleDecl {
        let (catch_up, catch_up_max) = self.catch_up.to_stored();
        crate::storage::ScheduleDecl {
            name: self.name.clone(),
            workflow: workflow.to_owned(),
            cron: self.cron.clone(),
            time_zone: self.time_zone.clone(),
            queue: self.queue.clone(),
            catch_up: catch_up.to_owned(),
            catch_up_max,
            grace_ms: i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A schedule as stored, for management tools ([`Admin::schedules`]).
///
/// [`Admin::schedules`]: crate::Admin::schedules
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleInfo {
    /// The name.
    pub name: String,
    /// The workflow its ticks enqueue.
    pub workflow: String,
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub time_zone: String,
    /// The queue its workflows go to.
    pub queue: String,
    /// The catch-up policy as stored (`None`: a value this version does not
    /// know).
    pub catch_up: Option<CatchUp>,
    /// How late a tick may fire and still be on time.
    pub grace: Duration,
    /// Whether it is paused.
    pub paused: bool,
    /// The latest tick enqueued (ms since the epoch).
    pub last_tick_ms: Option<i64>,
    /// The next tick that will fire (`None` if paused, or if the expression
    /// has no further tick).
    pub next_tick_ms: Option<i64>,
    /// Every tick at or before this instant is decided.
    pub cursor_ms: i64,
    /// When the row last changed (database clock).
    pub updated_ms: i64,
}

impl ScheduleInfo {
    pub(crate) fn from_state(state: &crate::storage::ScheduleState) -> ScheduleInfo {
        let d = &state.decl;
        let next_tick_ms = if state.paused {
            None
        } else {
            Spec::parse(&d.name, &d.cron, &d.time_zone)
                .ok()
                .and_then(|spec| spec.next_after(state.cursor_ms))
        };
        ScheduleInfo {
            name: d.name.clone(),
            workflow: d.workflow.clone(),
            cron: d.cron.clone(),
            time_zone: d.time_zone.clone(),
            queue: d.queue.clone(),
            catch_up: CatchUp::from_stored(&d.catch_up, d.catch_up_max),
            grace: Duration::from_millis(u64::try_from(d.grace_ms).unwrap_or(0)),
            paused: state.paused,
            last_tick_ms: state.last_tick_ms,
            next_tick_ms,
            cursor_ms: state.cursor_ms,
            updated_ms: state.updated_ms,
        }
    }
}

/// A parsed cron expression and its time zone.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    cron: jiff_cron::Schedule,
    zone: TimeZone,
}

impl Spec {
    pub(crate) fn parse(name: &str, cron: &str, zone: &str) -> Result<Spec, Error> {
        let invalid = |reason: String| Error::InvalidSchedule {
            name: name.to_owned(),
            reason,
        };
        let parsed: jiff_cron::Schedule = cron.parse().map_err(|e| {
            invalid(format!(
                "cron expression {cron:?} does not parse ({e}); it has six or seven fields: \
                 sec min hour day-of-month month day-of-week [year]"
            ))
        })?;
        let zone = if zone == "UTC" {
            TimeZone::UTC
        } else {
            TimeZone::get(zone).map_err(|e| invalid(format!("unknown time zone {zone:?}: {e}")))?
        };
        Ok(Spec { cron: parsed, zone })
    }

    fn zoned(&self, ms: i64) -> Option<jiff::Zoned> {
        Timestamp::from_millisecond(ms)
            .ok()
            .map(|t| t.to_zoned(self.zone.clone()))
    }

    /// The first tick strictly after `ms`.
    pub(crate) fn next_after(&self, ms: i64) -> Option<i64> {
        let z = self.zoned(ms)?;
        self.cron
            .after(&z)
            .next()
            .map(|t| t.timestamp().as_millisecond())
    }

    /// The latest tick at or before `ms`.
    fn latest_at(&self, ms: i64) -> Option<i64> {
        // `next_back` yields the latest tick strictly before its start, and
        // ticks fall on whole seconds.
        let z = self.zoned(ms.checked_add(1)?)?;
        self.cron
            .after(&z)
            .next_back()
            .map(|t| t.timestamp().as_millisecond())
    }

    /// Ticks in `(after, until]`, oldest first, at most `max` of them: the
    /// oldest if `newest` is false, else the newest.
    fn ticks(&self, after: i64, until: i64, max: usize, newest: bool) -> Vec<i64> {
        let mut out = Vec::new();
        if until <= after || max == 0 {
            return out;
        }
        if newest {
            let mut at = until;
            while out.len() < max {
                match self.latest_at(at) {
                    Some(t) if t > after => {
                        out.push(t);
                        at = t - 1;
                    }
                    _ => break,
                }
            }
            out.reverse();
        } else {
            let Some(z) = self.zoned(after) else {
                return out;
            };
            for t in self.cron.after(&z) {
                let t = t.timestamp().as_millisecond();
                if t > until || out.len() == max {
                    break;
                }
                out.push(t);
            }
        }
        out
    }
}

/// What a firing transaction does: enqueue `ticks`, then move the cursor to
/// `cursor_ms` (every tick at or before it has been decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) ticks: Vec<i64>,
    pub(crate) cursor_ms: i64,
}

/// The ticks to fire now, given the cursor (every tick at or before it is
/// decided) and the database clock. Ticks within `grace_ms` of `now_ms` are
/// on time and always fire; older ones are missed and fire as `catch_up`
/// says.
pub(crate) fn plan(
    spec: &Spec,
    catch_up: CatchUp,
    grace_ms: i64,
    cursor_ms: i64,
    now_ms: i64,
) -> Plan {
    if now_ms <= cursor_ms {
        return Plan {
            ticks: Vec::new(),
            cursor_ms,
        };
    }
    // Ticks after the boundary are on time: at most `grace_ms` late.
    let boundary = cursor_ms.max(now_ms.saturating_sub(grace_ms.max(0)).saturating_sub(1));
    let mut ticks = match catch_up {
        CatchUp::Skip => Vec::new(),
        CatchUp::Latest => spec.ticks(cursor_ms, boundary, 1, true),
        CatchUp::All { max } => spec.ticks(cursor_ms, boundary, max as usize, true),
    };
    let room = TICKS_PER_FIRE_MAX.saturating_sub(ticks.len());
    let on_time = spec.ticks(boundary, now_ms, room + 1, false);
    let truncated = on_time.len() > room;
    ticks.extend(on_time.into_iter().take(room));
    let cursor_ms = if truncated {
        *ticks.last().expect("room was filled")
    } else {
        now_ms
    };
    Plan { ticks, cursor_ms }
}

/// The workflow ID of a schedule's tick: `schedule:<name>:<tick in RFC 3339,
/// UTC>`. A pure function of the two, so every executor derives the same ID
/// and the enqueue's ID idempotency keeps a tick to one workflow.
pub fn tick_id(schedule: &str, tick_ms: i64) -> String {
    let at = Timestamp::from_millisecond(tick_ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| tick_ms.to_string());
    format!("schedule:{schedule}:{at}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    // 2026-12-07T00:00:00Z
    const DAY: i64 = 1_796_601_600_000;

    fn every_minute() -> Spec {
        Spec::parse("t", "0 * * * * *", "UTC").unwrap()
    }

    #[test]
    fn ticks_are_strictly_after_the_cursor_and_at_or_before_now() {
        let s = every_minute();
        assert_eq!(s.next_after(DAY), Some(DAY + MIN));
        assert_eq!(s.next_after(DAY - 1), Some(DAY));
        assert_eq!(s.next_after(DAY + 500), Some(DAY + MIN));
        assert_eq!(s.latest_at(DAY), Some(DAY));
        assert_eq!(s.latest_at(DAY - 1), Some(DAY - MIN));
        let p = plan(&s, CatchUp::Skip, 0, DAY, DAY + 3 * MIN);
        assert_eq!(p.ticks, vec![DAY + 3 * MIN]);
        let p = plan(&s, CatchUp::All { max: 100 }, 0, DAY, DAY + 3 * MIN);
        assert_eq!(p.ticks, vec![DAY + MIN, DAY + 2 * MIN, DAY + 3 * MIN]);
        assert_eq!(p.cursor_ms, DAY + 3 * MIN);
        // Nothing due: the cursor still moves to now.
        let p = plan(&s, CatchUp::All { max: 100 }, 0, DAY, DAY + MIN - 1);
        assert_eq!(p.ticks, Vec::<i64>::new());
        assert_eq!(p.cursor_ms, DAY + MIN - 1);
        // A clock behind the cursor decides nothing and keeps the cursor.
        let p = plan(&s, CatchUp::All { max: 100 }, 0, DAY, DAY - MIN);
        assert_eq!(
            p,
            Plan {
                ticks: vec![],
                cursor_ms: DAY
            }
        );
    }

    #[test]
    fn each_policy_treats_missed_ticks_as_documented_and_on_time_ticks_alike() {
        let s = every_minute();
        // Down for 10 minutes; the grace covers the last 2.5.
        let (cursor, now, grace) = (DAY, DAY + 10 * MIN + 1000, 150_000);
        let on_time = vec![DAY + 8 * MIN, DAY + 9 * MIN, DAY + 10 * MIN];
        assert_eq!(plan(&s, CatchUp::Skip, grace, cursor, now).ticks, on_time);
        let mut latest = vec![DAY + 7 * MIN];
        latest.extend(&on_time);
        assert_eq!(plan(&s, CatchUp::Latest, grace, cursor, now).ticks, latest);
        let mut all3 = vec![DAY + 5 * MIN, DAY + 6 * MIN, DAY + 7 * MIN];
        all3.extend(&on_time);
        assert_eq!(
            plan(&s, CatchUp::All { max: 3 }, grace, cursor, now).ticks,
            all3
        );
        let all: Vec<i64> = (1..=10).map(|m| DAY + m * MIN).collect();
        assert_eq!(
            plan(&s, CatchUp::All { max: 100 }, grace, cursor, now).ticks,
            all
        );
        for policy in [CatchUp::Skip, CatchUp::Latest, CatchUp::All { max: 3 }] {
            assert_eq!(plan(&s, policy, grace, cursor, now).cursor_ms, now);
        }
    }

    #[test]
    fn a_long_on_time_backlog_fires_in_bounded_transactions_and_loses_nothing() {
        let s = Spec::parse("t", "* * * * * *", "UTC").unwrap();
        let (mut cursor, now) = (DAY, DAY + 2500 * 1000);
        let mut fired: Vec<i64> = Vec::new();
        loop {
            let p = plan(&s, CatchUp::Skip, i64::MAX, cursor, now);
            assert!(p.ticks.len() <= TICKS_PER_FIRE_MAX);
            fired.extend(&p.ticks);
            if p.cursor_ms == now {
                break;
            }
            cursor = p.cursor_ms;
        }
        let expected: Vec<i64> = (1..=2500).map(|s| DAY + s * 1000).collect();
        assert_eq!(fired, expected);
    }

    #[test]
    fn a_year_of_missed_ticks_is_planned_without_walking_the_year() {
        let s = Spec::parse("t", "* * * * * *", "UTC").unwrap();
        let year = 365 * 24 * 60 * MIN;
        // Five missed ticks, then the on-time one (a grace of 0: only a
        // tick at exactly now is on time).
        let p = plan(&s, CatchUp::All { max: 5 }, 0, DAY - year, DAY);
        assert_eq!(
            p.ticks,
            (0..6).rev().map(|i| DAY - i * 1000).collect::<Vec<_>>()
        );
        let p = plan(&s, CatchUp::Latest, 1000, DAY - year, DAY);
        assert_eq!(p.ticks, vec![DAY - 2000, DAY - 1000, DAY]);
    }

    #[test]
    fn a_named_time_zone_ticks_at_local_wall_time_across_daylight_saving() {
        // 02:30 every day in Paris; on 2026-03-29 02:30 does not exist and
        // ticks at 03:30 (01:30Z) instead.
        let s = Spec::parse("t", "0 30 2 * * *", "Europe/Paris").unwrap();
        // 2026-03-27T00:00:00Z
        let start = 1_774_569_600_000;
        let ticks = s.ticks(start, start + 4 * 24 * 60 * MIN, 10, false);
        let shown: Vec<String> = ticks
            .iter()
            .map(|t| Timestamp::from_millisecond(*t).unwrap().to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "2026-03-27T01:30:00Z",
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:30:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        // 01:30 happens twice on 2026-10-25 and ticks once.
        let s = Spec::parse("t", "0 30 1 * * *", "Europe/London").unwrap();
        // 2026-10-24T00:00:00Z
        let start = 1_792_800_000_000;
        let ticks = s.ticks(start, start + 2 * 24 * 60 * MIN, 10, false);
        let shown: Vec<String> = ticks
            .iter()
            .map(|t| Timestamp::from_millisecond(*t).unwrap().to_string())
            .collect();
        assert_eq!(shown, ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z"]);
    }

    proptest::proptest! {
        /// Any text is a schedule or a clear error, never a panic.
        #[test]
        fn any_expression_parses_or_is_refused(cron in "[0-9*/,\\-a-zA-Z ?#LW]{0,40}") {
            let _ = Schedule::new("n", &cron);
        }

        /// Whatever the cursor, clock, grace and policy: the ticks are
        /// ticks, after the cursor, at or before now, in order; every
        /// on-time tick is in; of the missed ones, the policy's count of
        /// the newest; and the cursor moves to now.
        #[test]
        fn a_plan_takes_the_on_time_ticks_and_the_policys_missed_ones(
            cursor in 0..600_000i64,
            span in 0..600_000i64,
            grace in 0..200_000i64,
            period in proptest::sample::select(vec![1i64, 2, 5, 7, 30]),
            policy in 0..3u32,
            max in 1..6u32,
        ) {
            let spec = Spec::parse("t", &format!("*/{period} * * * * *"), "UTC").unwrap();
            let catch_up = match policy {
                0 => CatchUp::Skip,
                1 => CatchUp::Latest,
                _ => CatchUp::All { max },
            };
            let (cursor, now) = (DAY + cursor, DAY + cursor + span);
            let p = plan(&spec, catch_up, grace, cursor, now);
            // Every tick of (cursor, now], by arithmetic: seconds of the
            // minute divisible by the period.
            let all: Vec<i64> = ((cursor / 1000)..=(now / 1000))
                .map(|s| s * 1000)
                .filter(|t| *t > cursor && *t <= now && (t / 1000 % 60) % period == 0)
                .collect();
            let (missed, on_time): (Vec<i64>, Vec<i64>) =
                all.into_iter().partition(|t| *t < now - grace);
            let keep = match catch_up {
                CatchUp::Skip => 0,
                CatchUp::Latest => 1,
                CatchUp::All { max } => max as usize,
            };
            let mut expected = missed[missed.len().saturating_sub(keep)..].to_vec();
            expected.extend(on_time);
            proptest::prop_assert_eq!(p.ticks, expected);
            proptest::prop_assert_eq!(p.cursor_ms, now);
        }
    }

    #[test]
    fn malformed_declarations_say_what_is_wrong() {
        let e = Schedule::new("n", "every day").unwrap_err().to_string();
        assert!(
            e.contains("does not parse") && e.contains("six or seven fields"),
            "{e}"
        );
        let e = Schedule::new("n", "0 0 3 * * *")
            .unwrap()
            .time_zone("Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
        assert!(Schedule::new("", "* * * * * *").is_err());
        assert!(Schedule::new("x".repeat(129), "* * * * * *").is_err());
        let id = tick_id(&"x".repeat(128), DAY);
        assert!(
            id.chars().count() <= crate::storage::WORKFLOW_ID_MAX_CHARS,
            "{id}"
        );
        assert_eq!(
            tick_id("nightly", DAY),
            "schedule:nightly:2026-12-07T00:00:00Z"
        );
    }
}
