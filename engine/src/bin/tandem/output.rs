//! What the CLI prints: aligned text tables for people, and the JSON shapes
//! for scripts (`--json`). The JSON field names are a contract that scripts
//! depend on; docs/cli.md shows them.

use serde::Serialize;
use serde_json::Value;
use tandem::WorkflowDetail;
use tandem::schedule::ScheduleInfo;
use tandem::storage::QueueInfo;
use tandem::storage::postgres::{RoleInfo, VersionInfo};
use tandem::storage::{StepInfo, WorkflowInfo};

use crate::time::{format_duration_ms, format_ms};

/// Longest payload shown in a table cell; `workflow get` and `--json` show
/// payloads whole.
const CELL_CHARS_MAX: usize = 60;

/// Columns padded to their widest cell, two spaces apart.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let headers = self.headers.iter().map(|h| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
            // No trailing spaces after the last column.
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Label/value lines, for one record.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

/// A table cell: on one line and at most `CELL_CHARS_MAX` characters.
fn cell(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= CELL_CHARS_MAX {
        return flat;
    }
    let mut cut: String = flat.chars().take(CELL_CHARS_MAX - 1).collect();
    cut.push('…');
    cut
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

fn time(ms: Option<i64>) -> String {
    or_dash(ms.map(format_ms))
}

/// A stored JSON payload as a JSON value (text the database vouched for;
/// a string if it ever is not JSON, rather than failing the whole command).
fn payload(text: Option<&str>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())),
    }
}

/// A workflow as `--json` prints it.
#[derive(Serialize)]
pub struct WorkflowJson<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    queue: &'a str,
    priority: i32,
    concurrency_key: Option<&'a str>,
    /// `null` for a run that never ran.
    app_version: Option<&'a str>,
    executor_id: Option<&'a str>,
    owner_epoch: i64,
    parent_id: Option<&'a str>,
    /// The W3C `traceparent` the run continues, or `null`.
    trace_parent: Option<&'a str>,
    input: Value,
    output: Value,
    error: Option<&'a str>,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    deadline_at: Option<String>,
    created_ms: i64,
    updated_ms: i64,
    started_ms: Option<i64>,
    completed_ms: Option<i64>,
    deadline_ms: Option<i64>,
    /// Only in `workflow get`.
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<StepJson<'a>>>,
}

/// A step as `--json` prints it.
#[derive(Serialize)]
pub struct StepJson<'a> {
    step_id: i32,
    name: &'a str,
    kind: &'static str,
    output: Value,
    error: Option<&'a str>,
    attempts: i32,
    owner_epoch: i64,
    started_at: String,
    completed_at: String,
    started_ms: i64,
    completed_ms: i64,
    duration_ms: i64,
}

/// A queue as `--json` prints it.
#[derive(Serialize)]
pub struct QueueJson<'a> {
    name: &'a str,
    concurrency_global: Option<u32>,
    concurrency_per_key: Option<u32>,
    rate_limit: Option<RateLimitJson>,
    /// `null`: finished workflows are kept forever.
    retention_ms: Option<i64>,
    enqueued: i64,
    running: i64,
    /// When the oldest workflow that could start now was created.
    oldest_ready_ms: Option<i64>,
}

#[derive(Serialize)]
pub struct RateLimitJson {
    count: u32,
    period_ms: i64,
}

pub fn workflow_json(w: &WorkflowInfo) -> WorkflowJson<'_> {
    let r = &w.row;
    WorkflowJson {
        id: &r.id,
        name: &r.name,
        status: r.status.as_str(),
        queue: &r.queue,
        priority: w.priority,
        concurrency_key: w.concurrency_key.as_deref(),
        app_version: r.version.as_deref(),
        executor_id: r.executor_id.as_deref(),
        owner_epoch: r.owner_epoch,
        parent_id: r.parent_id.as_deref(),
        trace_parent: r.trace_parent.as_deref(),
        input: payload(Some(&r.input)),
        output: payload(r.output.as_deref()),
        error: r.error.as_deref(),
        created_at: format_ms(w.created_ms),
        updated_at: format_ms(w.updated_ms),
        started_at: w.started_ms.map(format_ms),
        completed_at: w.completed_ms.map(format_ms),
        deadline_at: r.deadline_ms.map(format_ms),
        created_ms: w.created_ms,
        updated_ms: w.updated_ms,
        started_ms: w.started_ms,
        completed_ms: w.completed_ms,
        deadline_ms: r.deadline_ms,
        steps: None,
    }
}

