//! The `tandem` binary, spawned as a user would run it against a real
//! database: every command in table and `--json` form, its errors, and its
//! exit codes.

#![cfg(feature = "cli")]

use std::time::Duration;

use serde_json::Value;
use tandem::{
    Engine, EnqueueOptions, PgStorage, Queue, RetryPolicy, Workflow, WorkflowContext, WorkflowError,
};

use crate::support;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `tandem ARGS` with `--database-url url` (and no `DATABASE_URL`, so
/// the flag is what counts).
async fn tandem(url: &str, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
    command
        .arg("--database-url")
        .arg(url)
        .args(args)
        .env_remove("DATABASE_URL");
    spawn(command).await
}

async fn spawn(mut command: tokio::process::Command) -> Run {
    let out = command.output().await.expect("run the tandem binary");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// The stdout of a run that must succeed.
async fn ok(url: &str, args: &[&str]) -> String {
    let run = tandem(url, args).await;
    assert_eq!(run.code, 0, "tandem {args:?} failed: {run:?}");
    run.stdout
}

/// The one JSON document a successful `--json` run prints.
async fn json(url: &str, args: &[&str]) -> Value {
    let stdout = ok(url, &[&["--json"], args].concat()).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The stderr of a run that must fail with `code`; it prints nothing on
/// stdout.
async fn fails(url: &str, args: &[&str], code: i32) -> String {
    let run = tandem(url, args).await;
    assert_eq!(run.code, code, "tandem {args:?}: {run:?}");
    assert_eq!(run.stdout, "", "tandem {args:?}");
    run.stderr
}

/// The IDs in a JSON list of workflows.
fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|w| w["id"].as_str().expect("an id"))
        .collect()
}

fn sorted(mut ids: Vec<&str>) -> Vec<&str> {
    ids.sort_unstable();
    ids
}

/// The table rows (after the header) whose first column is `id`, split on
/// runs of spaces.
fn row<'a>(table: &'a str, id: &str) -> Vec<&'a str> {
    table
        .lines()
        .skip(1)
        .map(|line| line.split("  ").map(str::trim).filter(|c| !c.is_empty()))
        .map(Iterator::collect::<Vec<_>>)
        .find(|cells| cells.first() == Some(&id))
        .unwrap_or_else(|| panic!("no row {id:?} in\n{table}"))
}

/// Three plain steps, each doubling the running value.
struct Doubler;

impl Workflow<PgStorage> for Doubler {
    const NAME: &'static str = "doubler";
    type Input = i64;
    type Output = i64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        x: i64,
    ) -> Result<i64, WorkflowError> {
        let mut acc = x;
        for name in ["a", "b", "c"] {
            acc = ctx
                .step(name, || async { Ok::<_, std::io::Error>(acc * 2) })
                .await?;
        }
        Ok(acc)
    }
}

/// A payment whose only step fails, so the workflow records an error.
struct Declined;

impl Workflow<PgStorage> for Declined {
    const NAME: &'static str = "declined";
    type Input = ();
    type Output = ();

    async fn run(&self, ctx: &mut WorkflowContext<PgStorage>, (): ()) -> Result<(), WorkflowError> {
        ctx.step_with("charge", RetryPolicy::none(), || async {
            Err::<(), _>(std::io::Error::other("card declined"))
        })
        .await
    }
}

/// Prepares, then waits (up to ten minutes) for a message on `go`.
struct Waiter;

impl Workflow<PgStorage> for Waiter {
    const NAME: &'static str = "waiter";
    type Input = ();
    type Output = Option<String>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<PgStorage>,
        (): (),
    ) -> Result<Option<String>, WorkflowError> {
        let _: bool = ctx
            .step("prepare", || async { Ok::<_, std::io::Error>(true) })
            .await?;
        ctx.recv("go", Duration::from_secs(600)).await
    }
}

