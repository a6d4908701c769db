//! `tandem`: inspect and steer the workflows in a database from the shell.
//!
//! A thin layer over [`tandem::Admin`] and [`tandem::PgStorage`]: it parses
//! arguments, runs one management call, and prints a table (or one JSON
//! document with `--json`). It never runs workflows itself: a resumed or
//! forked workflow runs when an engine that registers it claims it.
//! docs/cli.md documents every command with example output.
//!
//! Exit codes: 0 success, 1 error, 2 bad usage (and `check`, which needs
//! the application's code), 3 no workflow with that ID, 4 the action does
//! not apply to the workflow's status.

mod output;
mod time;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;
use sqlx::Connection;
use tandem::storage::{Status, WorkflowFilter};
use tandem::{Admin, ErrorKind, PgStorage, Storage, StorageError};

/// Inspect and steer Tandem workflows stored in a PostgreSQL database.
#[derive(Debug, Parser)]
#[command(name = "tandem", version)]
struct Cli {
    /// The database with the `tandem` schema, as a URL
    /// (postgres://user:password@host:port/database).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// Print one JSON document instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the `tandem` schema (safe to run again, and from
    /// several processes at once).
    Migrate,
    /// List, inspect, cancel, resume and fork workflows.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Inspect queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Delete finished workflows past their queue's retention (or past
    /// --older-than, in every queue), with their steps, messages, events
    /// and child workflows, in batches; --dry-run only counts them. A tree
    /// goes when its root finished long enough ago and none of it runs.
    Gc(GcArgs),
    /// List, pause and resume cron schedules (executors declare them).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Show the application versions of the unfinished runs and of the live
    /// executors: how many runs of each wait or run, and how many live
    /// executors accept each. Runs of a version no live executor accepts
    /// wait until code that accepts it runs.
    Versions,
    /// Show Tandem's database roles (tandem_executor, tandem_enqueuer,
    /// tandem_operator), what each may do, and who holds each.
    Roles,
    /// Create Tandem's roles that do not exist yet and grant them their
    /// privileges in this database. Run it as a superuser (or, once the
    /// roles exist, as the schema's owner) when the migrating role may not
    /// create roles; docs/security.md.
    SetupRoles,
    /// Serve the web dashboard (workflows, steps, queues, executors,
    /// schedules, and Prometheus metrics at /metrics) until interrupted.
    /// Read-only unless --write; docs/ui.md.
    Ui(UiArgs),
    /// Replaying unfinished runs against new code needs that code: this
    /// generic binary has none. Explains how to run the check from your
    /// service's binary.
    Check,
}

#[derive(Debug, clap::Args)]
struct UiArgs {
    /// The address to listen on. The default answers this machine only;
    /// put a TLS-terminating proxy in front before exposing it.
    #[arg(long, default_value = "127.0.0.1:4780")]
    bind: std::net::SocketAddr,
    /// Allow cancel, resume, fork and schedule pause/resume, to browsers
    /// signed in with the write token.
    #[arg(long)]
    write: bool,
    /// The write token (default: a random one, printed at start).
    #[arg(
        long,
        env = "TANDEM_UI_TOKEN",
        hide_env_values = true,
        requires = "write"
    )]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// List workflows, newest first.
    List(ListArgs),
    /// Show one workflow: status, input, output or error, queue, executor,
    /// epoch and timestamps.
    Get {
        /// The workflow ID.
        id: String,
    },
    /// Show a workflow's recorded steps.
    Steps {
        /// The workflow ID.
        id: String,
    },
    /// Cancel a workflow and its unfinished descendants; prints the IDs
    /// cancelled. A running execution stops at its next step boundary.
    Cancel {
        /// The workflow ID.
        id: String,
    },
    /// Enqueue a cancelled workflow again; it continues from its last
    /// checkpoint once an engine claims it.
    Resume {
        /// The workflow ID.
        id: String,
    },
    /// Start a new run that replays the steps before --from-step from the
    /// original's record and runs the rest anew; prints the new ID.
    Fork {
        /// The workflow to fork.
        id: String,
        /// The first step (counted from 0) to run again.
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
        from_step: i32,
    },
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Only this status: enqueued, running, success, error or cancelled.
    #[arg(long, value_parser = parse_status)]
    status: Option<Status>,
    /// Only this workflow name.
    #[arg(long)]
    name: Option<String>,
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only runs recorded under this application version.
    #[arg(long)]
    app_version: Option<String>,
    /// Only workflows created at or after this time (RFC 3339, a date, or
    /// milliseconds since the epoch).
    #[arg(long, value_parser = time::parse_time)]
    since: Option<i64>,
    /// Only workflows created before this time (same formats as --since).
    #[arg(long, value_parser = time::parse_time)]
    until: Option<i64>,
    /// Only the children of this workflow.
    #[arg(long)]
    parent: Option<String>,
    /// At most this many workflows (a page).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// Skip this many workflows first (the next page).
    #[arg(long, default_value_t = 0)]
    offset: u64,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List queues with their limits and their ENQUEUED and RUNNING counts.
    List,
}

