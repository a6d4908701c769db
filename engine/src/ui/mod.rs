//! The web dashboard: an [axum](https://docs.rs/axum) router over
//! [`Admin`], served by `tandem ui` or mounted in the application's own
//! server. It shows workflows (filtered, with counts per status), a
//! workflow's steps as a timeline with its children, messages and events,
//! the queues, the executors and the schedules; with a write token it also
//! cancels, resumes and forks workflows and pauses schedules. It reads and
//! writes only through `Admin`, so it holds no SQL and works on every
//! backend. See docs/ui.md.
//!
//! ```no_run
//! # async fn example(storage: tandem::PgStorage) -> std::io::Result<()> {
//! use tandem::ui::{self, UiOptions};
//! let app = ui::router(tandem::Admin::new(storage), UiOptions::read_only());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4780").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod html;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::admin::Admin;
use crate::error::Error;
use crate::storage::Storage;

/// The name of the cookie that carries the write token after sign-in.
const COOKIE: &str = "tandem_ui_token";

/// How the dashboard is served.
#[derive(Clone, Default)]
pub struct UiOptions {
    token: Option<String>,
    metrics: Option<PrometheusHandle>,
    base_path: String,
}

impl std::fmt::Debug for UiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiOptions")
            .field("writable", &self.token.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("base_path", &self.base_path)
            .finish()
    }
}

impl UiOptions {
    /// A dashboard that only shows: every action answers 403.
    pub fn read_only() -> Self {
        Self::default()
    }

    /// Write mode: cancel, resume, fork, pause and resume a schedule are
    /// allowed to a browser signed in with `token` (at `/login`, which sets
    /// an HttpOnly, SameSite=Strict cookie) or to a request carrying
    /// `Authorization: Bearer <token>`.
    pub fn write_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Serves `/metrics` in the Prometheus text format from `handle`, after
    /// setting the queue and executor gauges from the database through the
    /// `metrics` facade (so `handle` must be the installed recorder's).
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// The path the router is nested under (for example `/tandem` with
    /// `Router::nest("/tandem", ...)`), which every link the pages carry
    /// starts with. Empty by default.
    pub fn base_path(mut self, base: impl Into<String>) -> Self {
        self.base_path = base.into().trim_end_matches('/').to_owned();
        self
    }
}

/// The state every handler shares.
struct Ui<S: Storage> {
    admin: Admin<S>,
    options: UiOptions,
}

impl<S: Storage> Ui<S> {
    fn base(&self) -> &str {
        &self.options.base_path
    }

    fn writable(&self) -> bool {
        self.options.token.is_some()
    }

    /// Whether the request may act: write mode, and the right token in the
    /// cookie or the `Authorization` header.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(token) = &self.options.token else {
            return Err(self.refusal(
                StatusCode::FORBIDDEN,
                "This dashboard is read-only: start it in write mode (tandem ui --write) to act on workflows.",
            ));
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .next();
        if [bearer, cookie]
            .into_iter()
            .flatten()
            .any(|given| same(given.as_bytes(), token.as_bytes()))
        {
            return Ok(());
        }
        Err(self.refusal(
            StatusCode::UNAUTHORIZED,
            "This action needs the write token: sign in first.",
        ))
    }

    fn refusal(&self, status: StatusCode, message: &str) -> Response {
        let body = format!(
            "<h1>{}</h1><p class=\"error-box\">{}</p><p><a href=\"{}/login\">Sign in</a></p>",
            status.canonical_reason().unwrap_or("Refused"),
            html::esc(message),
            self.base()
        );
        let page = html::page(self.base(), "Refused", "", self.writable(), None, &body);
        (status, Html(page)).into_response()
    }

    /// An error of `Admin` as a page with the matching status code.
    fn failure(&self, error: Error) -> Response {
        let status = match &error {
            Error::WorkflowNotFound { .. } => StatusCode::NOT_FOUND,
            Error::InvalidTransition { .. } | Error::InvalidSchedule { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        self.error_page(status, &error.to_string())
    }

    fn error_page(&self, status: StatusCode, message: &str) -> Response {
        let body = format!(
            "<h1>{}</h1><p class=\"error-box\" id=\"error\">{}</p>",
            status.canonical_reason().unwrap_or("Error"),
            html::esc(message)
        );
        let page = html::page(self.base(), "Error", "", self.writable(), None, &body);
        (status, Html(page)).into_response()
    }

    /// After an action: back to `to` (below the base path) with a notice.
    fn done(&self, to: &str, notice: &str) -> Response {
        let sep = if to.contains('?') { '&' } else { '?' };
        Redirect::to(&format!(
            "{}{to}{sep}notice={}",
            self.base(),
            html::enc(notice)
        ))
        .into_response()
    }
}

/// Compares two secrets in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An HTML response.
struct Html(String);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                // Pages carry no script; forbid any that an escaping bug
                // might let through, and framing by other sites.
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
                    ),
                ),
            ],
            self.0,
        )
            .into_response()
    }
}