async fn engine(url: &str) -> Engine<PgStorage> {
    let storage = PgStorage::connect(url).await.expect("connect");
    Engine::builder(storage)
        .register(Doubler)
        .register(Declined)
        .register(Waiter)
        .queue(
            Queue::new("emails")
                .concurrency_global(2)
                .concurrency_per_key(1)
                .rate_limit(10, Duration::from_secs(1))
                .retention(Duration::from_secs(7 * 86_400)),
        )
        .queue_poll_interval(Duration::from_millis(50))
        .launch()
        .await
        .expect("launch")
}

#[tokio::test]
async fn before_migrate_the_cli_says_to_migrate_and_bad_urls_fail_clearly() {
    let url = support::database().await;

    for args in [
        &["workflow", "list"][..],
        &["workflow", "get", "x"],
        &["queue", "list"],
    ] {
        let stderr = fails(&url, args, 1).await;
        assert_eq!(
            stderr, "error: the tandem schema is missing: run `tandem migrate`\n",
            "{args:?}"
        );
    }

    assert_eq!(
        ok(&url, &["migrate"]).await,
        "the tandem schema is up to date\n"
    );
    assert_eq!(
        json(&url, &["migrate"]).await,
        serde_json::json!({ "migrated": true, "roles_missing": [] }),
        "migrating again is harmless"
    );
    assert_eq!(
        json(&url, &["workflow", "list"]).await,
        Value::Array(vec![])
    );
    assert_eq!(
        ok(&url, &["workflow", "list"]).await,
        "ID  NAME  STATUS  QUEUE  VERSION  CREATED  UPDATED\n"
    );
    let queues = json(&url, &["queue", "list"]).await;
    assert_eq!(
        queues,
        serde_json::json!([{
            "name": "default", "concurrency_global": null, "concurrency_per_key": null, "rate_limit": null,
            "retention_ms": null, "enqueued": 0, "running": 0, "oldest_ready_ms": null,
        }])
    );

    // DATABASE_URL works like the flag.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
    command
        .args(["--json", "workflow", "list"])
        .env("DATABASE_URL", &url);
    let run = spawn(command).await;
    assert_eq!((run.code, run.stdout.trim()), (0, "[]"), "{run:?}");

    // Without either, a usage error.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
    command
        .args(["workflow", "list"])
        .env_remove("DATABASE_URL");
    let run = spawn(command).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("no database given: set DATABASE_URL or pass --database-url"),
        "{run:?}"
    );

    // Nothing listens on port 1; the password never reaches the output.
    let run = tandem(
        "postgres://app:s3cret@127.0.0.1:1/app",
        &["workflow", "list"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: cannot connect to postgres://app:***@127.0.0.1:1/app: "),
        "{run:?}"
    );
    assert!(run.stderr.contains("Connection refused"), "{run:?}");
    assert!(!run.stderr.contains("s3cret"), "{run:?}");
    let stderr = fails("not-a-url", &["migrate"], 1).await;
    assert!(
        stderr.starts_with("error: cannot connect to not-a-url: "),
        "{stderr}"
    );
    // A server that is up, but a database that is not there.
    let (server, _) = url.rsplit_once('/').unwrap();
    let missing_db = format!("{server}/no_such_database");
    let stderr = fails(&missing_db, &["queue", "list"], 1).await;
    assert!(
        stderr.starts_with("error: cannot connect to ") && stderr.contains("does not exist"),
        "{stderr}"
    );

    // Bad arguments are usage errors (exit code 2), caught before connecting.
    let stderr = fails(&url, &["workflow", "list", "--since", "yesterday"], 2).await;
    assert!(stderr.contains("neither an RFC 3339 time"), "{stderr}");
    let stderr = fails(&url, &["workflow", "list", "--status", "done"], 2).await;
    assert!(stderr.contains("unknown status \"done\""), "{stderr}");
}

