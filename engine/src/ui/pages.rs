//! The dashboard's pages: each handler reads through `Admin` and renders
//! one HTML page (or one payload as text).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::html::{self, enc, esc};
use super::{Html, Ui, given};
use crate::storage::{Status, StepInfo, Storage, WorkflowFilter, WorkflowInfo};

/// Rows per page of the workflow list.
const PAGE_ROWS: u32 = 50;
/// Counts per status stop here (a count costs at most this many rows).
pub(super) const COUNT_CAP: u64 = 10_000;
/// Children shown on a workflow's page.
const CHILDREN_MAX: u32 = 200;

/// The workflow list's query: the filter form's fields.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    name: Option<String>,
    queue: Option<String>,
    since: Option<String>,
    until: Option<String>,
    page: Option<String>,
    notice: Option<String>,
}

impl ListQuery {
    /// The query string of these filters with `status` replaced (for the
    /// count links) and no page.
    fn with_status(&self, status: Option<&str>) -> String {
        let mut q = Vec::new();
        if let Some(s) = status {
            q.push(format!("status={}", enc(s)));
        }
        for (key, value) in [
            ("name", &self.name),
            ("queue", &self.queue),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = given(value) {
                q.push(format!("{key}={}", enc(&v)));
            }
        }
        q.join("&")
    }
}

/// A `datetime-local` field's value (`2026-12-07T16:20`, UTC) in ms.
fn parse_time(field: &str, value: &str) -> Result<i64, String> {
    let civil: jiff::civil::DateTime = value
        .parse()
        .map_err(|e| format!("{field}: {value:?} is not a date and time ({e})"))?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|e| format!("{field}: {e}"))
}