#[derive(Debug, clap::Args)]
struct GcArgs {
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete what finished longer ago than this, in every queue, instead
    /// of each queue's retention (500ms, 90m, 30d, ...).
    #[arg(long, value_parser = time::parse_duration)]
    older_than: Option<i64>,
    /// At most this many finished root workflows (each with its tree) per
    /// transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// List schedules: cron expression, time zone, workflow, queue,
    /// catch-up policy, whether paused, the last tick enqueued and the next.
    List,
    /// Pause a schedule: no executor fires it until it is resumed.
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Resume a paused schedule from now: the ticks that fell in the pause
    /// never run.
    Resume {
        /// The schedule's name.
        name: String,
    },
}

fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
        format!("unknown status {s:?}: use enqueued, running, success, error or cancelled")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Check) {
        // Exit status 2, as `check_command` when the check cannot run: a
        // deploy gate that calls this binary by mistake stays closed.
        eprintln!("error: {CHECK_NEEDS_CODE}");
        return ExitCode::from(2);
    }
    let Some(url) = cli.database_url.clone() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no database given: set DATABASE_URL or pass --database-url",
            )
            .exit();
    };
    // One management call at a time: a single-threaded runtime is plenty.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&url, cli.json, cli.command)) {
        Ok(text) => print_stdout(&text),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `tandem ui`: serves the dashboard until Ctrl-C.
async fn serve_ui(admin: Admin<PgStorage>, args: UiArgs) -> anyhow::Result<()> {
    use rand::Rng;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let mut options = tandem::ui::UiOptions::read_only().metrics(handle);
    let mut token_note = String::new();
    if args.write {
        let token = args.token.unwrap_or_else(|| {
            let bytes: [u8; 16] = rand::rngs::OsRng.r#gen();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            token_note = format!("; write token: {token}");
            token
        });
        options = options.write_token(token);
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.bind))?;
    let addr = listener.local_addr()?;
    let mode = if args.write {
        "write mode"
    } else {
        "read-only"
    };
    eprintln!("Tandem dashboard on http://{addr}/ ({mode}{token_note})");
    axum::serve(listener, tandem::ui::router(admin, options))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Runs one command and returns what it prints on stdout.
