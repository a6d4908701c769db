//! The web dashboard (`tandem::ui`) over workflows in every state: its
//! pages and actions over HTTP on both backends (read-only refusals, the
//! write token, escaping, filters, counts, the metrics endpoint), and end
//! to end in headless Chromium over PostgreSQL (pages render, the filter
//! form filters, a payload shows whole, signing in and cancelling from the
//! page cancels the workflow).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem::storage::{Status, Storage, WorkflowFilter};
use tandem::ui::{self, UiOptions};
use tandem::{
    Admin, Engine, EnqueueOptions, Queue, Schedule, ScheduledTick, StartOptions, Workflow,
    WorkflowContext, WorkflowError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, App, PgApp, both};

both!(
    pages_show_every_state_and_count_what_the_filter_selects,
    actions_need_write_mode_and_the_token,
    the_metrics_endpoint_reports_steps_workflows_and_queue_depth,
);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    item: String,
    /// Fail in step `charge`.
    fail: bool,
    /// Wait for a message `go` (stays RUNNING) after the child.
    hold: bool,
    /// Return an output longer than a page shows.
    big: bool,
}

/// A few steps of every kind a page shows: a plain step, an event, a
/// child, a receive.
struct Shop;

impl<S: Storage> Workflow<S> for Shop {
    const NAME: &'static str = "shop";
    type Input = Order;
    type Output = String;

    async fn run(&self, ctx: &mut WorkflowContext<S>, o: Order) -> Result<String, WorkflowError> {
        let item = o.item.clone();
        let reserved: String = ctx
            .step("reserve", || {
                let item = item.clone();
                async move { Ok::<_, std::io::Error>(format!("reserved {item}")) }
            })
            .await?;
        ctx.set_event("stage", &"reserved").await?;
        let ship = ctx.start_child::<Ship>(o.item.clone()).await?;
        let label = ctx.child_result(&ship).await?;
        if o.hold {
            ctx.recv::<String>("go", Duration::from_secs(600)).await?;
        }
        if o.fail {
            ctx.step("charge", || async {
                Err::<(), _>(std::io::Error::other("card declined"))
            })
            .await?;
        }
        if o.big {
            return Ok("x".repeat(6_000));
        }
        Ok(format!("{reserved}, {label}"))
    }
}

/// The child: one step.
struct Ship;

impl<S: Storage> Workflow<S> for Ship {
    const NAME: &'static str = "ship";
    type Input = String;
    type Output = String;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        item: String,
    ) -> Result<String, WorkflowError> {
        ctx.step("label", || {
            let item = item.clone();
            async move { Ok::<_, std::io::Error>(format!("label for {item}")) }
        })
        .await
    }
}

/// A nightly report (its schedule is what the schedules page shows).
struct Nightly;

impl<S: Storage> Workflow<S> for Nightly {
    const NAME: &'static str = "nightly";
    type Input = ScheduledTick;
    type Output = ();

    async fn run(&self, _: &mut WorkflowContext<S>, _: ScheduledTick) -> Result<(), WorkflowError> {
        Ok(())
    }
}

/// The workflows of the fixture, by state.
struct Fixture<S: Storage> {
    engine: Engine<S>,
    success: String,
    big: String,
    error: String,
    running: String,
    cancelled: String,
    enqueued: String,
}

fn order(item: &str) -> Order {
    Order {
        item: item.to_owned(),
        fail: false,
        hold: false,
        big: false,
    }
}