pub(super) async fn workflows<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let status = match given(&q.status) {
        None => None,
        Some(s) => match Status::parse(&s.to_ascii_uppercase()) {
            Some(status) => Some(status),
            None => {
                return ui.error_page(StatusCode::BAD_REQUEST, &format!("unknown status {s:?}"));
            }
        },
    };
    let mut times = [None, None];
    for (slot, (field, value)) in times
        .iter_mut()
        .zip([("since", &q.since), ("until", &q.until)])
    {
        if let Some(v) = given(value) {
            match parse_time(field, &v) {
                Ok(ms) => *slot = Some(ms),
                Err(e) => return ui.error_page(StatusCode::BAD_REQUEST, &e),
            }
        }
    }
    let page: u64 = given(&q.page).and_then(|p| p.parse().ok()).unwrap_or(0);
    let filter = WorkflowFilter {
        status,
        name: given(&q.name),
        queue: given(&q.queue),
        created_from_ms: times[0],
        created_until_ms: times[1],
        limit: PAGE_ROWS,
        offset: page * u64::from(PAGE_ROWS),
        ..WorkflowFilter::default()
    };
    let (rows, counts, queues) = match tokio::try_join!(
        ui.admin.list_workflows(filter.clone()),
        ui.admin.count_workflows(filter, COUNT_CAP),
        ui.admin.queues()
    ) {
        Ok(found) => found,
        Err(e) => return ui.failure(e),
    };
    let base = ui.base();
    let mut body = String::from("<h1>Workflows</h1>");
    // Counts per status, each a link to that status under the same filters.
    body.push_str("<div class=\"counts\" id=\"counts\">");
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let all_class = if status.is_none() {
        " class=\"active\""
    } else {
        ""
    };
    let _ = write!(
        body,
        "<a{all_class} href=\"{base}/workflows?{}\">All <b>{}</b></a>",
        q.with_status(None),
        count(total, counts.iter().any(|(_, n)| *n >= COUNT_CAP))
    );
    for (s, n) in &counts {
        let class = if Some(*s) == status {
            " class=\"active\""
        } else {
            ""
        };
        let _ = write!(
            body,
            "<a{class} data-status=\"{0}\" href=\"{base}/workflows?{1}\">{2} <b>{3}</b></a>",
            s.as_str(),
            q.with_status(Some(s.as_str())),
            html::status_badge(s.as_str()),
            count(*n, *n >= COUNT_CAP)
        );
    }
    body.push_str("</div>");
    // The filter form (GET, so every filtered view has a URL).
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"{base}/workflows\" id=\"filters\">\
         <label>Status<select name=\"status\" id=\"f-status\"><option value=\"\">any</option>"
    );
    for s in Status::ALL {
        let selected = if Some(s) == status { " selected" } else { "" };
        let _ = write!(
            body,
            "<option value=\"{0}\"{selected}>{0}</option>",
            s.as_str()
        );
    }
    let _ = write!(
        body,
        "</select></label><label>Name<input name=\"name\" id=\"f-name\" value=\"{}\"></label>\
         <label>Queue<select name=\"queue\" id=\"f-queue\"><option value=\"\">any</option>",
        esc(&given(&q.name).unwrap_or_default())
    );
    let chosen = given(&q.queue);
    for queue in &queues {
        let name = &queue.limits.name;
        let selected = if chosen.as_ref() == Some(name) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{0}\"{selected}>{0}</option>",
            esc(name)
        );
    }
    let _ = write!(
        body,
        "</select></label>\
         <label>Created from (UTC)<input type=\"datetime-local\" step=\"1\" name=\"since\" id=\"f-since\" value=\"{}\"></label>\
         <label>Created before (UTC)<input type=\"datetime-local\" step=\"1\" name=\"until\" id=\"f-until\" value=\"{}\"></label>\
         <button type=\"submit\" id=\"apply\">Filter</button> <a href=\"{base}/workflows\">Clear</a></form>",
        esc(&given(&q.since).unwrap_or_default()),
        esc(&given(&q.until).unwrap_or_default()),
    );
    body.push_str(&workflow_table(base, &rows, ui.admin.now_ms(), "workflows"));
    // Pages.
    body.push_str("<p class=\"pager\">");
    let here = q.with_status(status.map(Status::as_str));
    if page > 0 {
        let _ = write!(
            body,
            "<a href=\"{base}/workflows?{here}&page={}\">← newer</a> ",
            page - 1
        );
    }
    let _ = write!(body, "page {} ", page + 1);
    if rows.len() as u32 == PAGE_ROWS {
        let _ = write!(
            body,
            "<a href=\"{base}/workflows?{here}&page={}\" id=\"older\">older →</a>",
            page + 1
        );
    }
    body.push_str("</p>");
    Html(html::page(
        base,
        "Workflows",
        "workflows",
        ui.writable(),
        given(&q.notice).as_deref(),
        &body,
    ))
    .into_response()
}

/// A count, with `+` when it reached the cap.
fn count(n: u64, capped: bool) -> String {
    if capped {
        format!("{n}+")
    } else {
        n.to_string()
    }
}

/// Workflows as a table (the list, a workflow's children).
fn workflow_table(base: &str, rows: &[WorkflowInfo], now_ms: i64, id: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"muted\" id=\"{id}-empty\">No workflows.</p>");
    }
    let mut t = format!(
        "<table id=\"{id}\"><thead><tr><th>ID</th><th>Name</th><th>Status</th><th>Queue</th>\
         <th>Created (UTC)</th><th>Duration</th><th>Version</th></tr></thead><tbody>"
    );
    for w in rows {
        let took = match (w.started_ms, w.completed_ms) {
            (Some(start), Some(end)) => html::duration(end - start),
            (Some(start), None) if w.row.status == Status::Running => {
                format!("{} so far", html::duration(now_ms - start))
            }
            _ => "-".to_owned(),
        };
        let _ = write!(
            t,
            "<tr data-id=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&w.row.id),
            html::workflow_link(base, &w.row.id),
            esc(&w.row.name),
            html::status_badge(w.row.status.as_str()),
            esc(&w.row.queue),
            html::time(w.created_ms),
            took,
            esc(w.row.version.as_deref().unwrap_or("-")),
        );
    }
    t.push_str("</tbody></table>");
    t
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct NoticeQuery {
    notice: Option<String>,
}