pub fn step_json(s: &StepInfo) -> StepJson<'_> {
    StepJson {
        step_id: s.row.step_id,
        name: &s.row.name,
        kind: s.row.kind.as_str(),
        output: payload(s.row.output.as_deref()),
        error: s.row.error.as_deref(),
        attempts: s.attempts,
        owner_epoch: s.owner_epoch,
        started_at: format_ms(s.started_ms),
        completed_at: format_ms(s.completed_ms),
        started_ms: s.started_ms,
        completed_ms: s.completed_ms,
        duration_ms: s.completed_ms - s.started_ms,
    }
}

pub fn detail_json(d: &WorkflowDetail) -> WorkflowJson<'_> {
    WorkflowJson {
        steps: Some(d.steps.iter().map(step_json).collect()),
        ..workflow_json(&d.workflow)
    }
}

pub fn queue_json(q: &QueueInfo) -> QueueJson<'_> {
    QueueJson {
        name: &q.limits.name,
        concurrency_global: q.limits.concurrency_global,
        concurrency_per_key: q.limits.concurrency_per_key,
        rate_limit: q
            .limits
            .rate_limit
            .map(|(count, period_ms)| RateLimitJson { count, period_ms }),
        retention_ms: q.limits.retention_ms,
        enqueued: q.enqueued,
        running: q.running,
        oldest_ready_ms: q.oldest_ready_ms,
    }
}

/// A version as `versions --json` prints it.
#[derive(Serialize)]
pub struct VersionJson<'a> {
    /// `null` for runs that never ran.
    version: Option<&'a str>,
    enqueued: i64,
    running: i64,
    executors_accepting: i64,
    executors_running: i64,
}

pub fn version_json(v: &VersionInfo) -> VersionJson<'_> {
    VersionJson {
        version: v.version.as_deref(),
        enqueued: v.enqueued,
        running: v.running,
        executors_accepting: v.executors_accepting,
        executors_running: v.executors_running,
    }
}

pub fn versions_table(versions: &[VersionInfo]) -> String {
    let mut table = Table::new(&[
        "VERSION",
        "ENQUEUED",
        "RUNNING",
        "EXECUTORS",
        "ACCEPTED BY",
        "NOTE",
    ]);
    for v in versions {
        let note = if v.enqueued + v.running > 0 && v.executors_accepting == 0 {
            "waits: no live executor accepts it"
        } else if v.version.is_none() {
            "never ran: any executor may start them"
        } else {
            ""
        };
        table.row(vec![
            v.version
                .clone()
                .unwrap_or_else(|| "(not started)".to_owned()),
            v.enqueued.to_string(),
            v.running.to_string(),
            v.executors_running.to_string(),
            v.executors_accepting.to_string(),
            note.to_owned(),
        ]);
    }
    table.render()
}

#[derive(Serialize)]
pub struct RoleJson<'a> {
    role: &'a str,
    exists: bool,
    may: &'static str,
    members: &'a [String],
}

/// What each of Tandem's roles may do, in the words of docs/security.md.
fn role_may(name: &str) -> &'static str {
    match name {
        "tandem_executor" => "run workflows: read and write Tandem's tables",
        "tandem_enqueuer" => "enqueue_workflow and send only",
        "tandem_operator" => "read; manage workflows and schedules; send",
        _ => "",
    }
}