/// The W3C `traceparent` the big order is started with.
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn fixture<S: Storage>(storage: S) -> Fixture<S> {
    let engine = Engine::builder(storage)
        .register(Shop)
        .register(Ship)
        .schedule(Nightly, Schedule::new("nightly", "0 0 3 * * *").unwrap())
        .queue(Queue::new("orders"))
        .poll_interval(Duration::from_millis(50))
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .expect("launch");
    // Names and inputs carry markup: pages must show it as text.
    let success = engine
        .start_with_id::<Shop>("order-<b>1</b>", order("<script>alert(1)</script>"))
        .await
        .unwrap();
    success.result().await.expect("order 1 succeeds");
    // The big order continues a caller's trace.
    let big = engine
        .start_with::<Shop>(
            Order {
                big: true,
                ..order("crate")
            },
            StartOptions::new()
                .workflow_id("order-big")
                .trace_parent(TRACE),
        )
        .await
        .unwrap();
    big.result().await.expect("the big order succeeds");
    let error = engine
        .start_with_id::<Shop>(
            "order-declined",
            Order {
                fail: true,
                ..order("hat")
            },
        )
        .await
        .unwrap();
    assert!(error.result().await.is_err());
    let running = engine
        .start_with_id::<Shop>(
            "order-held",
            Order {
                hold: true,
                ..order("lamp")
            },
        )
        .await
        .unwrap();
    let cancelled = engine
        .start_with_id::<Shop>(
            "order-cancelled",
            Order {
                hold: true,
                ..order("desk")
            },
        )
        .await
        .unwrap();
    let admin = engine.admin();
    for id in [running.workflow_id(), cancelled.workflow_id()] {
        wait_for_steps(&admin, id, 4).await;
    }
    engine.cancel(cancelled.workflow_id()).await.unwrap();
    // A message the held workflow has not received (it waits on "go").
    admin
        .send(running.workflow_id(), "note", &json!({"gift": true}))
        .await
        .unwrap();
    // Delayed an hour: stays ENQUEUED.
    let enqueued = engine
        .enqueue::<Shop>(
            order("chair"),
            EnqueueOptions::default()
                .queue("orders")
                .workflow_id("order-later")
                .delay(Duration::from_secs(3_600)),
        )
        .await
        .unwrap();
    Fixture {
        success: success.workflow_id().to_owned(),
        big: big.workflow_id().to_owned(),
        error: error.workflow_id().to_owned(),
        running: running.workflow_id().to_owned(),
        cancelled: cancelled.workflow_id().to_owned(),
        enqueued: enqueued.workflow_id().to_owned(),
        engine,
    }
}

async fn wait_for_steps<S: Storage>(admin: &Admin<S>, id: &str, n: usize) {
    for _ in 0..400 {
        if let Ok(Some(d)) = admin.get_workflow(id).await
            && d.steps.len() >= n
        {
            return;
        }
        support::sleep(Duration::from_millis(25)).await;
    }
    panic!("workflow {id} never recorded {n} steps");
}

/// Serves the dashboard on a free port of 127.0.0.1.
async fn serve<S: Storage>(admin: Admin<S>, options: UiOptions) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = ui::router(admin, options);
    // A test server on real tokio, never simulated.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// One HTTP/1.1 exchange: status, headers, body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read the head, then as many bytes as Content-Length says: a server
    // may keep the connection open (chromedriver does).
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let (head, body) = loop {
        let n = stream.read(&mut buf).await.unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            let complete = length.is_some_and(|len| rest.len() >= len);
            if complete || n == 0 {
                break (head.to_owned(), rest.to_owned());
            }
        } else if n == 0 {
            break (text, String::new());
        }
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http(addr, "GET", path, &[], "").await;
    (status, body)
}