pub(super) async fn workflow<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let detail = match ui.admin.get_workflow(&id).await {
        Ok(Some(detail)) => detail,
        Ok(None) => {
            return ui.failure(crate::Error::WorkflowNotFound { id: id.clone() });
        }
        Err(e) => return ui.failure(e),
    };
    let children = WorkflowFilter {
        parent_id: Some(id.clone()),
        limit: CHILDREN_MAX,
        ..WorkflowFilter::default()
    };
    let ((messages, events), children) =
        match tokio::try_join!(ui.admin.mailbox(&id), ui.admin.list_workflows(children)) {
            Ok(found) => found,
            Err(e) => return ui.failure(e),
        };
    let base = ui.base();
    let now_ms = ui.admin.now_ms();
    let w = &detail.workflow;
    let href = format!("{base}{}", html::workflow_path(&id));
    let mut body = format!(
        "<h1>Workflow <code id=\"workflow-id\">{}</code> {}</h1>",
        esc(&id),
        html::status_badge(w.row.status.as_str())
    );
    // Actions, in write mode.
    if ui.writable() {
        body.push_str("<div class=\"actions\">");
        if !w.row.status.is_terminal() {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"{href}/cancel\"><button class=\"danger\" id=\"cancel\">Cancel</button></form>"
            );
        }
        if w.row.status == Status::Cancelled {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"{href}/resume\"><button id=\"resume\">Resume</button></form>"
            );
        }
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{href}/fork\"><label>Fork from step \
             <input name=\"from_step\" id=\"from-step\" size=\"4\" value=\"{}\"></label>\
             <button id=\"fork\">Fork</button></form></div>",
            detail.steps.len()
        );
    }
    // Fields.
    let parent = w
        .row
        .parent_id
        .as_deref()
        .map_or_else(|| "-".to_owned(), |p| html::workflow_link(base, p));
    let took = match (w.started_ms, w.completed_ms) {
        (Some(start), Some(end)) => html::duration(end - start),
        (Some(start), None) => format!("{} so far", html::duration(now_ms - start)),
        _ => "-".to_owned(),
    };
    let _ = write!(
        body,
        "<dl class=\"fields\" id=\"fields\">\
         <dt>Name</dt><dd id=\"name\">{}</dd><dt>Queue</dt><dd>{}</dd><dt>Parent</dt><dd>{parent}</dd>\
         <dt>Executor</dt><dd>{}</dd><dt>Execution epoch</dt><dd>{}</dd><dt>Version</dt><dd>{}</dd>\
         <dt>Priority</dt><dd>{}</dd><dt>Concurrency key</dt><dd>{}</dd>\
         <dt>Trace</dt><dd id=\"trace\">{}</dd><dt>Created (UTC)</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd>\
         <dt>Duration</dt><dd>{took}</dd><dt>Deadline</dt><dd>{}</dd></dl>",
        esc(&w.row.name),
        esc(&w.row.queue),
        esc(w.row.executor_id.as_deref().unwrap_or("-")),
        w.row.owner_epoch,
        esc(w.row.version.as_deref().unwrap_or("-")),
        w.priority,
        esc(w.concurrency_key.as_deref().unwrap_or("-")),
        esc(w.row.trace_parent.as_deref().unwrap_or("-")),
        html::time(w.created_ms),
        html::time_or_dash(w.started_ms),
        html::time_or_dash(w.completed_ms),
        html::time_or_dash(w.row.deadline_ms),
    );
    body.push_str("<h2>Input</h2>");
    body.push_str(&html::payload(&w.row.input, &format!("{href}/input")));
    if let Some(output) = &w.row.output {
        body.push_str("<h2>Output</h2>");
        body.push_str(&html::payload(output, &format!("{href}/output")));
    }
    if let Some(error) = &w.row.error {
        let _ = write!(
            body,
            "<h2>Error</h2><pre class=\"payload error-box\" id=\"workflow-error\">{}</pre>",
            esc(error)
        );
    }
    let _ = write!(body, "<h2>Steps ({})</h2>", detail.steps.len());
    body.push_str(&timeline(&href, w, &detail.steps, now_ms));
    let _ = write!(body, "<h2>Children ({})</h2>", children.len());
    body.push_str(&workflow_table(base, &children, now_ms, "children"));
    let _ = write!(body, "<h2>Messages waiting ({})</h2>", messages.len());
    if messages.is_empty() {
        body.push_str("<p class=\"muted\">None.</p>");
    } else {
        body.push_str("<table id=\"messages\"><thead><tr><th>Topic</th><th>Sent (UTC)</th><th>Payload</th></tr></thead><tbody>");
        for m in &messages {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(&m.topic),
                html::time(m.created_ms),
                html::short(&m.payload, 200)
            );
        }
        body.push_str("</tbody></table>");
    }
    let _ = write!(body, "<h2>Events ({})</h2>", events.len());
    if events.is_empty() {
        body.push_str("<p class=\"muted\">None.</p>");
    } else {
        body.push_str("<table id=\"events\"><thead><tr><th>Key</th><th>Set (UTC)</th><th>Value</th></tr></thead><tbody>");
        for e in &events {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(&e.key),
                html::time(e.updated_ms),
                html::short(&e.value, 200)
            );
        }
        body.push_str("</tbody></table>");
    }
    Html(html::page(
        base,
        &format!("Workflow {id}"),
        "workflows",
        ui.writable(),
        given(&q.notice).as_deref(),
        &body,
    ))
    .into_response()
}