async fn run(url: &str, json: bool, command: Command) -> anyhow::Result<String> {
    let storage = connect(url).await?;
    let admin = Admin::new(storage.clone());
    Ok(match command {
        Command::Migrate => {
            storage.migrate().await.map_err(storage_error)?;
            // A migrating role that may not create roles migrates anyway;
            // the roles then wait for `tandem setup-roles` (docs/security.md).
            let missing: Vec<String> = storage
                .roles_info()
                .await
                .map_err(storage_error)?
                .into_iter()
                .filter(|r| !r.exists)
                .map(|r| r.name)
                .collect();
            let mut text = "the tandem schema is up to date\n".to_owned();
            if !missing.is_empty() {
                text += &format!(
                    "note: this role may not create roles, so {} do not exist yet: run \
                     `tandem setup-roles` as a superuser (docs/security.md)\n",
                    missing.join(", ")
                );
            }
            render(
                json,
                json!({ "migrated": true, "roles_missing": missing }),
                text,
            )
        }
        Command::Workflow(WorkflowCommand::List(args)) => {
            let filter = WorkflowFilter {
                status: args.status,
                name: args.name,
                queue: args.queue,
                version: args.app_version,
                created_from_ms: args.since,
                created_until_ms: args.until,
                parent_id: args.parent,
                limit: args.limit,
                offset: args.offset,
            };
            let workflows = admin.list_workflows(filter).await.map_err(explain)?;
            render(
                json,
                workflows
                    .iter()
                    .map(output::workflow_json)
                    .collect::<Vec<_>>(),
                output::workflows_table(&workflows),
            )
        }
        Command::Workflow(WorkflowCommand::Get { id }) => {
            let detail = require(admin.get_workflow(&id).await, &id)?;
            render(
                json,
                output::detail_json(&detail),
                output::detail_text(&detail),
            )
        }
        Command::Workflow(WorkflowCommand::Steps { id }) => {
            let detail = require(admin.get_workflow(&id).await, &id)?;
            render(
                json,
                detail
                    .steps
                    .iter()
                    .map(output::step_json)
                    .collect::<Vec<_>>(),
                output::steps_table(&detail.steps),
            )
        }
        Command::Workflow(WorkflowCommand::Cancel { id }) => {
            let cancelled = admin.cancel(&id).await.map_err(explain)?;
            if cancelled.is_empty() && !json {
                eprintln!("workflow {id:?} has already finished: nothing to cancel");
            }
            render(json, json!({ "cancelled": cancelled }), lines(&cancelled))
        }
        Command::Workflow(WorkflowCommand::Resume { id }) => {
            admin.resume(&id).await.map_err(explain)?;
            render(json, json!({ "resumed": id }), lines(&[id]))
        }
        Command::Workflow(WorkflowCommand::Fork { id, from_step }) => {
            let forked = admin.fork(&id, from_step).await.map_err(explain)?;
            render(
                json,
                Forked {
                    id: &forked,
                    forked_from: &id,
                    from_step,
                },
                lines(std::slice::from_ref(&forked)),
            )
        }
        Command::Queue(QueueCommand::List) => {
            let queues = admin.queues().await.map_err(explain)?;
            render(
                json,
                queues.iter().map(output::queue_json).collect::<Vec<_>>(),
                output::queues_table(&queues),
            )
        }
        Command::Gc(GcArgs {
            dry_run,
            older_than,
            batch,
        }) => {
            let older_than = older_than.map(|ms| Duration::from_millis(ms as u64));
            let counted = admin
                .gc(older_than, dry_run, batch)
                .await
                .map_err(explain)?;
            render(
                json,
                output::gc_json(&counted, dry_run),
                output::gc_text(&counted, dry_run),
            )
        }
        Command::Schedule(ScheduleCommand::List) => {
            let schedules = admin.schedules().await.map_err(explain)?;
            render(
                json,
                schedules
                    .iter()
                    .map(output::schedule_json)
                    .collect::<Vec<_>>(),
                output::schedules_table(&schedules),
            )
        }
        Command::Schedule(ScheduleCommand::Pause { name }) => {
            let info = admin.pause_schedule(&name).await.map_err(explain)?;
            render(
                json,
                output::schedule_json(&info),
                output::schedules_table(std::slice::from_ref(&info)),
            )
        }
        Command::Schedule(ScheduleCommand::Resume { name }) => {
            let info = admin.resume_schedule(&name).await.map_err(explain)?;
            render(
                json,
                output::schedule_json(&info),
                output::schedules_table(std::slice::from_ref(&info)),
            )
        }
        Command::Versions => {
            let versions = storage.versions_info().await.map_err(storage_error)?;
            render(
                json,
                versions
                    .iter()
                    .map(output::version_json)
                    .collect::<Vec<_>>(),
                output::versions_table(&versions),
            )
        }
        Command::Roles | Command::SetupRoles => {
            let roles = if matches!(command, Command::SetupRoles) {
                storage.setup_roles().await
            } else {
                storage.roles_info().await
            }
            .map_err(storage_error)?;
            render(
                json,
                roles.iter().map(output::role_json).collect::<Vec<_>>(),
                output::roles_table(&roles),
            )
        }
        Command::Check => unreachable!("answered before connecting"),
        Command::Ui(args) => {
            serve_ui(admin, args).await?;
            String::new()
        }
    })
}

/// Why `tandem check` cannot run here, and what runs it.
const CHECK_NEEDS_CODE: &str = "tandem check replays unfinished runs against your workflows' \
code, which this generic binary does not contain. Run it from your service's binary: \
Engine::builder(storage).register(..).replayer().check_command(json).await returns the exit \
status (0 compatible, 1 incompatible runs, 2 the check could not run) and prints the report \
(docs/versioning.md, \"tandem check\")";

/// The command's output: `value` as one JSON document with `--json`, else
/// `text`.
fn render(json: bool, value: impl Serialize, text: String) -> String {
    if json {
        // The shapes hold only strings, numbers and JSON values, which
        // always serialize.
        serde_json::to_string_pretty(&value).expect("JSON output") + "\n"
    } else {
        text
    }
}

/// What `workflow fork --json` prints.
#[derive(Serialize)]
struct Forked<'a> {
    id: &'a str,
    forked_from: &'a str,
    from_step: i32,
}