async fn pages_show_every_state_and_count_what_the_filter_selects<A: App>() {
    let (storage, _bank) = support::bank::<A>().await;
    let f = fixture(storage.clone()).await;
    let addr = serve(Admin::new(storage), UiOptions::read_only()).await;

    let (status, list) = get(addr, "/workflows").await;
    assert_eq!(status, 200);
    for id in [&f.success, &f.error, &f.running, &f.cancelled, &f.enqueued] {
        let escaped = id.replace('<', "&lt;").replace('>', "&gt;");
        assert!(list.contains(&escaped), "{id} missing from the list");
    }
    assert!(
        !list.contains("order-<b>"),
        "markup in an ID must show as text"
    );
    // Counts by status, as `Admin` counts them.
    let admin = f.engine.admin();
    let counts = admin
        .count_workflows(WorkflowFilter::default(), 10_000)
        .await
        .unwrap();
    for (s, n) in &counts {
        let chip = format!("data-status=\"{}\"", s.as_str());
        let at = list.find(&chip).expect("a count per status");
        assert!(
            list[at..].contains(&format!("<b>{n}</b>")),
            "count of {s} should read {n}"
        );
    }
    let by = |s: Status| counts.iter().find(|(x, _)| *x == s).unwrap().1;
    assert_eq!(
        (by(Status::Success), by(Status::Error), by(Status::Running)),
        (7, 1, 1),
        "2 orders and the 5 children succeeded, 1 failed, 1 holds"
    );
    assert_eq!((by(Status::Cancelled), by(Status::Enqueued)), (1, 1));

    // The status filter lists only that status; the name filter with it.
    let (_, errors) = get(addr, "/workflows?status=ERROR").await;
    assert!(errors.contains(&f.error));
    assert!(!errors.contains(&f.running) && !errors.contains("order-big"));
    let (_, ships) = get(addr, "/workflows?name=ship&status=SUCCESS").await;
    assert_eq!(ships.matches("<tr data-id=").count(), 5, "{ships}");
    let (_, later) = get(addr, "/workflows?queue=orders").await;
    assert!(later.contains(&f.enqueued) && !later.contains(&f.error));
    let (status, bad) = get(addr, "/workflows?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(bad.contains("since"), "{bad}");
    let (_, none) = get(addr, "/workflows?since=2999-01-01T00:00").await;
    assert!(none.contains("No workflows."));

    // A workflow's page: fields, steps, child, messages, events; the
    // input's markup escaped.
    let (status, page) = get(addr, &format!("/workflows/{}", f.running)).await;
    assert_eq!(status, 200);
    assert!(page.contains("<tr data-step=\"0\">") && page.contains("reserve"));
    assert!(
        page.contains("data-id=\"order-held-"),
        "its child is listed: {page}"
    );
    assert!(
        page.contains("note") && page.contains("gift"),
        "the waiting message"
    );
    assert!(
        page.contains("stage") && page.contains("reserved"),
        "the event"
    );
    assert!(!page.contains("cancel\""), "no actions in read-only mode");
    assert!(page.contains("<dd id=\"trace\">-</dd>"), "no trace: {page}");
    let (_, first) = get(addr, "/workflows/order-%3Cb%3E1%3C%2Fb%3E").await;
    assert!(first.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!first.contains("<script>"));
    // A long output is cut, and shown whole at its link.
    let (_, big) = get(addr, &format!("/workflows/{}", f.big)).await;
    assert!(big.contains("Show it whole"));
    assert!(
        big.contains(&format!("<dd id=\"trace\">{TRACE}</dd>")),
        "the stored trace context: {big}"
    );
    let (status, whole) = get(addr, &format!("/workflows/{}/output", f.big)).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<String>(&whole).unwrap().len(), 6_000);
    let (status, _) = get(addr, "/workflows/no-such-workflow").await;
    assert_eq!(status, 404);

    // Queues and executors.
    let (_, queues) = get(addr, "/queues").await;
    assert!(queues.contains("data-queue=\"orders\""));
    let orders = &queues[queues.find("data-queue=\"orders\"").unwrap()..];
    assert!(
        orders.contains(">1</a>"),
        "one enqueued in orders: {orders}"
    );
    let (_, executors) = get(addr, "/executors").await;
    assert!(executors.contains(f.engine.executor_id()));
    assert!(executors.contains("expires in"));
    f.engine.shutdown().await;
}