/// The dashboard's router over `admin`.
pub fn router<S: Storage>(admin: Admin<S>, options: UiOptions) -> Router {
    let ui = Arc::new(Ui { admin, options });
    Router::new()
        .route("/", get(index::<S>))
        .route("/workflows", get(pages::workflows::<S>))
        .route("/workflows/{id}", get(pages::workflow::<S>))
        .route("/workflows/{id}/input", get(pages::raw_input::<S>))
        .route("/workflows/{id}/output", get(pages::raw_output::<S>))
        .route(
            "/workflows/{id}/steps/{step}/output",
            get(pages::raw_step::<S>),
        )
        .route("/workflows/{id}/cancel", post(cancel::<S>))
        .route("/workflows/{id}/resume", post(resume::<S>))
        .route("/workflows/{id}/fork", post(fork::<S>))
        .route("/queues", get(pages::queues::<S>))
        .route("/executors", get(pages::executors::<S>))
        .route("/schedules", get(pages::schedules::<S>))
        .route("/schedules/{name}/pause", post(pause_schedule::<S>))
        .route("/schedules/{name}/resume", post(resume_schedule::<S>))
        .route("/login", get(login_form::<S>).post(login::<S>))
        .route("/metrics", get(metrics_text::<S>))
        .with_state(ui)
}

async fn index<S: Storage>(State(ui): State<Arc<Ui<S>>>) -> Response {
    Redirect::to(&format!("{}/workflows", ui.base())).into_response()
}

async fn cancel<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = ui.authorize(&headers) {
        return refused;
    }
    match ui.admin.cancel(&id).await {
        Ok(cancelled) if cancelled.is_empty() => ui.done(
            &html::workflow_path(&id),
            "Already finished: nothing to cancel.",
        ),
        Ok(cancelled) => ui.done(
            &html::workflow_path(&id),
            &format!("Cancelled {} workflow(s).", cancelled.len()),
        ),
        Err(e) => ui.failure(e),
    }
}

async fn resume<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = ui.authorize(&headers) {
        return refused;
    }
    match ui.admin.resume(&id).await {
        Ok(()) => ui.done(&html::workflow_path(&id), "Resumed."),
        Err(e) => ui.failure(e),
    }
}

#[derive(Deserialize)]
struct ForkForm {
    from_step: String,
}

async fn fork<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ForkForm>,
) -> Response {
    if let Err(refused) = ui.authorize(&headers) {
        return refused;
    }
    let Ok(from_step) = form.from_step.trim().parse::<i32>() else {
        return ui.error_page(
            StatusCode::BAD_REQUEST,
            &format!("from step must be a step number, not {:?}", form.from_step),
        );
    };
    match ui.admin.fork(&id, from_step).await {
        Ok(new_id) => ui.done(
            &html::workflow_path(&new_id),
            &format!("Forked from {id} at step {from_step}."),
        ),
        Err(e) => ui.failure(e),
    }
}

async fn pause_schedule<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(&ui, &name, &headers, true).await
}

async fn resume_schedule<S: Storage>(
    State(ui): State<Arc<Ui<S>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(&ui, &name, &headers, false).await
}

async fn set_paused<S: Storage>(
    ui: &Ui<S>,
    name: &str,
    headers: &HeaderMap,
    pause: bool,
) -> Response {
    if let Err(refused) = ui.authorize(headers) {
        return refused;
    }
    match ui.admin.schedules().await {
        Ok(all) if !all.iter().any(|s| s.name == name) => {
            return ui.error_page(StatusCode::NOT_FOUND, &format!("no schedule {name:?}"));
        }
        Ok(_) => {}
        Err(e) => return ui.failure(e),
    }
    let (done, verb) = if pause {
        (ui.admin.pause_schedule(name).await, "Paused")
    } else {
        (ui.admin.resume_schedule(name).await, "Resumed")
    };
    match done {
        Ok(_) => ui.done("/schedules", &format!("{verb} {name}.")),
        Err(e) => ui.failure(e),
    }
}