pub fn role_json(r: &RoleInfo) -> RoleJson<'_> {
    RoleJson {
        role: &r.name,
        exists: r.exists,
        may: role_may(&r.name),
        members: &r.members,
    }
}

pub fn roles_table(roles: &[RoleInfo]) -> String {
    let mut table = Table::new(&["ROLE", "MAY", "MEMBERS"]);
    for r in roles {
        let members = if !r.exists {
            "(missing: run `tandem setup-roles`)".to_owned()
        } else if r.members.is_empty() {
            "-".to_owned()
        } else {
            r.members.join(", ")
        };
        table.row(vec![r.name.clone(), role_may(&r.name).to_owned(), members]);
    }
    table.render()
}

pub fn workflows_table(workflows: &[WorkflowInfo]) -> String {
    let mut table = Table::new(&[
        "ID", "NAME", "STATUS", "QUEUE", "VERSION", "CREATED", "UPDATED",
    ]);
    for w in workflows {
        table.row(vec![
            w.row.id.clone(),
            w.row.name.clone(),
            w.row.status.to_string(),
            w.row.queue.clone(),
            or_dash(w.row.version.clone()),
            format_ms(w.created_ms),
            format_ms(w.updated_ms),
        ]);
    }
    table.render()
}

pub fn detail_text(d: &WorkflowDetail) -> String {
    let (w, r) = (&d.workflow, &d.workflow.row);
    fields(&[
        ("id", r.id.clone()),
        ("name", r.name.clone()),
        ("status", r.status.to_string()),
        ("queue", r.queue.clone()),
        ("priority", w.priority.to_string()),
        ("concurrency key", or_dash(w.concurrency_key.clone())),
        ("version", or_dash(r.version.clone())),
        ("executor", or_dash(r.executor_id.clone())),
        ("epoch", r.owner_epoch.to_string()),
        ("parent", or_dash(r.parent_id.clone())),
        ("trace", or_dash(r.trace_parent.clone())),
        ("deadline", time(r.deadline_ms)),
        ("created", format_ms(w.created_ms)),
        ("started", time(w.started_ms)),
        ("completed", time(w.completed_ms)),
        ("updated", format_ms(w.updated_ms)),
        ("steps", d.steps.len().to_string()),
        ("input", r.input.clone()),
        ("output", or_dash(r.output.clone())),
        ("error", or_dash(r.error.clone())),
    ])
}

pub fn steps_table(steps: &[StepInfo]) -> String {
    let mut table = Table::new(&[
        "STEP", "NAME", "KIND", "ATTEMPTS", "EPOCH", "STARTED", "DURATION", "RESULT",
    ]);
    for s in steps {
        let result = match (&s.row.output, &s.row.error) {
            (_, Some(error)) => format!("error: {error}"),
            (Some(output), None) => output.clone(),
            (None, None) => "-".to_owned(),
        };
        table.row(vec![
            s.row.step_id.to_string(),
            s.row.name.clone(),
            s.row.kind.as_str().to_owned(),
            s.attempts.to_string(),
            s.owner_epoch.to_string(),
            format_ms(s.started_ms),
            format_duration_ms(s.completed_ms - s.started_ms),
            cell(&result),
        ]);
    }
    table.render()
}

pub fn queues_table(queues: &[QueueInfo]) -> String {
    let mut table = Table::new(&[
        "QUEUE",
        "CONCURRENCY",
        "PER KEY",
        "RATE LIMIT",
        "RETENTION",
        "ENQUEUED",
        "RUNNING",
    ]);
    for q in queues {
        let rate = q
            .limits
            .rate_limit
            .map(|(count, period_ms)| format!("{count}/{}", period(period_ms)));
        table.row(vec![
            q.limits.name.clone(),
            or_dash(q.limits.concurrency_global.map(|n| n.to_string())),
            or_dash(q.limits.concurrency_per_key.map(|n| n.to_string())),
            or_dash(rate),
            or_dash(q.limits.retention_ms.map(format_duration_ms)),
            q.enqueued.to_string(),
            q.running.to_string(),
        ]);
    }
    table.render()
}