async fn actions_need_write_mode_and_the_token<A: App>() {
    let (storage, _bank) = support::bank::<A>().await;
    let f = fixture(storage.clone()).await;
    let admin = Admin::new(storage);
    let read_only = serve(admin.clone(), UiOptions::read_only()).await;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let cancel = format!("/workflows/{}/cancel", f.running);
    let (status, _, _) = http(read_only, "POST", &cancel, &form, "").await;
    assert_eq!(status, 403);

    let writable = serve(admin.clone(), UiOptions::read_only().write_token("s3cret")).await;
    let (status, _, _) = http(writable, "POST", &cancel, &form, "").await;
    assert_eq!(status, 401, "no token");
    let wrong = [("Authorization", "Bearer s3cre7")];
    let (status, _, _) = http(writable, "POST", &cancel, &wrong, "").await;
    assert_eq!(status, 401, "a wrong token");
    let (status, _, _) = http(writable, "POST", "/login", &form, "token=nope").await;
    assert_eq!(status, 401);
    assert_eq!(
        admin
            .get_workflow(&f.running)
            .await
            .unwrap()
            .unwrap()
            .workflow
            .row
            .status,
        Status::Running,
        "refused actions change nothing"
    );

    // Sign in: the cookie it sets authorizes the cancel.
    let (status, head, _) = http(writable, "POST", "/login", &form, "token=s3cret").await;
    assert_eq!(status, 303);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().unwrap();
    let with_cookie = [("Cookie", pair)];
    let (status, head, _) = http(writable, "POST", &cancel, &with_cookie, "").await;
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("notice=Cancelled"));
    assert_eq!(
        admin
            .get_workflow(&f.running)
            .await
            .unwrap()
            .unwrap()
            .workflow
            .row
            .status,
        Status::Cancelled
    );
    // Resume it again, then fork the successful order from step 1.
    let resume = format!("/workflows/{}/resume", f.running);
    let bearer = [("Authorization", "Bearer s3cret")];
    let (status, _, _) = http(writable, "POST", &resume, &bearer, "").await;
    assert_eq!(status, 303);
    let (status, _, _) = http(writable, "POST", &resume, &bearer, "").await;
    assert_eq!(status, 409, "resuming a running workflow is refused");
    let fork = format!("/workflows/{}/fork", f.error);
    let both = [bearer[0], form[0]];
    let (status, head, _) = http(writable, "POST", &fork, &both, "from_step=1").await;
    assert_eq!(status, 303);
    assert!(head.contains("/workflows/order-declined-fork-"), "{head}");
    let (status, _, _) = http(writable, "POST", &fork, &both, "from_step=abc").await;
    assert_eq!(status, 400);

    // Pause and resume the schedule from its page's actions.
    let paused = || async {
        let all = admin.schedules().await.unwrap();
        all.iter().find(|s| s.name == "nightly").unwrap().paused
    };
    let (_, page) = get(writable, "/schedules").await;
    assert!(page.contains("/schedules/nightly/pause"), "{page}");
    let (status, _, _) = http(writable, "POST", "/schedules/nightly/pause", &wrong, "").await;
    assert_eq!(status, 401);
    assert!(!paused().await);
    let (status, _, _) = http(writable, "POST", "/schedules/nightly/pause", &bearer, "").await;
    assert_eq!(status, 303);
    assert!(paused().await);
    let (_, page) = get(writable, "/schedules").await;
    assert!(page.contains("/schedules/nightly/resume") && page.contains("paused"));
    let (status, _, _) = http(writable, "POST", "/schedules/nightly/resume", &bearer, "").await;
    assert_eq!(status, 303);
    assert!(!paused().await);
    let (status, _, _) = http(writable, "POST", "/schedules/nope/pause", &bearer, "").await;
    assert_eq!(status, 404);
    f.engine.shutdown().await;
}

/// The process's recorder: engine metrics of every test in this binary
/// land in it (counts only grow, so each test asserts lower bounds).
fn recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("install the recorder")
        })
        .clone()
}

