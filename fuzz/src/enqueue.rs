//! The `enqueue_args` target: arbitrary arguments to the ways work enters
//! tandem, the SQL functions `tandem.enqueue_workflow` and `tandem.send`
//! (their model in [`MemStorage`], called inside an application transaction
//! that also writes a row of its own), and the Rust API that interprets
//! names, IDs, queue options, delays and JSON text: [`Engine::enqueue`],
//! [`Engine::start_json`], [`Engine::send`].
//!
//! The oracle is the contract of docs/outbox.md and docs/messages.md, plus
//! what PostgreSQL itself refuses before a function runs (a NUL byte in a
//! `text` argument, 22021; a `\u0000` escape in `jsonb`, 22P05; JSON that
//! does not parse, 22P02). Properties:
//! - a call is refused exactly when it breaks a rule, with that rule's
//!   SQLSTATE and message (any one of them when it breaks several), and the
//!   Rust API refuses the same calls with an error of kind `Invalid`;
//! - a refused call leaves nothing behind and aborts the application's
//!   transaction, as in PostgreSQL; an accepted one commits with the
//!   application's row or not at all;
//! - an accepted workflow's row holds exactly the arguments, enqueuing an ID
//!   again returns it and adds nothing, a deduplication key returns the
//!   holder (or fails, with `dedup_error`);
//! - the engine then runs every committed workflow that is due to the end:
//!   its output is its function of the stored input, or a decode error when
//!   the stored input does not fit the workflow's input type. A message
//!   reaches the workflow it was sent to. Nothing panics or hangs.

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem::storage::memory::{Key, MemError};
use tandem::storage::{Storage, Transaction, WorkflowEnqueue};
use tandem::{
    Engine, EnqueueOptions, Error, ErrorKind, MemStorage, Queue, Status, Workflow, WorkflowContext,
    WorkflowError,
};

use crate::virtual_env::{START_MS, VirtualEnv, runtime};

/// The engine's (and so the SQL functions') payload limit here: small, so
/// that oversized payloads are easy to reach.
const PAYLOAD_MAX: usize = 200;
/// How long the engine gets to run everything due, in virtual time.
const BOUND: Duration = Duration::from_secs(90);
/// Delays up to this run within the bound.
const DUE_MS: i64 = 30_000;
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Doubles a number.
struct Double;

impl Workflow<MemStorage> for Double {
    const NAME: &'static str = "double";
    type Input = u32;
    type Output = u64;

    async fn run(&self, _: &mut WorkflowContext<MemStorage>, n: u32) -> Result<u64, WorkflowError> {
        Ok(u64::from(n) * 2)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    who: String,
}

/// Greets someone (an object input).
struct Greet;

impl Workflow<MemStorage> for Greet {
    const NAME: &'static str = "greet";
    type Input = Greeting;
    type Output = String;

    async fn run(
        &self,
        _: &mut WorkflowContext<MemStorage>,
        g: Greeting,
    ) -> Result<String, WorkflowError> {
        Ok(format!("hello {}", g.who))
    }
}

/// Returns the first message on topic "t", or null after a timeout.
struct Inbox;

impl Workflow<MemStorage> for Inbox {
    const NAME: &'static str = "inbox";
    type Input = u32;
    type Output = Option<Value>;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<MemStorage>,
        _: u32,
    ) -> Result<Option<Value>, WorkflowError> {
        ctx.recv("t", RECV_TIMEOUT).await
    }
}

const NAMES: [&str; 3] = ["double", "greet", "inbox"];

/// The output a workflow must end with, from its stored input.
fn output_of(name: &str, input: &str) -> Result<String, String> {
    let decode_error = || format!("cannot decode input of workflow {name:?}: ");
    match name {
        "double" | "inbox" => {
            let n: u32 = serde_json::from_str(input).map_err(|_| decode_error())?;
            if name == "inbox" {
                // Computed by the caller from the messages.
                return Ok(String::new());
            }
            Ok((u64::from(n) * 2).to_string())
        }
        "greet" => {
            let g: Greeting = serde_json::from_str(input).map_err(|_| decode_error())?;
            Ok(serde_json::to_string(&format!("hello {}", g.who)).expect("encodes"))
        }
        other => unreachable!("{other} is not registered"),
    }
}

/// The JSON types a registered workflow's input takes (as `jsonb_typeof`).
fn input_types(name: &str) -> &'static [&'static str] {
    match name {
        "greet" => &["object", "array"],
        _ => &["number"],
    }
}