/// How long a connection attempt may take before the CLI gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, with an error that says why not.
async fn connect(url: &str) -> anyhow::Result<PgStorage> {
    let fail = |why: String| anyhow!("cannot connect to {}: {why}", redact(url));
    // One direct connection first: the pool retries a refused connection
    // until its acquire timeout and then reports only that it timed out,
    // while a direct attempt fails at once and says why.
    #[allow(
        clippy::disallowed_methods,
        reason = "the CLI is not simulated; it bounds a blocking connect by wall time"
    )]
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(url)).await;
    match probe {
        Err(_) => {
            let secs = CONNECT_TIMEOUT.as_secs();
            return Err(fail(format!("no answer within {secs} s")));
        }
        Ok(Err(e)) => return Err(fail(sqlx_message(&e))),
        // Closing politely is a courtesy to the server; failing to is harmless.
        Ok(Ok(conn)) => drop(conn.close().await),
    }
    PgStorage::connect(url).await.map_err(|e| fail(cause(&e)))
}

fn lines(ids: &[String]) -> String {
    ids.iter().map(|id| format!("{id}\n")).collect()
}

/// An absent workflow is a "no workflow with ID" error for the CLI.
fn require<T>(found: Result<Option<T>, tandem::Error>, id: &str) -> anyhow::Result<T> {
    found
        .map_err(explain)?
        .ok_or_else(|| tandem::Error::WorkflowNotFound { id: id.to_owned() }.into())
}

fn storage_error(error: StorageError) -> anyhow::Error {
    explain(error.into())
}

/// Turns an engine error into what a person at a shell needs to read. The
/// engine's own errors (unknown ID, invalid transition) stay typed, so that
/// [`exit_code`] can tell them apart.
fn explain(error: tandem::Error) -> anyhow::Error {
    match sqlstate(&error).as_deref() {
        // undefined_table, invalid_schema_name: nothing was ever migrated.
        Some("42P01" | "3F000") => {
            return anyhow!("the tandem schema is missing: run `tandem migrate`");
        }
        // undefined_column, undefined_function: an older schema.
        Some("42703" | "42883") => {
            return anyhow!("the tandem schema is out of date: run `tandem migrate`");
        }
        _ => {}
    }
    match &error {
        // The backend's message names the object and the role that grants
        // it; cause() would keep only the server's half.
        tandem::Error::Storage(e) if e.kind() == ErrorKind::Denied => {
            anyhow!(
                "{}",
                std::error::Error::source(e).map_or_else(|| e.to_string(), ToString::to_string)
            )
        }
        tandem::Error::Storage(e) if e.kind() == ErrorKind::Unavailable => {
            anyhow!("lost the connection to the database: {}", cause(e))
        }
        tandem::Error::Storage(e) => anyhow!("database error: {}", cause(e)),
        _ => error.into(),
    }
}

/// The SQLSTATE of the database error behind `error`, if there is one.
fn sqlstate(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            return db.code().map(|code| code.into_owned());
        }
        current = e.source();
    }
    None
}

/// The backend's message, without the storage layer's kind prefix (which
/// is for retry logic, not for people).
fn cause(error: &StorageError) -> String {
    let mut current = std::error::Error::source(error);
    while let Some(e) = current {
        if let Some(sqlx_error) = e.downcast_ref::<sqlx::Error>() {
            return sqlx_message(sqlx_error);
        }
        current = e.source();
    }
    std::error::Error::source(error).map_or_else(|| error.to_string(), ToString::to_string)
}

/// A sqlx error as a sentence: for a database error the server's message
/// alone (sqlx's rendering appends the server's source line).
fn sqlx_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// `url` with any password replaced, so that error messages (which end up
/// in logs and CI output) never carry it.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<tandem::Error>() {
        Some(tandem::Error::WorkflowNotFound { .. }) => 3,
        Some(tandem::Error::InvalidTransition { .. }) => 4,
        _ => 1,
    }
}

/// Writes the command's output; a closed pipe (`tandem workflow list |
/// head`) is a normal way for a reader to stop, not an error.
fn print_stdout(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "postgres://app:p@ss@db/app?sslmode=require",
                "postgres://app:***@db/app?sslmode=require",
            ),
            ("postgres://app@db/app", "postgres://app@db/app"),
            (
                "postgresql://db/app?user=a&password=s3cret",
                "postgresql://db/app?user=a&password=***",
            ),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown);
        }
    }

    #[test]
    fn statuses_parse_in_any_case() {
        assert_eq!(parse_status("cancelled"), Ok(Status::Cancelled));
        assert_eq!(parse_status("RUNNING"), Ok(Status::Running));
        assert!(parse_status("done").unwrap_err().contains("unknown status"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