/// A sample's value in Prometheus text (`name{labels} value`).
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn the_metrics_endpoint_reports_steps_workflows_and_queue_depth<A: App>() {
    let handle = recorder();
    let (storage, _bank) = support::bank::<A>().await;
    let f = fixture(storage.clone()).await;
    let addr = serve(Admin::new(storage), UiOptions::read_only().metrics(handle)).await;
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let at_least = |key: &str, n: f64| {
        let v = sample(&text, key).unwrap_or_else(|| panic!("no sample {key} in\n{text}"));
        assert!(v >= n, "{key} = {v}, expected at least {n}");
    };
    at_least("tandem_steps_total{kind=\"step\",outcome=\"ok\"}", 8.0);
    at_least("tandem_steps_total{kind=\"step\",outcome=\"error\"}", 1.0);
    at_least(
        "tandem_workflows_total{workflow=\"shop\",status=\"SUCCESS\"}",
        2.0,
    );
    at_least(
        "tandem_workflows_total{workflow=\"shop\",status=\"ERROR\"}",
        1.0,
    );
    at_least("tandem_step_duration_seconds_count{kind=\"step\"}", 9.0);
    // Gauges from this database at this scrape.
    assert_eq!(
        sample(&text, "tandem_queue_enqueued{queue=\"orders\"}"),
        Some(1.0)
    );
    assert!(sample(&text, "tandem_executors_live").is_some_and(|n| n >= 1.0));
    let (status, _) = get(
        serve(f.engine.admin(), UiOptions::read_only()).await,
        "/metrics",
    )
    .await;
    assert_eq!(status, 404, "no metrics unless configured");
    f.engine.shutdown().await;
}

// ---------------------------------------------------------------------------
// In a real browser.