/// Arguments of one enqueue.
#[derive(Debug, Clone)]
struct EnqueueArgs {
    name: String,
    input: String,
    queue: String,
    workflow_id: Option<String>,
    priority: i32,
    dedup_key: Option<String>,
    delay_ms: Option<i64>,
    dedup_error: bool,
    concurrency_key: Option<String>,
    /// Only in combinations the function refuses: a valid debounce's
    /// outcome depends on which workflows have started, which this oracle
    /// does not follow (docs/queues.md, and the simulator, check it).
    debounce_key: Option<String>,
    debounce_max_wait_ms: Option<i64>,
    trace_parent: Option<String>,
}

#[derive(Debug, Clone)]
enum Op {
    /// `SELECT tandem.enqueue_workflow(...)` in an application transaction.
    SqlEnqueue { args: EnqueueArgs, commit: bool },
    /// [`Engine::enqueue`] of `double` (typed input, options).
    RustEnqueue {
        n: u32,
        args: EnqueueArgs,
        delay: Option<Duration>,
    },
    /// [`Engine::start_json`].
    StartJson {
        name: String,
        id: Option<String>,
        input: String,
    },
    /// `SELECT tandem.send(...)` in an application transaction, or
    /// [`Engine::send`].
    Send {
        to: String,
        topic: String,
        message: String,
        sql: bool,
        commit: bool,
    },
}

/// An ID: mostly one the case already used (to reach idempotency and
/// ownership conflicts), sometimes new, empty, long or odd.
fn id(u: &mut Unstructured<'_>, used: &[String]) -> arbitrary::Result<String> {
    Ok(match u8::arbitrary(u)? % 8 {
        0 | 1 if !used.is_empty() => u.choose(used)?.clone(),
        0..=2 => format!("w{}", u8::arbitrary(u)? % 8),
        3 => String::new(),
        4 => "x".repeat(256),
        5 => "é".repeat(usize::from(u8::arbitrary(u)?) + 129),
        6 => "y".repeat(257),
        _ => String::arbitrary(u)?,
    })
}

fn json_input(u: &mut Unstructured<'_>, name: &str) -> arbitrary::Result<String> {
    Ok(match u8::arbitrary(u)? % 12 {
        0..=3 if name == "greet" => json!({ "who": String::arbitrary(u)? }).to_string(),
        0..=3 => u32::arbitrary(u)?.to_string(),
        4 => i64::arbitrary(u)?.to_string(),
        5 => f64::arbitrary(u)?.to_string(),
        6 => serde_json::to_string(&String::arbitrary(u)?).expect("encodes"),
        7 => "{}".to_owned(),
        8 => format!("[{}]", u8::arbitrary(u)?),
        9 => "x".repeat(PAYLOAD_MAX),
        10 => format!("\"{}\"", "a".repeat(PAYLOAD_MAX)),
        _ => String::arbitrary(u)?,
    })
}

fn text(u: &mut Unstructured<'_>, usual: &[&str]) -> arbitrary::Result<String> {
    Ok(if u8::arbitrary(u)? % 8 == 7 {
        String::arbitrary(u)?
    } else {
        u.choose(usual)?.to_string()
    })
}

fn enqueue_args(u: &mut Unstructured<'_>, used: &[String]) -> arbitrary::Result<EnqueueArgs> {
    let name = text(u, &["double", "double", "greet", "inbox", "nope"])?;
    let input = json_input(u, &name)?;
    let queue = text(u, &["default", "default", "q1", "nope"])?;
    let workflow_id = if bool::arbitrary(u)? {
        Some(id(u, used)?)
    } else {
        None
    };
    let priority = match u8::arbitrary(u)? % 8 {
        0..=3 => i32::from(i8::arbitrary(u)?),
        4 => 1_000_000,
        5 => -1_000_001,
        6 => 1_000_001,
        _ => i32::arbitrary(u)?,
    };
    let dedup_key = match u8::arbitrary(u)? % 4 {
        0 | 1 => None,
        2 => Some("k".to_owned()),
        _ => Some(String::arbitrary(u)?),
    };
    let delay_ms = match u8::arbitrary(u)? % 8 {
        0..=2 => None,
        3 => Some(0),
        4 => Some(i64::from(u16::arbitrary(u)?) % DUE_MS),
        5 => Some(-1 - i64::from(u32::arbitrary(u)?)),
        6 => Some(86_400_000 + i64::from(u32::arbitrary(u)?)),
        _ => Some(i64::MAX),
    };
    let dedup_error = u.ratio(1, 4)?;
    let concurrency_key = match u8::arbitrary(u)? % 6 {
        0..=2 => None,
        3 => Some("customer-1".to_owned()),
        4 => Some(String::new()),
        _ => Some(String::arbitrary(u)?),
    };
    let (mut debounce_key, mut debounce_max_wait_ms) = match u8::arbitrary(u)? % 8 {
        0..=4 => (None, None),
        5 => (None, Some(100)),
        6 => (Some("d".to_owned()), None),
        _ => (
            Some(if u.ratio(1, 2)? {
                String::new()
            } else {
                String::arbitrary(u)?
            }),
            Some(if u.ratio(1, 2)? { -1 } else { 100 }),
        ),
    };
    let debounce_valid = debounce_key
        .as_ref()
        .is_some_and(|k| (1..=256).contains(&k.chars().count()))
        && workflow_id.is_none()
        && dedup_key.is_none()
        && delay_ms.is_some()
        && debounce_max_wait_ms.is_some_and(|m| m >= 0);
    if debounce_valid {
        (debounce_key, debounce_max_wait_ms) = (None, None);
    }
    let trace_parent = match u8::arbitrary(u)? % 10 {
        0..=4 => None,
        5 | 6 => Some(VALID_TRACE_PARENT.to_owned()),
        7 => Some(
            [
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "",
            ][usize::from(u8::arbitrary(u)?) % 6]
                .to_owned(),
        ),
        _ => Some(String::arbitrary(u)?),
    };
    Ok(EnqueueArgs {
        name,
        input,
        queue,
        workflow_id,
        priority,
        dedup_key,
        delay_ms,
        dedup_error,
        concurrency_key,
        debounce_key,
        debounce_max_wait_ms,
        trace_parent,
    })
}