/// The steps as a table with a bar per step on one time axis, from the
/// workflow's creation to its end (or now).
fn timeline(href: &str, w: &WorkflowInfo, steps: &[StepInfo], now_ms: i64) -> String {
    if steps.is_empty() {
        return "<p class=\"muted\" id=\"steps-empty\">No steps recorded yet.</p>".to_owned();
    }
    let start = steps
        .iter()
        .map(|s| s.started_ms)
        .chain([w.created_ms])
        .min()
        .unwrap_or(w.created_ms);
    let end = steps
        .iter()
        .map(|s| s.completed_ms)
        .chain(w.completed_ms)
        .chain((!w.row.status.is_terminal()).then_some(now_ms))
        .max()
        .unwrap_or(now_ms);
    let span = (end - start).max(1) as f64;
    let mut t = String::from(
        "<table id=\"steps\"><thead><tr><th>#</th><th>Name</th><th>Kind</th><th>Attempts</th>\
         <th>Started</th><th>Duration</th><th class=\"bar-cell\">Timeline</th><th>Outcome</th></tr></thead><tbody>",
    );
    for s in steps {
        let left = (s.started_ms - start) as f64 / span * 100.0;
        let width = ((s.completed_ms - s.started_ms) as f64 / span * 100.0).max(0.3);
        let failed = s.row.error.is_some();
        let outcome = match (&s.row.output, &s.row.error) {
            (_, Some(error)) => format!(
                "<span class=\"error-box\">{}</span>",
                html::short(error, 160)
            ),
            (Some(output), None) => {
                let full = output.chars().count() > 160;
                let link = if full {
                    format!(
                        " <a class=\"whole\" href=\"{href}/steps/{}/output\">whole</a>",
                        s.row.step_id
                    )
                } else {
                    String::new()
                };
                format!("<code>{}</code>{link}", html::short(output, 160))
            }
            (None, None) => "-".to_owned(),
        };
        let _ = write!(
            t,
            "<tr data-step=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>+{}</td><td>{}</td>\
             <td class=\"bar-cell\"><div class=\"track\"><div class=\"bar{}\" style=\"left:{left:.2}%;width:{width:.2}%\"></div></div></td><td>{outcome}</td></tr>",
            s.row.step_id,
            s.row.step_id,
            esc(&s.row.name),
            s.row.kind.as_str(),
            s.attempts,
            html::duration(s.started_ms - start),
            html::duration(s.completed_ms - s.started_ms),
            if failed { " err" } else { "" },
        );
    }
    t.push_str("</tbody></table>");
    t
}