/// A WebDriver session on headless Chromium (Debian's `chromium` and
/// `chromium-driver`), driven over HTTP.
struct Browser {
    driver: std::process::Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Browser {
    /// Starts one, or fails saying what to install: the browser tests never
    /// skip silently. `TANDEM_BROWSER_TESTS=skip` skips them on purpose.
    async fn start() -> Option<Browser> {
        if std::env::var("TANDEM_BROWSER_TESTS").as_deref() == Ok("skip") {
            eprintln!("TANDEM_BROWSER_TESTS=skip: the browser tests are skipped");
            return None;
        }
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: apt-get install -y chromium chromium-driver \
                 (or set TANDEM_BROWSER_TESTS=skip to skip the browser tests on purpose)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            support::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags the machine notes give for root in a closed network.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1360,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}});
        let created = browser.call("POST", "/session", caps).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let headers = [("Content-Type", "application/json")];
        let (_, _, text) = http(self.addr, method, path, &headers, &body).await;
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("chromedriver answered {text:?}: {e}"));
        if let Some(error) = value["value"]["error"].as_str() {
            panic!(
                "webdriver {method} {path}: {error}: {}",
                value["value"]["message"]
            );
        }
        value["value"].clone()
    }

    /// Ends the session, which closes the browser.
    async fn quit(&self) {
        self.session("DELETE", "", json!({})).await;
    }

    async fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({"url": url})).await;
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .session(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `css`, waiting up to 10 s for it (a
    /// click that submits a form returns before the next page loads).
    async fn find(&self, css: &str) -> String {
        for _ in 0..200 {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            support::sleep(Duration::from_millis(50)).await;
        }
        let source = self.session("GET", "/source", Value::Null).await;
        panic!(
            "no element {css} at {} in:\n{}",
            self.url().await,
            source.as_str().unwrap_or_default()
        );
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.session("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    async fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.session(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.session("GET", &format!("/element/{e}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn attributes(&self, css: &str, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.find_all(css).await {
            let v = self
                .session(
                    "GET",
                    &format!("/element/{e}/attribute/{name}"),
                    Value::Null,
                )
                .await;
            out.push(v.as_str().unwrap_or_default().to_owned());
        }
        out
    }

    /// Waits up to 10 s for the address to contain `part` (the page a
    /// click navigated to).
    async fn wait_url(&self, part: &str) {
        for _ in 0..200 {
            if self.url().await.contains(part) {
                return;
            }
            support::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the browser never reached a URL with {part:?}: {}",
            self.url().await
        );
    }

    async fn url(&self) -> String {
        self.session("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a screenshot as `<TANDEM_UI_SCREENSHOTS>/<name>.png`, if that
    /// variable names a directory (docs/ui.md's pictures come from here).
    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("TANDEM_UI_SCREENSHOTS") else {
            return;
        };
        let shot = self.session("GET", "/screenshot", Value::Null).await;
        let png = base64_decode(shot.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser first (chromedriver's child, in a process group of
        // its own): killing only chromedriver left every run's Chromium
        // behind (66 of them after a day of test runs, taking CPU from
        // the benchmarks). `quit` closes it the polite way; this is for a
        // test that panicked.
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-P", &self.driver.id().to_string()])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (what WebDriver's screenshots are).
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = s.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[tokio::test]
async fn in_chromium_the_pages_render_filter_and_cancel() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (storage, _bank) = support::bank::<PgApp>().await;
    let f = fixture(storage.clone()).await;
    let admin = Admin::new(storage);
    let addr = serve(
        admin.clone(),
        UiOptions::read_only().write_token("let-me-in"),
    )
    .await;
    let base = format!("http://{addr}");

    // The list, with counts per status.
    browser.goto(&format!("{base}/workflows")).await;
    let success = browser.text("#counts a[data-status=SUCCESS] b").await;
    assert_eq!(success, "7");
    assert_eq!(browser.find_all("#workflows tbody tr").await.len(), 11);
    browser.screenshot("workflows").await;

    // The filter form: status ERROR, then name `ship` with SUCCESS.
    browser.click("#f-status option[value=ERROR]").await;
    browser.click("#apply").await;
    browser.wait_url("status=ERROR").await;
    assert_eq!(
        browser.attributes("#workflows tbody tr", "data-id").await,
        vec![f.error.clone()]
    );
    browser.click("#f-status option[value=SUCCESS]").await;
    browser.type_in("#f-name", "ship").await;
    browser.click("#apply").await;
    browser.wait_url("name=ship").await;
    let ships = browser.attributes("#workflows tbody tr", "data-id").await;
    assert_eq!(ships.len(), 5, "{ships:?}");
    assert!(ships.iter().all(|id| id.contains("-child-")));
    // A count link: the CANCELLED chip lists the cancelled order.
    browser.goto(&format!("{base}/workflows")).await;
    browser.click("#counts a[data-status=CANCELLED]").await;
    browser.wait_url("status=CANCELLED").await;
    assert_eq!(
        browser.attributes("#workflows tbody tr", "data-id").await,
        vec![f.cancelled.clone()]
    );

    // A workflow's page, reached by its link; its long output whole.
    browser.goto(&format!("{base}/workflows")).await;
    browser
        .click(&format!("#workflows tr[data-id={}] a", f.big))
        .await;
    browser.wait_url(&format!("/workflows/{}", f.big)).await;
    assert_eq!(browser.text("#workflow-id").await, f.big);
    assert_eq!(browser.find_all("#steps tbody tr").await.len(), 4);
    browser.screenshot("workflow").await;
    browser.click("a.whole").await;
    browser.wait_url("/output").await;

    // Sign in, then cancel the held workflow from its page.
    browser
        .goto(&format!("{base}/workflows/{}", f.running))
        .await;
    assert!(
        browser.find_all("#cancel").await.len() == 1,
        "write mode shows the cancel button"
    );
    browser.screenshot("workflow-running").await;
    browser.goto(&format!("{base}/login")).await;
    browser.type_in("#token", "let-me-in").await;
    browser.click("#sign-in").await;
    assert!(browser.text("#notice").await.contains("Signed in"));
    browser
        .goto(&format!("{base}/workflows/{}", f.running))
        .await;
    browser.click("#cancel").await;
    assert!(
        browser
            .text("#notice")
            .await
            .contains("Cancelled 1 workflow(s)")
    );
    assert!(browser.find_all("#resume").await.len() == 1);
    let detail = admin.get_workflow(&f.running).await.unwrap().unwrap();
    assert_eq!(detail.workflow.row.status, Status::Cancelled);

    // Queues and executors.
    browser.goto(&format!("{base}/queues")).await;
    assert_eq!(
        browser.attributes("#queues tbody tr", "data-queue").await,
        vec!["default".to_owned(), "orders".to_owned()]
    );
    browser.screenshot("queues").await;
    browser.goto(&format!("{base}/executors")).await;
    assert_eq!(
        browser
            .attributes("#executors tbody tr", "data-executor")
            .await,
        vec![f.engine.executor_id().to_owned()]
    );
    browser.screenshot("executors").await;
    browser.quit().await;
    f.engine.shutdown().await;
}