/// A well-formed W3C traceparent (the specification's example).
const VALID_TRACE_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Whether `tp` is a version-00 traceparent with non-zero IDs: an oracle
/// of its own, not the engine's parser.
fn trace_parent_ok(tp: &str) -> Option<bool> {
    let b = tp.as_bytes();
    let lower_hex =
        |r: std::ops::Range<usize>| b[r].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let form = b.len() == 55
        && tp.starts_with("00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && lower_hex(3..35)
        && lower_hex(36..52)
        && lower_hex(53..55);
    if !form {
        return None;
    }
    Some(tp[3..35] != "0".repeat(32) && tp[36..52] != "0".repeat(16))
}

fn ops(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<Op>> {
    let mut ops = Vec::new();
    let mut used: Vec<String> = Vec::new();
    for _ in 0..u.int_in_range(1..=6)? {
        let op = match u8::arbitrary(u)? % 8 {
            0..=2 => Op::SqlEnqueue {
                args: enqueue_args(u, &used)?,
                commit: !u.ratio(1, 5)?,
            },
            3 => {
                let mut args = enqueue_args(u, &used)?;
                args.name = "double".to_owned();
                let delay = match u8::arbitrary(u)? % 4 {
                    0 | 1 => None,
                    2 => Some(Duration::from_millis(
                        u64::from(u16::arbitrary(u)?) % 30_000,
                    )),
                    _ => Some(Duration::from_secs(u64::arbitrary(u)?)),
                };
                args.delay_ms = delay.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                Op::RustEnqueue {
                    n: u32::arbitrary(u)?,
                    args,
                    delay,
                }
            }
            4 | 5 => {
                let name = text(u, &["double", "greet", "inbox", "nope"])?;
                let input = json_input(u, &name)?;
                let id = if u.ratio(1, 4)? {
                    None
                } else {
                    Some(id(u, &used)?)
                };
                Op::StartJson { name, id, input }
            }
            _ => {
                let to = if used.is_empty() || u.ratio(1, 6)? {
                    String::arbitrary(u)?
                } else {
                    u.choose(&used)?.clone()
                };
                let topic = text(u, &["t", "t", "other"])?;
                let message = match u8::arbitrary(u)? % 6 {
                    0 => "x".repeat(PAYLOAD_MAX + 1),
                    1 => String::arbitrary(u)?,
                    _ => json!({ "m": String::arbitrary(u)? }).to_string(),
                };
                Op::Send {
                    to,
                    topic,
                    message,
                    sql: bool::arbitrary(u)?,
                    commit: !u.ratio(1, 5)?,
                }
            }
        };
        if let Op::SqlEnqueue { args, .. } | Op::RustEnqueue { args, .. } = &op
            && let Some(id) = &args.workflow_id
        {
            used.push(id.clone());
        }
        if let Op::StartJson { id: Some(id), .. } = &op {
            used.push(id.clone());
        }
        ops.push(op);
    }
    Ok(ops)
}

/// What PostgreSQL refuses in a `text` argument before any function runs.
fn text_error(args: &[&str]) -> Option<(&'static str, String)> {
    args.iter().any(|a| a.contains('\0')).then(|| {
        (
            "22021",
            "invalid byte sequence for encoding \"UTF8\": 0x00".to_owned(),
        )
    })
}

/// What the `::jsonb` cast refuses, or the value it stores.
fn jsonb(json: &str) -> Result<Value, (&'static str, String)> {
    let value: Value = serde_json::from_str(json)
        .map_err(|_| ("22P02", "invalid input syntax for type json".to_owned()))?;
    if any_nul(json) {
        return Err(("22P05", "unsupported Unicode escape sequence".to_owned()));
    }
    Ok(value)
}

/// Whether a string of valid JSON text holds NUL anywhere, duplicate keys
/// included (jsonb's lexer refuses them all).
fn any_nul(json: &str) -> bool {
    matches!(serde_json::from_str(json), Ok(crate::payload::AnyNul(true)))
}

fn jsonb_typeof(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The workflow rows the oracle knows of: committed ones, in order.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    queue: String,
    dedup_key: Option<String>,
    /// Enqueued (not started directly) with a delay beyond the bound.
    late: bool,
    /// The stored input.
    input: Value,
}

/// The rules of `tandem.enqueue_workflow` (docs/outbox.md) that do not
/// depend on existing rows: the (SQLSTATE, message) of each rule `args`
/// breaks. The input's text is measured as stored (jsonb's text).
fn enqueue_violations(
    args: &EnqueueArgs,
    stored_len: Option<usize>,
) -> Vec<(&'static str, String)> {
    const F: &str = "tandem.enqueue_workflow: ";
    let mut v = Vec::new();
    let mut texts = vec![args.name.as_str(), args.queue.as_str()];
    texts.extend(args.workflow_id.as_deref());
    texts.extend(args.dedup_key.as_deref());
    texts.extend(args.concurrency_key.as_deref());
    texts.extend(args.debounce_key.as_deref());
    texts.extend(args.trace_parent.as_deref());
    // The text arguments are refused first, then the input's cast, then the
    // function's own checks: any of them may be reported, but only those.
    if let Some(e) = text_error(&texts) {
        v.push(e);
    }
    let value = match jsonb(&args.input) {
        Ok(value) => Some(value),
        Err(e) => {
            v.push(e);
            None
        }
    };
    if !NAMES.contains(&args.name.as_str()) {
        v.push((
            "22023",
            format!("{F}unknown workflow name \"{}\"", args.name),
        ));
    } else if let Some(value) = &value
        && !input_types(&args.name).contains(&jsonb_typeof(value))
    {
        v.push((
            "22023",
            format!("{F}workflow \"{}\" takes JSON ", args.name),
        ));
    }
    if !["default", "q1"].contains(&args.queue.as_str()) {
        v.push(("22023", format!("{F}unknown queue \"{}\"", args.queue)));
    }
    if stored_len.is_some_and(|n| n > PAYLOAD_MAX) {
        v.push(("54000", format!("{F}input is ")));
    }
    if !(-1_000_000..=1_000_000).contains(&args.priority) {
        v.push((
            "22023",
            format!("{F}priority must be between -1000000 and 1000000"),
        ));
    }
    if args.delay_ms.is_some_and(|d| d < 0) {
        v.push(("22023", format!("{F}delay must not be negative")));
    }
    if args
        .concurrency_key
        .as_ref()
        .is_some_and(|k| !(1..=256).contains(&k.chars().count()))
    {
        v.push((
            "22023",
            format!("{F}concurrency_key must be 1 to 256 characters"),
        ));
    }
    let debounce = args.debounce_key.as_ref();
    if debounce.is_none() && args.debounce_max_wait_ms.is_some() {
        v.push(("22023", format!("{F}debounce_max_wait needs debounce_key")));
    }
    if debounce.is_some_and(|k| !(1..=256).contains(&k.chars().count())) {
        v.push((
            "22023",
            format!("{F}debounce_key must be 1 to 256 characters"),
        ));
    }
    if debounce.is_some() && (args.workflow_id.is_some() || args.dedup_key.is_some()) {
        v.push((
            "22023",
            format!("{F}debounce_key cannot be combined with workflow_id or dedup_key"),
        ));
    }
    if debounce.is_some() && (args.delay_ms.is_none() || args.debounce_max_wait_ms.is_none()) {
        v.push((
            "22023",
            format!("{F}debounce_key needs delay and debounce_max_wait"),
        ));
    }
    if args.debounce_max_wait_ms.is_some_and(|m| m < 0) {
        v.push((
            "22023",
            format!("{F}debounce_max_wait must not be negative"),
        ));
    }
    if let Some(tp) = &args.trace_parent {
        match trace_parent_ok(tp) {
            None => v.push((
                "22023",
                format!("{F}trace_parent must be a W3C traceparent"),
            )),
            Some(false) => v.push((
                "22023",
                format!("{F}trace_parent must not have an all-zero trace or parent ID"),
            )),
            Some(true) => {}
        }
    }
    if let Some(id) = &args.workflow_id
        && !(1..=256).contains(&id.chars().count())
    {
        v.push((
            "22023",
            format!("{F}workflow_id must be 1 to 256 characters"),
        ));
    }
    v
}

/// Checks a send's result against the rules it breaks; whether it was
/// accepted.
fn check_send(
    what: &str,
    result: Result<(), (&'static str, String)>,
    violations: &[(&'static str, String)],
) -> bool {
    match result {
        Ok(()) => {
            assert!(
                violations.is_empty(),
                "{what}: accepted, though it breaks {violations:?}"
            );
            true
        }
        Err((state, message)) => {
            assert_refused(&message, state, violations, what);
            false
        }
    }
}

/// Where a refused call's error must come from.
fn assert_refused(error: &str, sqlstate: &str, violations: &[(&'static str, String)], what: &str) {
    assert!(
        violations
            .iter()
            .any(|(state, message)| *state == sqlstate && error.contains(message.as_str())),
        "{what}: refused with {sqlstate} {error:?}, which is none of the rules it breaks: {violations:?}"
    );
}

/// The drive state: the oracle's view of committed workflows and messages.
#[derive(Debug, Default)]
struct Oracle {
    workflows: BTreeMap<String, Known>,
    /// Committed messages: (to, topic, payload).
    messages: Vec<(String, String, Value)>,
    /// Committed application rows (one per committed transaction).
    app_rows: usize,
}

impl Oracle {
    fn unfinished_holder(
        &self,
        queue: &str,
        key: &str,
        done: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        self.workflows
            .iter()
            .find(|(id, w)| w.queue == queue && w.dedup_key.as_deref() == Some(key) && !done(id))
            .map(|(id, _)| id.clone())
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = ops(&mut u) else {
        return;
    };
    let rt = runtime();
    rt.block_on(drive(ops));
}

async fn drive(ops: Vec<Op>) {
    let storage = MemStorage::new();
    let engine = Engine::builder(storage.clone())
        .env(VirtualEnv::new(0))
        .executor_id("fuzz")
        .payload_max_bytes(PAYLOAD_MAX)
        .queue(Queue::new("q1").worker_concurrency(2))
        .register(Double)
        .register(Greet)
        .register(Inbox)
        .launch()
        .await
        .expect("the engine launches");
    // The database clock (`now()` of the SQL functions) reads the time
    // the operations run at; the model leaves advancing it to its user.
    storage.advance_clock(START_MS);
    let mut oracle = Oracle::default();
    // Nothing below awaits anything that waits, so the engine's tasks do
    // not run until the drain: every workflow is still unfinished while the
    // operations run, which is what the deduplication rules see.
    let done = |_: &str| false;
    for (n, op) in ops.iter().enumerate() {
        let what = format!("op {n}: {op:?}");
        match op {
            Op::SqlEnqueue { args, commit } => {
                let mut tx = storage.begin().await.expect("begin");
                tx.conn()
                    .insert("app", Key::Int(n as i64), json!(n))
                    .await
                    .expect("the application's insert");
                let result = tx
                    .workflow_enqueue(WorkflowEnqueue {
                        name: args.name.clone(),
                        input: args.input.clone(),
                        queue: args.queue.clone(),
                        workflow_id: args.workflow_id.clone(),
                        priority: args.priority,
                        dedup_key: args.dedup_key.clone(),
                        delay_ms: args.delay_ms,
                        dedup_error: args.dedup_error,
                        concurrency_key: args.concurrency_key.clone(),
                        debounce_key: args.debounce_key.clone(),
                        debounce_max_wait_ms: args.debounce_max_wait_ms,
                        trace_parent: args.trace_parent.clone(),
                    })
                    .await;
                let expected = expect_enqueue(&oracle, args, &done);
                let accepted =
                    check_enqueue(&what, result.map_err(|e| sql_error(&what, &e)), &expected);
                if *commit {
                    // COMMIT of a failed transaction rolls it back.
                    tx.commit().await.expect("commit");
                    if let Some(new) = accepted {
                        oracle.app_rows += 1;
                        if let Some(id) = new {
                            record(&mut oracle, args, id, &storage, &what);
                        }
                    }
                } else {
                    tx.rollback().await.expect("rollback");
                }
            }
            Op::RustEnqueue { n, args, delay } => {
                let mut options = EnqueueOptions::default()
                    .queue(args.queue.clone())
                    .priority(args.priority);
                if let Some(id) = &args.workflow_id {
                    options = options.workflow_id(id.clone());
                }
                if let Some(key) = &args.dedup_key {
                    options = options.dedup_key(key.clone());
                }
                if args.dedup_error {
                    options = options.dedup_error();
                }
                if let Some(key) = &args.concurrency_key {
                    options = options.concurrency_key(key.clone());
                }
                if let Some(delay) = delay {
                    options = options.delay(*delay);
                }
                if let Some(tp) = &args.trace_parent {
                    options = options.trace_parent(tp.clone());
                }
                let mut args = args.clone();
                args.input = n.to_string();
                // (The Rust API's debounce always names a delay and a
                // maximum wait; its key rules are the SQL function's.)
                args.debounce_key = None;
                args.debounce_max_wait_ms = None;
                let result = engine.enqueue::<Double>(*n, options).await;
                let expected = expect_enqueue(&oracle, &args, &done);
                let result = result
                    .map(|h| h.workflow_id().to_owned())
                    .map_err(|e| api_error(&what, &e));
                if let Some(Some(id)) = check_enqueue(&what, result, &expected) {
                    record(&mut oracle, &args, id, &storage, &what);
                }
            }
            Op::StartJson { name, id, input } => {
                let result = engine.start_json(name, id.clone(), input).await;
                match expect_start(&oracle, name, id.as_deref(), input) {
                    Err(violations) => {
                        let e = result.expect_err(&format!(
                            "{what}: accepted, though it breaks {violations:?}"
                        ));
                        let message = e.to_string();
                        assert_eq!(e.kind(), ErrorKind::Invalid, "{what}: {message}");
                        assert!(
                            violations.iter().any(|v| message.contains(v.as_str())),
                            "{what}: refused with {message:?}, none of {violations:?}"
                        );
                    }
                    Ok(existing) => {
                        let handle = result.unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                        let id = handle.workflow_id().to_owned();
                        if let Some(existing) = existing {
                            assert_eq!(id, existing, "{what}");
                        } else {
                            let value = serde_json::from_str(input).expect("checked");
                            oracle.workflows.insert(
                                id,
                                Known {
                                    name: name.clone(),
                                    queue: "default".to_owned(),
                                    dedup_key: None,
                                    late: false,
                                    input: value,
                                },
                            );
                        }
                    }
                }
            }
            Op::Send {
                to,
                topic,
                message,
                sql,
                commit,
            } => {
                let mut violations = Vec::new();
                if let Some(e) = text_error(&[to, topic]) {
                    violations.push(e);
                }
                let value = match jsonb(message) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        violations.push(e);
                        None
                    }
                };
                if !oracle.workflows.contains_key(to) {
                    violations.push(("22023", format!("tandem.send: unknown workflow \"{to}\"")));
                }
                if value.as_ref().is_some_and(|v| stored_len(v) > PAYLOAD_MAX) {
                    violations.push(("54000", "tandem.send: message is ".to_owned()));
                }
                let delivered = if *sql {
                    let mut tx = storage.begin().await.expect("begin");
                    tx.conn()
                        .insert("app", Key::Int(n as i64), json!(n))
                        .await
                        .expect("the application's insert");
                    let result = tx.message_send(to, topic, message, START_MS).await;
                    let ok =
                        check_send(&what, result.map_err(|e| sql_error(&what, &e)), &violations);
                    if *commit {
                        tx.commit().await.expect("commit");
                        if ok {
                            oracle.app_rows += 1;
                        }
                        ok
                    } else {
                        tx.rollback().await.expect("rollback");
                        false
                    }
                } else {
                    // The Rust API takes a value; it can only send JSON.
                    let Some(value) = &value else { continue };
                    let result = engine.send(to, topic, value).await;
                    check_send(&what, result.map_err(|e| api_error(&what, &e)), &violations)
                };
                if delivered {
                    oracle
                        .messages
                        .push((to.clone(), topic.clone(), value.expect("accepted")));
                }
            }
        }
    }
    // The drain: the engine runs everything due.
    let started = tokio::time::Instant::now();
    while started.elapsed() < BOUND {
        let rows = storage.workflows();
        let pending = rows.iter().any(|w| {
            !w.status.is_terminal() && oracle.workflows.get(&w.id).is_some_and(|k| !k.late)
        });
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    engine.shutdown().await;
    check_end(&storage, &oracle);
}

/// The length of a JSON value as jsonb stores it (its text); the model
/// prints jsonb as PostgreSQL does, modulo float formatting, and the oracle
/// keeps away from the limit's edge with floats.
fn stored_len(value: &Value) -> usize {
    jsonb_text_len(value)
}

fn jsonb_text_len(value: &Value) -> usize {
    match value {
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| Value::String(k.clone()).to_string().len() + 2 + jsonb_text_len(v))
                .sum::<usize>()
                + map.len().saturating_sub(1) * 2
        }
        Value::Array(items) => {
            2 + items.iter().map(jsonb_text_len).sum::<usize>() + items.len().saturating_sub(1) * 2
        }
        other => other.to_string().len(),
    }
}

enum ExpectEnqueue {
    Refused(Vec<(&'static str, String)>),
    /// Accepted: the ID it must return, if known (an existing workflow's).
    Accepted(Option<String>),
}

fn expect_enqueue(
    oracle: &Oracle,
    args: &EnqueueArgs,
    done: &dyn Fn(&str) -> bool,
) -> ExpectEnqueue {
    let stored = jsonb(&args.input).ok().map(|v| stored_len(&v));
    let violations = enqueue_violations(args, stored);
    if !violations.is_empty() {
        return ExpectEnqueue::Refused(violations);
    }
    if let Some(id) = &args.workflow_id
        && let Some(existing) = oracle.workflows.get(id)
    {
        if existing.name != args.name {
            return ExpectEnqueue::Refused(vec![(
                "23505",
                format!(
                    "workflow ID \"{id}\" belongs to workflow \"{}\", not \"{}\"",
                    existing.name, args.name
                ),
            )]);
        }
        return ExpectEnqueue::Accepted(Some(id.clone()));
    }
    if let Some(key) = &args.dedup_key
        && let Some(holder) = oracle.unfinished_holder(&args.queue, key, done)
    {
        if args.dedup_error {
            return ExpectEnqueue::Refused(vec![(
                "23505",
                format!(
                    "queue \"{}\" already has an unfinished workflow with dedup_key \"{key}\": \"{holder}\"",
                    args.queue
                ),
            )]);
        }
        return ExpectEnqueue::Accepted(Some(holder));
    }
    ExpectEnqueue::Accepted(None)
}

/// Checks an enqueue's result against the expectation: `None` if refused,
/// `Some(None)` if it returned an existing workflow, `Some(Some(id))` if it
/// created one.
fn check_enqueue(
    what: &str,
    result: Result<String, (&'static str, String)>,
    expected: &ExpectEnqueue,
) -> Option<Option<String>> {
    match (result, expected) {
        (Ok(id), ExpectEnqueue::Accepted(Some(existing))) => {
            assert_eq!(&id, existing, "{what}: returned another ID");
            Some(None)
        }
        (Ok(id), ExpectEnqueue::Accepted(None)) => Some(Some(id)),
        (Ok(id), ExpectEnqueue::Refused(violations)) => {
            panic!("{what}: accepted as {id:?}, though it breaks {violations:?}")
        }
        (Err((state, message)), ExpectEnqueue::Refused(violations)) => {
            assert_refused(&message, state, violations, what);
            None
        }
        (Err(e), ExpectEnqueue::Accepted(_)) => {
            panic!("{what}: refused with {e:?}, though it breaks no rule")
        }
    }
}

/// Remembers a committed new workflow and checks its row holds the call's
/// arguments.
fn record(oracle: &mut Oracle, args: &EnqueueArgs, id: String, storage: &MemStorage, what: &str) {
    let row = storage
        .workflows()
        .into_iter()
        .find(|w| w.id == id)
        .unwrap_or_else(|| panic!("{what}: committed, but workflow {id:?} is not there"));
    let input: Value = serde_json::from_str(&row.input).expect("stored input is JSON");
    assert_eq!(
        input,
        jsonb(&args.input).expect("accepted"),
        "{what}: stored input"
    );
    assert_eq!(
        (row.name.as_str(), row.queue.as_str(), row.priority),
        (args.name.as_str(), args.queue.as_str(), args.priority),
        "{what}"
    );
    assert_eq!(row.dedup_key, args.dedup_key, "{what}");
    assert_eq!(row.concurrency_key, args.concurrency_key, "{what}");
    assert_eq!(row.trace_parent, args.trace_parent, "{what}: trace_parent");
    assert_eq!(row.status, Status::Enqueued, "{what}");
    assert_eq!(
        row.run_after_ms,
        args.delay_ms.map(|d| row.created_ms.saturating_add(d)),
        "{what}: run_after"
    );
    oracle.workflows.insert(
        id,
        Known {
            name: args.name.clone(),
            queue: args.queue.clone(),
            dedup_key: args.dedup_key.clone(),
            late: args.delay_ms.is_some_and(|d| d > DUE_MS),
            input,
        },
    );
}

/// The expectation of [`Engine::start_json`]: the messages it may fail
/// with, or success (with the existing workflow's ID if there is one).
fn expect_start(
    oracle: &Oracle,
    name: &str,
    id: Option<&str>,
    input: &str,
) -> Result<Option<String>, Vec<String>> {
    let mut v = Vec::new();
    if input.len() > PAYLOAD_MAX {
        v.push(format!("input of workflow {name:?} is "));
    }
    if !NAMES.contains(&name) {
        v.push(format!("unknown workflow {name:?}: "));
    }
    if let Some(id) = id {
        // The same rule as the SQL function's, plus no NUL (which
        // PostgreSQL's text refuses).
        if !(1..=256).contains(&id.chars().count()) || id.contains('\0') {
            v.push(format!("invalid workflow ID {id:?}"));
        }
    }
    if NAMES.contains(&name) && output_of(name, input).is_err() {
        v.push(format!("cannot decode input of workflow {name:?}"));
    }
    // A NUL in valid JSON is refused; in text that is not JSON at all,
    // `\u0000` may be refused as unstorable before the parse fails.
    if any_nul(input)
        || (serde_json::from_str::<Value>(input).is_err() && input.contains("\\u0000"))
    {
        v.push(format!("input of workflow {name:?} cannot be stored"));
    }
    if !v.is_empty() {
        return Err(v);
    }
    match id.and_then(|id| oracle.workflows.get(id).map(|w| (id, w))) {
        Some((id, w)) if w.name != name => {
            Err(vec![format!("workflow ID {id:?} already belongs to")])
        }
        Some((id, _)) => Ok(Some(id.to_owned())),
        None => Ok(None),
    }
}

/// The SQLSTATE and message of the model's error behind `e`.
fn sql_error(what: &str, e: &(dyn std::error::Error + 'static)) -> (&'static str, String) {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(mem) = s.downcast_ref::<MemError>() {
            return (mem.sqlstate(), mem.to_string());
        }
        source = s.source();
    }
    panic!("{what}: {e} does not come from the storage")
}

/// A Rust API error: it must be `Invalid` and carry the SQL function's
/// SQLSTATE and message.
fn api_error(what: &str, e: &Error) -> (&'static str, String) {
    assert_eq!(e.kind(), ErrorKind::Invalid, "{what}: {e}");
    sql_error(what, e)
}

fn check_end(storage: &MemStorage, oracle: &Oracle) {
    let rows = storage.workflows();
    let context = || format!("\noracle: {oracle:#?}\nrows: {rows:#?}");
    assert_eq!(
        rows.len(),
        oracle.workflows.len(),
        "workflows in the database{}",
        context()
    );
    assert_eq!(
        storage.rows("app").len(),
        oracle.app_rows,
        "application rows{}",
        context()
    );
    for row in &rows {
        let known = &oracle.workflows[&row.id];
        if known.late {
            assert_eq!(
                row.status,
                Status::Enqueued,
                "{} is not due yet{}",
                row.id,
                context()
            );
            continue;
        }
        let input = serde_json::to_string(&known.input).expect("encodes");
        let mut expected = output_of(&known.name, &row.input);
        if known.name == "inbox"
            && let Ok(out) = &mut expected
        {
            let first = oracle
                .messages
                .iter()
                .find(|(to, topic, _)| *to == row.id && topic == "t");
            *out = serde_json::to_string(&first.map(|m| &m.2)).expect("encodes");
        }
        match expected {
            Ok(output) => {
                assert_eq!(
                    row.status,
                    Status::Success,
                    "{} ({input}){}",
                    row.id,
                    context()
                );
                let got: Value =
                    serde_json::from_str(row.output.as_deref().unwrap_or("null")).expect("JSON");
                let want: Value = serde_json::from_str(&output).expect("JSON");
                assert_eq!(got, want, "output of {}{}", row.id, context());
            }
            Err(fragment) => {
                assert_eq!(
                    row.status,
                    Status::Error,
                    "{} ({input}){}",
                    row.id,
                    context()
                );
                let error = row.error.as_deref().unwrap_or_default();
                assert!(
                    error.contains(&fragment),
                    "{}: {error:?} lacks {fragment:?}{}",
                    row.id,
                    context()
                );
            }
        }
    }
}