/// A payload whole, as text.
fn text(body: String, json: bool) -> Response {
    let kind = if json {
        "application/json; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
        body,
    )
        .into_response()
}

pub(super) async fn raw_input<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(id): Path<String>,
) -> Response {
    match ui.admin.get_workflow(&id).await {
        Ok(Some(d)) => text(html::pretty_json(&d.workflow.row.input), true),
        Ok(None) => ui.failure(crate::Error::WorkflowNotFound { id }),
        Err(e) => ui.failure(e),
    }
}

pub(super) async fn raw_output<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(id): Path<String>,
) -> Response {
    match ui.admin.get_workflow(&id).await {
        Ok(Some(d)) => match (&d.workflow.row.output, &d.workflow.row.error) {
            (Some(output), _) => text(html::pretty_json(output), true),
            (None, Some(error)) => text(error.clone(), false),
            (None, None) => ui.error_page(StatusCode::NOT_FOUND, "the workflow has no output yet"),
        },
        Ok(None) => ui.failure(crate::Error::WorkflowNotFound { id }),
        Err(e) => ui.failure(e),
    }
}

pub(super) async fn raw_step<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path((id, step)): Path<(String, i32)>,
) -> Response {
    match ui.admin.get_workflow(&id).await {
        Ok(Some(d)) => match d.steps.iter().find(|s| s.row.step_id == step) {
            Some(s) => match (&s.row.output, &s.row.error) {
                (Some(output), _) => text(html::pretty_json(output), true),
                (None, error) => text(error.clone().unwrap_or_default(), false),
            },
            None => ui.error_page(
                StatusCode::NOT_FOUND,
                &format!("workflow {id:?} has no step {step}"),
            ),
        },
        Ok(None) => ui.failure(crate::Error::WorkflowNotFound { id }),
        Err(e) => ui.failure(e),
    }
}

pub(super) async fn queues<S: Storage>(State(ui): State<Arc<Ui<S>>>) -> Response {
    let queues = match ui.admin.queues().await {
        Ok(q) => q,
        Err(e) => return ui.failure(e),
    };
    let base = ui.base();
    let now_ms = ui.admin.now_ms();
    let mut body = String::from(
        "<h1>Queues</h1><table id=\"queues\"><thead><tr><th>Queue</th><th>Enqueued</th><th>Running</th>\
         <th>Oldest waiting</th><th>Concurrency</th><th>Per key</th><th>Rate limit</th><th>Retention</th></tr></thead><tbody>",
    );
    for q in &queues {
        let name = &q.limits.name;
        let rate = q.limits.rate_limit.map_or_else(
            || "-".to_owned(),
            |(n, ms)| format!("{n} per {}", html::duration(ms)),
        );
        let _ = write!(
            body,
            "<tr data-queue=\"{0}\"><td>{0}</td><td class=\"num\"><a href=\"{base}/workflows?status=ENQUEUED&queue={1}\">{2}</a></td>\
             <td class=\"num\"><a href=\"{base}/workflows?status=RUNNING&queue={1}\">{3}</a></td><td>{4}</td><td>{5}</td><td>{6}</td><td>{rate}</td><td>{7}</td></tr>",
            esc(name),
            enc(name),
            q.enqueued,
            q.running,
            q.oldest_ready_ms
                .map_or_else(|| "-".to_owned(), |ms| html::duration(now_ms - ms)),
            q.limits
                .concurrency_global
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            q.limits
                .concurrency_per_key
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            q.limits
                .retention_ms
                .map_or_else(|| "forever".to_owned(), html::duration),
        );
    }
    body.push_str("</tbody></table>");
    Html(html::page(
        base,
        "Queues",
        "queues",
        ui.writable(),
        None,
        &body,
    ))
    .into_response()
}