/// A rate limit's period in its largest whole unit (`1s`, `5m`, `250ms`).
fn period(ms: i64) -> String {
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "STATUS"]);
        table.row(vec!["a-long-id".into(), "RUNNING".into()]);
        table.row(vec!["b".into(), String::new()]);
        assert_eq!(table.render(), "ID         STATUS\na-long-id  RUNNING\nb\n");
    }

    #[test]
    fn cells_are_one_line_and_bounded() {
        assert_eq!(cell("a\nb"), "a b");
        let long = "x".repeat(100);
        let shown = cell(&long);
        assert_eq!(shown.chars().count(), CELL_CHARS_MAX);
        assert!(shown.ends_with('…'));
    }
}

/// A schedule as `--json` prints it.
#[derive(Serialize)]
pub struct ScheduleJson<'a> {
    name: &'a str,
    workflow: &'a str,
    cron: &'a str,
    time_zone: &'a str,
    queue: &'a str,
    /// `skip`, `latest`, `all` (with `catch_up_max`), or `null` for a value
    /// this version does not know.
    catch_up: Option<&'static str>,
    catch_up_max: Option<u32>,
    grace_ms: u128,
    paused: bool,
    last_tick_at: Option<String>,
    /// `null` while paused.
    next_tick_at: Option<String>,
    updated_at: String,
}

pub fn schedule_json(s: &ScheduleInfo) -> ScheduleJson<'_> {
    let (catch_up, catch_up_max) = match s.catch_up {
        Some(tandem::CatchUp::Skip) => (Some("skip"), None),
        Some(tandem::CatchUp::Latest) => (Some("latest"), None),
        Some(tandem::CatchUp::All { max }) => (Some("all"), Some(max)),
        _ => (None, None),
    };
    ScheduleJson {
        name: &s.name,
        workflow: &s.workflow,
        cron: &s.cron,
        time_zone: &s.time_zone,
        queue: &s.queue,
        catch_up,
        catch_up_max,
        grace_ms: s.grace.as_millis(),
        paused: s.paused,
        last_tick_at: s.last_tick_ms.map(format_ms),
        next_tick_at: s.next_tick_ms.map(format_ms),
        updated_at: format_ms(s.updated_ms),
    }
}

pub fn schedules_table(schedules: &[ScheduleInfo]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "CRON",
        "ZONE",
        "WORKFLOW",
        "QUEUE",
        "CATCH-UP",
        "PAUSED",
        "LAST TICK",
        "NEXT TICK",
    ]);
    for s in schedules {
        table.row(vec![
            cell(&s.name),
            s.cron.clone(),
            s.time_zone.clone(),
            cell(&s.workflow),
            cell(&s.queue),
            s.catch_up.map_or("?".to_owned(), |c| c.to_string()),
            if s.paused { "yes" } else { "no" }.to_owned(),
            time(s.last_tick_ms),
            time(s.next_tick_ms),
        ]);
    }
    table.render()
}

/// What `tandem gc` deleted (or, dry, would delete), as `--json` prints it.
#[derive(Serialize)]
pub struct GcJson {
    dry_run: bool,
    workflows: u64,
    steps: u64,
    messages: u64,
    events: u64,
}

pub fn gc_json(c: &tandem::storage::GcCount, dry_run: bool) -> GcJson {
    GcJson {
        dry_run,
        workflows: c.workflows,
        steps: c.steps,
        messages: c.messages,
        events: c.events,
    }
}

pub fn gc_text(c: &tandem::storage::GcCount, dry_run: bool) -> String {
    let verb = if dry_run { "would delete" } else { "deleted" };
    format!(
        "{verb} {} workflows, {} steps, {} messages, {} events\n",
        c.workflows, c.steps, c.messages, c.events
    )
}