async fn login_form<S: Storage>(State(ui): State<Arc<Ui<S>>>) -> Response {
    let body = if ui.writable() {
        format!(
            "<h1>Sign in</h1><form method=\"post\" action=\"{}/login\" class=\"filters\">\
             <label>Write token<input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\"></label>\
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>",
            ui.base()
        )
    } else {
        "<h1>Sign in</h1><p>This dashboard is read-only; there is nothing to sign in to.</p>"
            .to_owned()
    };
    Html(html::page(
        ui.base(),
        "Sign in",
        "",
        ui.writable(),
        None,
        &body,
    ))
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login<S: Storage>(State(ui): State<Arc<Ui<S>>>, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = &ui.options.token else {
        return ui.refusal(StatusCode::FORBIDDEN, "This dashboard is read-only.");
    };
    if !same(form.token.as_bytes(), token.as_bytes()) {
        return ui.refusal(StatusCode::UNAUTHORIZED, "Wrong token.");
    }
    let path = if ui.base().is_empty() { "/" } else { ui.base() };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path={path}");
    let mut response = ui.done("/workflows", "Signed in: actions are enabled.");
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => ui.error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the write token cannot be carried in a cookie (use printable ASCII)",
        ),
    }
}

/// Gauges read from the database at each scrape.
pub mod gauges {
    /// Workflows waiting in a queue, by queue.
    pub const QUEUE_ENQUEUED: &str = "tandem_queue_enqueued";
    /// Workflows of a queue owned by an executor, by queue.
    pub const QUEUE_RUNNING: &str = "tandem_queue_running";
    /// How long the oldest workflow that could start now has waited, by
    /// queue (0 when none waits).
    pub const QUEUE_OLDEST_READY_SECONDS: &str = "tandem_queue_oldest_ready_seconds";
    /// Executors whose lease has not expired.
    pub const EXECUTORS_LIVE: &str = "tandem_executors_live";
}

async fn metrics_text<S: Storage>(State(ui): State<Arc<Ui<S>>>) -> Response {
    let Some(handle) = &ui.options.metrics else {
        return ui.error_page(StatusCode::NOT_FOUND, "metrics are not served here");
    };
    let now_ms = ui.admin.now_ms();
    match ui.admin.queues().await {
        Ok(queues) => {
            for q in queues {
                let name = q.limits.name.clone();
                metrics::gauge!(gauges::QUEUE_ENQUEUED, "queue" => name.clone())
                    .set(q.enqueued as f64);
                metrics::gauge!(gauges::QUEUE_RUNNING, "queue" => name.clone())
                    .set(q.running as f64);
                let waited = q.oldest_ready_ms.map_or(0, |ms| (now_ms - ms).max(0));
                metrics::gauge!(gauges::QUEUE_OLDEST_READY_SECONDS, "queue" => name)
                    .set(waited as f64 / 1000.0);
            }
        }
        Err(e) => return ui.failure(e),
    }
    match ui.admin.executors().await {
        Ok(executors) => {
            let live = executors
                .iter()
                .filter(|e| e.lease_expires_ms > now_ms)
                .count();
            metrics::gauge!(gauges::EXECUTORS_LIVE).set(live as f64);
        }
        Err(e) => return ui.failure(e),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// Query parameters as forms send them: an empty field is no filter.
fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn html_and_urls_are_escaped() {
        assert_eq!(
            html::esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(html::enc("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
    }

    #[test]
    fn durations_read_in_two_units() {
        assert_eq!(html::duration(850), "850 ms");
        assert_eq!(html::duration(12_340), "12.3 s");
        assert_eq!(html::duration(250_000), "4 m 10 s");
        assert_eq!(html::duration(11_100_000), "3 h 5 m");
        assert_eq!(html::duration(187_200_000), "2 d 4 h");
    }

    #[test]
    fn long_payloads_are_cut_with_a_link_to_the_whole() {
        let long = format!("\"{}\"", "x".repeat(5_000));
        let shown = html::payload(&long, "/w/input");
        assert!(shown.contains("Show it whole"), "{shown}");
        assert!(shown.len() < 3_000);
        let small = html::payload("{\"a\":1}", "/w/input");
        assert!(!small.contains("Show it whole"));
        assert!(small.contains("&quot;a&quot;: 1"), "{small}");
    }
}