pub(super) async fn executors<S: Storage>(State(ui): State<Arc<Ui<S>>>) -> Response {
    let executors = match ui.admin.executors().await {
        Ok(e) => e,
        Err(e) => return ui.failure(e),
    };
    let now_ms = ui.admin.now_ms();
    let mut body = String::from(
        "<h1>Executors</h1><table id=\"executors\"><thead><tr><th>Executor</th><th>State</th><th>Running</th>\
         <th>Version</th><th>Accepts</th><th>Last heartbeat</th><th>Lease</th><th>Registered (UTC)</th></tr></thead><tbody>",
    );
    for e in &executors {
        let live = e.lease_expires_ms > now_ms;
        let lease = if live {
            format!("expires in {}", html::duration(e.lease_expires_ms - now_ms))
        } else {
            format!(
                "expired {} ago",
                html::duration(now_ms - e.lease_expires_ms)
            )
        };
        let _ = write!(
            body,
            "<tr data-executor=\"{0}\"><td>{0}</td><td>{1}</td><td class=\"num\">{2}</td><td>{3}</td><td>{4}</td>\
             <td>{5} ago</td><td>{lease}</td><td>{6}</td></tr>",
            esc(&e.id),
            if live {
                html::status_badge("live")
            } else {
                html::status_badge("expired")
            },
            e.running,
            esc(e.version.as_deref().unwrap_or("-")),
            esc(&e.accepts.join(", ")),
            html::duration(now_ms - e.heartbeat_ms),
            html::time(e.started_ms),
        );
    }
    body.push_str("</tbody></table>");
    if executors.is_empty() {
        body.push_str("<p class=\"muted\">No executor is registered.</p>");
    }
    Html(html::page(
        ui.base(),
        "Executors",
        "executors",
        ui.writable(),
        None,
        &body,
    ))
    .into_response()
}

pub(super) async fn schedules<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let schedules = match ui.admin.schedules().await {
        Ok(s) => s,
        Err(e) => return ui.failure(e),
    };
    let base = ui.base();
    let mut body = String::from(
        "<h1>Schedules</h1><table id=\"schedules\"><thead><tr><th>Schedule</th><th>Workflow</th><th>Cron</th>\
         <th>Zone</th><th>Queue</th><th>State</th><th>Last tick (UTC)</th><th>Next tick</th><th></th></tr></thead><tbody>",
    );
    for s in &schedules {
        let action = if !ui.writable() {
            String::new()
        } else if s.paused {
            format!(
                "<form method=\"post\" action=\"{base}/schedules/{}/resume\"><button>Resume</button></form>",
                enc(&s.name)
            )
        } else {
            format!(
                "<form method=\"post\" action=\"{base}/schedules/{}/pause\"><button>Pause</button></form>",
                enc(&s.name)
            )
        };
        let _ = write!(
            body,
            "<tr data-schedule=\"{0}\"><td>{0}</td><td>{1}</td><td><code>{2}</code></td><td>{3}</td><td>{4}</td>\
             <td>{5}</td><td>{6}</td><td>{7}</td><td>{action}</td></tr>",
            esc(&s.name),
            esc(&s.workflow),
            esc(&s.cron),
            esc(&s.time_zone),
            esc(&s.queue),
            if s.paused { "paused" } else { "running" },
            html::time_or_dash(s.last_tick_ms),
            html::time_or_dash(s.next_tick_ms),
        );
    }
    body.push_str("</tbody></table>");
    Html(html::page(
        base,
        "Schedules",
        "schedules",
        ui.writable(),
        given(&q.notice).as_deref(),
        &body,
    ))
    .into_response()
}