#[tokio::test]
async fn list_get_steps_and_fork_show_what_ran() {
    let url = support::database().await;
    let engine = engine(&url).await;
    // "second" continues a caller's trace; "first" has none.
    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (id, x) in [("first", 1), ("second", 2)] {
        let mut options = tandem::StartOptions::new().workflow_id(id);
        if id == "second" {
            options = options.trace_parent(TRACE);
        }
        let handle = engine.start_with::<Doubler>(x, options).await.unwrap();
        assert_eq!(handle.result().await.unwrap(), x * 8);
    }
    let declined = engine.start_with_id::<Declined>("pay-7", ()).await.unwrap();
    assert!(declined.result().await.is_err());

    // list: newest first, in both forms, with each filter.
    let all = json(&url, &["workflow", "list"]).await;
    assert_eq!(ids(&all), ["pay-7", "second", "first"]);
    assert_eq!(all[0]["status"], "ERROR");
    assert_eq!(all[1]["status"], "SUCCESS");
    assert_eq!(all[1]["name"], "doubler");
    assert_eq!(all[1]["queue"], "default");
    assert_eq!(all[1]["input"], 2);
    assert_eq!(all[1]["output"], 16);
    let table = ok(&url, &["workflow", "list"]).await;
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(
        row(&table, "second")[1..4],
        ["doubler", "SUCCESS", "default"]
    );
    assert_eq!(row(&table, "pay-7")[1..3], ["declined", "ERROR"]);
    let list = |args: &'static [&'static str]| {
        let url = url.clone();
        async move { json(&url, &[&["workflow", "list"], args].concat()).await }
    };
    assert_eq!(ids(&list(&["--status", "error"]).await), ["pay-7"]);
    assert_eq!(
        ids(&list(&["--status", "SUCCESS", "--name", "doubler"]).await),
        ["second", "first"]
    );
    assert_eq!(ids(&list(&["--queue", "emails"]).await), Vec::<&str>::new());
    assert_eq!(
        ids(&list(&["--limit", "1", "--offset", "1"]).await),
        ["second"]
    );
    let second_created = all[1]["created_ms"].as_i64().unwrap().to_string();
    let since = json(&url, &["workflow", "list", "--since", &second_created]).await;
    assert_eq!(ids(&since), ["pay-7", "second"]);
    let until = json(&url, &["workflow", "list", "--until", &second_created]).await;
    assert_eq!(ids(&until), ["first"]);
    let rfc3339 = all[1]["created_at"].as_str().unwrap().to_owned();
    let since = json(&url, &["workflow", "list", "--since", &rfc3339]).await;
    assert_eq!(ids(&since), ["pay-7", "second"], "RFC 3339 like ms");
    assert_eq!(
        ids(&list(&["--since", "2999-01-01"]).await),
        Vec::<&str>::new()
    );

    // get: the workflow's record.
    let first = json(&url, &["workflow", "get", "first"]).await;
    assert_eq!(first["status"], "SUCCESS");
    assert_eq!(
        (first["input"].clone(), first["output"].clone()),
        (1.into(), 8.into())
    );
    assert_eq!(first["owner_epoch"], 1);
    assert_eq!(first["executor_id"], engine.executor_id());
    assert_eq!(first["steps"].as_array().unwrap().len(), 3);
    assert!(first["completed_ms"].as_i64() >= first["created_ms"].as_i64());
    assert_eq!(first["trace_parent"], Value::Null);
    let second = json(&url, &["workflow", "get", "second"]).await;
    assert_eq!(second["trace_parent"], TRACE);
    let text = ok(&url, &["workflow", "get", "second"]).await;
    assert!(
        text.lines()
            .any(|l| l == format!("trace            {TRACE}")),
        "{text}"
    );
    let text = ok(&url, &["workflow", "get", "first"]).await;
    for line in [
        "id               first",
        "name             doubler",
        "status           SUCCESS",
        "queue            default",
        "epoch            1",
        "trace            -",
        "steps            3",
        "input            1",
        "output           8",
        "error            -",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(text.contains(&format!("executor         {}\n", engine.executor_id())));
    let paid = json(&url, &["workflow", "get", "pay-7"]).await;
    assert_eq!(paid["status"], "ERROR");
    assert!(
        paid["error"].as_str().unwrap().contains("card declined"),
        "{paid}"
    );
    assert_eq!(paid["output"], Value::Null);

    // steps: names, kinds, outputs or errors, attempts.
    let steps = json(&url, &["workflow", "steps", "first"]).await;
    let summary: Vec<(i64, &str, &str, i64, i64)> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step_id"].as_i64().unwrap(),
                s["name"].as_str().unwrap(),
                s["kind"].as_str().unwrap(),
                s["output"].as_i64().unwrap(),
                s["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, "a", "step", 2, 1),
            (1, "b", "step", 4, 1),
            (2, "c", "step", 8, 1)
        ]
    );
    assert!(steps[0]["duration_ms"].as_i64().unwrap() >= 0);
    let table = ok(&url, &["workflow", "steps", "first"]).await;
    assert!(
        table.starts_with("STEP  NAME  KIND  ATTEMPTS  EPOCH  STARTED"),
        "{table}"
    );
    let b = row(&table, "1");
    assert_eq!(b[1..5], ["b", "step", "1", "1"]);
    assert_eq!(b.last(), Some(&"4"));
    let table = ok(&url, &["workflow", "steps", "pay-7"]).await;
    assert!(
        row(&table, "0")
            .last()
            .unwrap()
            .starts_with("error: card declined"),
        "{table}"
    );
    let failed_step = &json(&url, &["workflow", "steps", "pay-7"]).await[0];
    assert_eq!(failed_step["name"], "charge");
    assert_eq!(failed_step["error"], "card declined");

    // fork: a new run from step 1 that an engine completes.
    let forked = ok(&url, &["workflow", "fork", "first", "--from-step", "1"]).await;
    let forked = forked.trim_end();
    assert!(forked.starts_with("first-fork-"), "{forked}");
    assert_eq!(engine.handle::<i64>(forked).result().await.unwrap(), 8);
    let fork = json(&url, &["workflow", "get", forked]).await;
    assert_eq!(
        (fork["status"].as_str(), fork["name"].as_str()),
        (Some("SUCCESS"), Some("doubler"))
    );
    let fork_json = json(&url, &["workflow", "fork", "second", "--from-step", "0"]).await;
    assert_eq!(fork_json["forked_from"], "second");
    assert_eq!(fork_json["from_step"], 0);
    let id = fork_json["id"].as_str().unwrap();
    assert_eq!(engine.handle::<i64>(id).result().await.unwrap(), 16);

    // Unknown IDs: exit code 3 and the ID in the message.
    for args in [
        &["workflow", "get", "nope"][..],
        &["workflow", "steps", "nope"],
        &["workflow", "cancel", "nope"],
        &["workflow", "resume", "nope"],
        &["workflow", "fork", "nope", "--from-step", "0"],
        &["--json", "workflow", "get", "nope"],
    ] {
        let stderr = fails(&url, args, 3).await;
        assert_eq!(stderr, "error: no workflow with ID \"nope\"\n", "{args:?}");
    }
    // Resuming a workflow that was not cancelled: exit code 4.
    let stderr = fails(&url, &["workflow", "resume", "first"], 4).await;
    assert_eq!(
        stderr,
        "error: cannot resume workflow \"first\": its status is SUCCESS\n"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn cancel_and_resume_a_running_workflow_and_count_queues() {
    let url = support::database().await;
    let engine = engine(&url).await;
    let handle = engine.start_with_id::<Waiter>("waiting", ()).await.unwrap();
    // Two workflows wait in the emails queue for an hour.
    for id in ["mail-1", "mail-2"] {
        let options = EnqueueOptions::default()
            .queue("emails")
            .workflow_id(id)
            .delay(Duration::from_secs(3600));
        engine.enqueue::<Doubler>(3, options).await.unwrap();
    }
    // Once its first step is recorded, the waiter waits for its message.
    let mut prepared = false;
    for _ in 0..500 {
        let steps = json(&url, &["workflow", "steps", "waiting"]).await;
        if steps.as_array().unwrap().len() == 1 {
            prepared = true;
            break;
        }
        support::sleep(Duration::from_millis(20)).await;
    }
    assert!(prepared, "the waiter never recorded its first step");

    let queues = json(&url, &["queue", "list"]).await;
    assert_eq!(
        queues,
        serde_json::json!([
            { "name": "default", "concurrency_global": null, "concurrency_per_key": null, "rate_limit": null,
              "retention_ms": null, "enqueued": 0, "running": 1, "oldest_ready_ms": null },
            // Delayed an hour: waiting, but none could start now.
            { "name": "emails", "concurrency_global": 2, "concurrency_per_key": 1,
              "rate_limit": { "count": 10, "period_ms": 1000 }, "retention_ms": 604_800_000_i64,
              "enqueued": 2, "running": 0, "oldest_ready_ms": null },
        ])
    );
    assert_eq!(
        ok(&url, &["queue", "list"]).await,
        "QUEUE    CONCURRENCY  PER KEY  RATE LIMIT  RETENTION  ENQUEUED  RUNNING\n\
         default  -            -        -           -          0         1\n\
         emails   2            1        10/1s       7d00h      2         0\n"
    );
    let enqueued = json(&url, &["workflow", "list", "--queue", "emails"]).await;
    // (Sorted: both may carry the same millisecond.)
    assert_eq!(sorted(ids(&enqueued)), ["mail-1", "mail-2"]);
    assert!(enqueued[0]["status"] == "ENQUEUED" && enqueued[0]["executor_id"].is_null());
    let running = json(&url, &["workflow", "list", "--status", "running"]).await;
    assert_eq!(ids(&running), ["waiting"]);

    // Cancel the running workflow: its ID is printed, its execution stops,
    // and get shows it cancelled.
    assert_eq!(
        ok(&url, &["workflow", "cancel", "waiting"]).await,
        "waiting\n"
    );
    assert!(matches!(
        handle.result().await,
        Err(tandem::Error::WorkflowCancelled { .. })
    ));
    let text = ok(&url, &["workflow", "get", "waiting"]).await;
    assert!(text.contains("status           CANCELLED\n"), "{text}");
    assert!(text.contains("error            cancelled\n"), "{text}");
    // Cancelling it again cancels nothing, and says so.
    let run = tandem(&url, &["workflow", "cancel", "waiting"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    assert!(run.stderr.contains("has already finished"), "{run:?}");
    assert_eq!(
        json(&url, &["workflow", "cancel", "waiting"]).await,
        serde_json::json!({ "cancelled": [] })
    );
    assert_eq!(
        json(&url, &["workflow", "cancel", "mail-1"]).await,
        serde_json::json!({ "cancelled": ["mail-1"] })
    );
    let cancelled = json(&url, &["workflow", "list", "--status", "cancelled"]).await;
    assert_eq!(sorted(ids(&cancelled)), ["mail-1", "waiting"]);

    // Resume: it continues from its checkpoint and finishes on its message.
    assert_eq!(
        ok(&url, &["workflow", "resume", "waiting"]).await,
        "waiting\n"
    );
    engine.send("waiting", "go", &"now").await.unwrap();
    let result = engine
        .handle::<Option<String>>("waiting")
        .result()
        .await
        .unwrap();
    assert_eq!(result.as_deref(), Some("now"));
    let done = json(&url, &["workflow", "get", "waiting"]).await;
    assert_eq!(done["status"], "SUCCESS");
    let names: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["prepare", "recv:go"], "prepare did not run again");
    assert_eq!(
        json(&url, &["workflow", "resume", "mail-1"]).await,
        serde_json::json!({ "resumed": "mail-1" })
    );
    // Resumed, it no longer waits out its delay: the engine runs it now.
    assert_eq!(engine.handle::<i64>("mail-1").result().await.unwrap(), 24);
    let mail = json(&url, &["workflow", "get", "mail-1"]).await;
    assert_eq!(
        (mail["status"].as_str(), mail["queue"].as_str()),
        (Some("SUCCESS"), Some("emails"))
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn versions_show_runs_that_no_live_executor_accepts() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.expect("connect");
    // A v1 run left waiting, handed back to its queue by the shutdown.
    let v1 = Engine::builder(storage.clone())
        .register(Waiter)
        .version("v1")
        .launch()
        .await
        .expect("launch v1");
    v1.start_with_id::<Waiter>("w-v1", ()).await.expect("start");
    support::timeout(Duration::from_secs(30), async {
        while v1
            .admin()
            .get_workflow("w-v1")
            .await
            .unwrap()
            .map_or(0, |d| d.steps.len())
            < 1
        {
            support::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("w-v1 prepares");
    v1.shutdown().await;
    // A v2 executor that does not accept v1 is live.
    let v2 = Engine::builder(storage)
        .register(Waiter)
        .version("v2")
        .launch()
        .await
        .expect("launch v2");

    let table = ok(&url, &["versions"]).await;
    assert_eq!(
        row(&table, "v1"),
        [
            "v1",
            "1",
            "0",
            "0",
            "0",
            "waits: no live executor accepts it"
        ],
        "{table}"
    );
    assert_eq!(row(&table, "v2"), ["v2", "0", "0", "1", "1"], "{table}");
    let listed = json(&url, &["versions"]).await;
    let v1_json = listed
        .as_array()
        .and_then(|a| a.iter().find(|v| v["version"] == "v1"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        v1_json,
        &serde_json::json!({
            "version": "v1", "enqueued": 1, "running": 0,
            "executors_accepting": 0, "executors_running": 0,
        })
    );
    // The run keeps its version, which `workflow list` shows and filters.
    let list = json(&url, &["workflow", "list", "--app-version", "v1"]).await;
    assert_eq!(ids(&list), ["w-v1"]);
    assert_eq!(list[0]["app_version"], "v1");
    assert_eq!(list[0]["status"], "ENQUEUED");
    assert_eq!(row(&ok(&url, &["workflow", "list"]).await, "w-v1")[4], "v1");
    // The generic binary cannot replay runs against code it does not have:
    // it says where the check runs, with the gate's "could not run" status.
    let stderr = fails(&url, &["check"], 2).await;
    assert!(stderr.contains("check_command"), "{stderr}");
    v2.shutdown().await;
}

/// `postgres://postgres@host:port/x` as `user` on `database`.
fn as_user(admin_url: &str, user: &str, database: &str) -> String {
    let host = admin_url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(host, _)| host)
        .expect("postgres://user@host:port/database");
    format!("postgres://{user}@{host}/{database}")
}

#[tokio::test]
async fn roles_are_set_up_by_a_superuser_when_the_owner_may_not_create_them() {
    // A server of its own: Tandem's roles are global to a server, and the
    // shared test server's first migration already created them.
    let cluster = tandem::testing::PgCluster::start_owned().await.unwrap();
    let admin = cluster.admin_url().to_owned();
    let mut superuser = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE ROLE app_owner LOGIN; CREATE ROLE ops LOGIN; CREATE ROLE nobody LOGIN")
        .execute(&mut superuser)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE DATABASE app OWNER app_owner")
        .execute(&mut superuser)
        .await
        .unwrap();
    let owner = as_user(&admin, "app_owner", "app");
    let root = as_user(&admin, "postgres", "app");

    // The owner, without CREATEROLE, migrates; the roles are missing, and
    // setting them up is refused with what it needs.
    let migrated = ok(&owner, &["migrate"]).await;
    assert!(
        migrated.contains(
            "so tandem_executor, tandem_enqueuer, tandem_operator do not exist yet: run \
             `tandem setup-roles` as a superuser"
        ),
        "{migrated}"
    );
    let roles = ok(&owner, &["roles"]).await;
    assert_eq!(
        roles.matches("(missing: run `tandem setup-roles`)").count(),
        3,
        "{roles}"
    );
    let stderr = fails(&owner, &["setup-roles"], 1).await;
    assert!(
        stderr.contains("role tandem_executor does not exist and app_owner may not create roles")
            && stderr.contains("needs a superuser"),
        "{stderr}"
    );

    // A superuser sets them up; granting one to a login role lets it in.
    let set_up = json(&root, &["setup-roles"]).await;
    let names: Vec<&str> = set_up
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["exists"] == true)
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["tandem_executor", "tandem_enqueuer", "tandem_operator"]
    );
    sqlx::raw_sql("GRANT tandem_operator TO ops")
        .execute(&mut superuser)
        .await
        .unwrap();
    let roles = ok(&owner, &["roles"]).await;
    let operator_line = roles
        .lines()
        .find(|l| l.starts_with("tandem_operator"))
        .unwrap();
    assert!(operator_line.ends_with("ops"), "{roles}");

    let ops = as_user(&admin, "ops", "app");
    assert_eq!(
        json(&ops, &["workflow", "list"]).await,
        Value::Array(vec![])
    );
    // The operator may not migrate, and a role without any of Tandem's roles
    // is told which ones would let it in.
    let stderr = fails(&ops, &["workflow", "cancel", "nope"], 3).await;
    assert!(stderr.contains("nope"), "{stderr}");
    let nobody = as_user(&admin, "nobody", "app");
    let stderr = fails(&nobody, &["workflow", "list"], 1).await;
    assert!(
        stderr.contains("permission denied for schema tandem")
            && stderr.contains("tandem_operator to inspect and manage them"),
        "{stderr}"
    );
    // Setting up again changes nothing.
    let before = json(&owner, &["roles"]).await;
    assert_eq!(json(&root, &["setup-roles"]).await, before);
}

/// A scheduled workflow for the CLI test: returns its tick.
struct Nightly;

impl Workflow<PgStorage> for Nightly {
    const NAME: &'static str = "nightly";
    type Input = tandem::ScheduledTick;
    type Output = i64;

    async fn run(
        &self,
        _ctx: &mut tandem::WorkflowContext<PgStorage>,
        tick: tandem::ScheduledTick,
    ) -> Result<i64, tandem::WorkflowError> {
        Ok(tick.scheduled_at_ms)
    }
}

#[tokio::test]
async fn schedules_are_listed_paused_and_resumed() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.expect("connect");
    let schedule = tandem::Schedule::new("nightly-report", "0 30 3 * * *")
        .unwrap()
        .time_zone("Europe/Paris")
        .unwrap()
        .catch_up(tandem::CatchUp::All { max: 3 });
    let engine = Engine::builder(storage)
        .schedule(Nightly, schedule)
        .launch()
        .await
        .expect("launch");

    let table = ok(&url, &["schedule", "list"]).await;
    let r = row(&table, "nightly-report");
    assert_eq!(
        r[..8],
        [
            "nightly-report",
            "0 30 3 * * *",
            "Europe/Paris",
            "nightly",
            "default",
            "all (at most 3)",
            "no",
            "-"
        ],
        "{table}"
    );
    let listed = json(&url, &["schedule", "list"]).await;
    let s = &listed[0];
    assert_eq!(s["name"], "nightly-report");
    assert_eq!(s["cron"], "0 30 3 * * *");
    assert_eq!(s["time_zone"], "Europe/Paris");
    assert_eq!(s["workflow"], "nightly");
    assert_eq!(
        (s["catch_up"].as_str(), s["catch_up_max"].as_u64()),
        (Some("all"), Some(3))
    );
    assert_eq!(s["paused"], false);
    assert_eq!(s["last_tick_at"], Value::Null);
    // The next tick is 03:30 in Paris: 01:30 or 02:30 UTC.
    let next = s["next_tick_at"].as_str().unwrap_or_else(|| panic!("{s}"));
    assert!(
        next.contains("T01:30:00") || next.contains("T02:30:00"),
        "{next}"
    );

    let paused = json(&url, &["schedule", "pause", "nightly-report"]).await;
    assert_eq!(
        (paused["paused"].as_bool(), &paused["next_tick_at"]),
        (Some(true), &Value::Null)
    );
    let resumed = json(&url, &["schedule", "resume", "nightly-report"]).await;
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_tick_at"].is_string(), "{resumed}");
    let stderr = fails(&url, &["schedule", "pause", "no-such"], 1).await;
    assert!(stderr.contains("no such schedule"), "{stderr}");
    engine.shutdown().await;
}

#[tokio::test]
async fn gc_counts_then_deletes_finished_workflows() {
    let url = support::database().await;
    let storage = PgStorage::connect(&url).await.expect("connect");
    let engine = Engine::builder(storage)
        .register(Doubler)
        .launch()
        .await
        .expect("launch");
    for n in 0..3i64 {
        engine
            .start_with_id::<Doubler>(format!("gc-{n}"), n)
            .await
            .unwrap()
            .result()
            .await
            .unwrap();
    }
    // No queue has a retention: without --older-than nothing goes.
    let kept = json(&url, &["gc", "--dry-run"]).await;
    assert_eq!(kept["workflows"], 0, "{kept}");
    support::sleep(Duration::from_millis(20)).await;
    let dry = json(&url, &["gc", "--dry-run", "--older-than", "1ms"]).await;
    assert_eq!(
        dry,
        serde_json::json!({ "dry_run": true, "workflows": 3, "steps": 9, "messages": 0, "events": 0 })
    );
    assert_eq!(
        ok(&url, &["gc", "--older-than", "1ms", "--batch", "2"]).await,
        "deleted 3 workflows, 9 steps, 0 messages, 0 events\n"
    );
    assert_eq!(ok(&url, &["workflow", "list"]).await.lines().count(), 1);
    let stderr = fails(&url, &["gc", "--older-than", "3 weeks"], 2).await;
    assert!(stderr.contains("is not a duration"), "{stderr}");
    engine.shutdown().await;
}

#[tokio::test]
async fn ui_serves_the_dashboard_and_metrics_and_acts_with_its_printed_token() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let url = support::database().await;
    let engine = engine(&url).await;
    let handle = engine.start::<Doubler>(1).await.unwrap();
    handle.result().await.unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "--database-url",
            &url,
            "ui",
            "--bind",
            "127.0.0.1:0",
            "--write",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("TANDEM_UI_TOKEN")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run tandem ui");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let banner = support::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("a banner");
    // "Tandem dashboard on http://127.0.0.1:PORT/ (write mode; write token: T)"
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_owned();
    let token = banner
        .split("write token: ")
        .nth(1)
        .map(|t| t.trim_end_matches(')').to_owned())
        .unwrap_or_else(|| panic!("no token in {banner:?}"));
    assert_eq!(token.len(), 32, "a random 128-bit token: {banner}");
    let request = |method: &str, path: &str, auth: Option<&str>| {
        let mut text = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        if let Some(token) = auth {
            text.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        text.push_str("\r\n");
        let addr = addr.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream.write_all(text.as_bytes()).await.unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let page = request("GET", "/workflows", None).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(handle.workflow_id()));
    let metrics = request("GET", "/metrics", None).await;
    assert!(
        metrics.contains("tandem_queue_enqueued{queue=\"default\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("tandem_executors_live 1"), "{metrics}");
    // Cancel a waiting (delayed) workflow with the printed token.
    let held = engine
        .enqueue::<Doubler>(
            2,
            EnqueueOptions::default().delay(Duration::from_secs(3_600)),
        )
        .await
        .unwrap();
    let cancel = format!("/workflows/{}/cancel", held.workflow_id());
    let refused = request("POST", &cancel, Some("wrong")).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let done = request("POST", &cancel, Some(&token)).await;
    assert!(done.starts_with("HTTP/1.1 303"), "{done}");
    assert_eq!(
        held.status().await.unwrap(),
        Some(tandem::Status::Cancelled)
    );
    child.kill().await.unwrap();
    engine.shutdown().await;
}
