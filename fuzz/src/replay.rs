//! The `replay_history` target: a workflow recovered over an arbitrary
//! recorded history (wrong step names, missing steps, extra steps, steps of
//! another kind, corrupted or mistyped outputs, recorded failures, sleeps
//! that end in the past or far in the future, a mistyped input, a name this
//! executor does not run).
//!
//! The history is written into [`MemStorage`] as the engine's own storage
//! operations would write it, then an engine launches, recovers the
//! workflow and runs it on tokio's paused clock. An oracle computes what
//! replay must do from the history alone: the engine must end the workflow
//! exactly so (the same output, or an error naming the same cause), run a
//! step body only where the history has no checkpoint (at most once, and a
//! transactional step's write commits only then), record what it ran, leave
//! the recorded steps untouched, and never panic or spin: a workflow still
//! running after [`BOUND`] of virtual time that the oracle says should have
//! finished is a hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use serde_json::json;
use tandem::storage::memory::{Key, WorkflowRecord};
use tandem::storage::{StepKind, StepRecord, Storage, Transaction, WorkflowInsert};
use tandem::{Engine, MemStorage, Status, Workflow, WorkflowContext, WorkflowError};

use crate::virtual_env::{START_MS, VirtualEnv, runtime};

/// How long a recovered workflow may take, in virtual time.
const BOUND: Duration = Duration::from_secs(120);
/// The fresh sleep of step 1.
const SLEEP: Duration = Duration::from_millis(1_500);
/// The receive timeout of step 4.
const RECV_TIMEOUT: Duration = Duration::from_millis(50);
const WORKFLOW_ID: &str = "wf-replay";
const EXECUTOR: &str = "fuzz";
/// The names the workflow calls, by step ID.
const NAMES: [&str; 5] = ["a", "sleep", "b", "c", "recv:t"];
/// The JSON types each step's output decodes into, for the generator.
const OUTPUT_SHAPES: [Shape; 5] = [
    Shape::U32,
    Shape::I64,
    Shape::Str,
    Shape::VecU16,
    Shape::OptI32,
];

#[derive(Debug, Clone, Copy)]
enum Shape {
    U32,
    I64,
    Str,
    VecU16,
    OptI32,
}

/// The workflow under test. Its steps count their executions, so the
/// harness can check that replay ran exactly the steps it had to.
struct Replayed {
    runs: Arc<Runs>,
}

#[derive(Debug, Default)]
struct Runs {
    a: AtomicU32,
    b: AtomicU32,
    c: AtomicU32,
}

fn step_a(n: u32) -> u32 {
    n.wrapping_mul(3).wrapping_add(1)
}

fn step_b(a: u32) -> String {
    format!("b{a}")
}

fn step_c(a: u32) -> Result<Vec<u16>, String> {
    if a.is_multiple_of(7) {
        Err(format!("c refused a={a}"))
    } else {
        Ok(vec![a as u16, (a >> 16) as u16])
    }
}

fn output(a: u32, b: &str, c: &[u16], d: Option<i32>) -> String {
    format!("{a}/{b}/{c:?}/{d:?}")
}

impl Workflow<MemStorage> for Replayed {
    const NAME: &'static str = "replay";
    type Input = u32;
    type Output = String;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<MemStorage>,
        n: u32,
    ) -> Result<String, WorkflowError> {
        let runs = &self.runs;
        let a: u32 = ctx
            .step("a", || async {
                runs.a.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(step_a(n))
            })
            .await?;
        ctx.sleep(SLEEP).await?;
        let counter = Arc::clone(runs);
        let b: String = ctx
            .transaction("b", async move |conn| {
                counter.b.fetch_add(1, Ordering::SeqCst);
                conn.insert("ledger", Key::Int(i64::from(a)), json!(a))
                    .await?;
                Ok::<_, tandem::storage::memory::MemError>(step_b(a))
            })
            .await?;
        let c: Vec<u16> = ctx
            .step("c", || async {
                runs.c.fetch_add(1, Ordering::SeqCst);
                step_c(a)
            })
            .await?;
        let d: Option<i32> = ctx.recv("t", RECV_TIMEOUT).await?;
        Ok(output(a, &b, &c, d))
    }
}

/// One recorded step.
#[derive(Debug, Clone)]
struct Row {
    step_id: i32,
    name: String,
    kind: StepKind,
    output: Result<String, String>,
}

/// A generated case: the workflow row and its history.
#[derive(Debug)]
struct Case {
    registered: bool,
    input: String,
    rows: Vec<Row>,
}

fn start_ms() -> i64 {
    START_MS
}

fn json_of(u: &mut Unstructured<'_>, shape: Shape) -> arbitrary::Result<String> {
    Ok(match shape {
        Shape::U32 => u32::arbitrary(u)?.to_string(),
        Shape::I64 => {
            // A wake-up time: past, near (within the bound), far (never
            // within it) or extreme. Nothing in between, so whether the
            // workflow finishes within the bound is certain.
            let start = start_ms();
            match u8::arbitrary(u)? % 6 {
                0 => (start - i64::from(u32::arbitrary(u)?)).to_string(),
                1 => (start + i64::from(u16::arbitrary(u)? % 10_000)).to_string(),
                2 => (start + 86_400_000 + i64::from(u32::arbitrary(u)?)).to_string(),
                3 => i64::MIN.to_string(),
                4 => i64::MAX.to_string(),
                _ => "0".to_owned(),
            }
        }
        Shape::Str => serde_json::to_string(&String::arbitrary(u)?).expect("a string encodes"),
        Shape::VecU16 => serde_json::to_string(&Vec::<u16>::arbitrary(u)?).expect("encodes"),
        Shape::OptI32 => serde_json::to_string(&Option::<i32>::arbitrary(u)?).expect("encodes"),
    })
}

const KINDS: [StepKind; 7] = [
    StepKind::Plain,
    StepKind::Transaction,
    StepKind::Sleep,
    StepKind::Recv,
    StepKind::Event,
    StepKind::Child,
    StepKind::ChildResult,
];

impl Case {
    fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Case> {
        let registered = u.ratio(15, 16)?;
        // Case 0 first in each choice: once the bytes run out, `arbitrary`
        // yields zeros, and those should mean the ordinary case.
        let input = match u8::arbitrary(u)? % 8 {
            5 => json_of(u, Shape::Str)?,
            6 => i64::arbitrary(u)?.to_string(),
            7 => "{\"n\":1}".to_owned(),
            _ => u32::arbitrary(u)?.to_string(),
        };
        let mut rows: Vec<Row> = Vec::new();
        let count = u.int_in_range(0..=7)?;
        for _ in 0..count {
            // Step IDs 0..=7: the five the code calls and extras past its
            // end (PostgreSQL's CHECK keeps them non-negative).
            let step_id = u.int_in_range(0..=7)?;
            if rows.iter().any(|r| r.step_id == step_id) {
                continue; // the primary key: one row per step
            }
            let own = usize::try_from(step_id).ok().filter(|&i| i < NAMES.len());
            let name = match (u8::arbitrary(u)? % 8, own) {
                (6, _) => String::arbitrary(u)?,
                (7, _) => u.choose(&NAMES)?.to_string(),
                (_, Some(i)) => NAMES[i].to_owned(),
                (_, None) => u.choose(&NAMES)?.to_string(),
            };
            let kind = *u.choose(&KINDS)?;
            let shape = match own {
                Some(i) if u8::arbitrary(u)? % 8 != 7 => OUTPUT_SHAPES[i],
                _ => *u.choose(&OUTPUT_SHAPES)?,
            };
            let output = match u8::arbitrary(u)? % 10 {
                8 => Err(String::arbitrary(u)?),
                // Not JSON at all: PostgreSQL's jsonb would refuse it, but
                // the decoder must not care where the bytes came from.
                9 => Ok(String::arbitrary(u)?),
                _ => Ok(json_of(u, shape)?),
            };
            rows.push(Row {
                step_id,
                name,
                kind,
                output,
            });
        }
        Ok(Case {
            registered,
            input,
            rows,
        })
    }

    fn row(&self, step_id: i32) -> Option<&Row> {
        self.rows.iter().find(|r| r.step_id == step_id)
    }
}

/// What the workflow must end as.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Success(String),
    /// Failed; the stored error must contain this.
    Error(String),
    /// Still waiting (a recorded wake-up time beyond the bound), or not run
    /// at all (a name this executor does not run).
    Unfinished,
}

/// What replay must do, computed from the history alone.
#[derive(Debug)]
struct Expected {
    end: End,
    /// Which step bodies run (a, b, c).
    runs: [u32; 3],
    /// The steps that must be recorded afterwards, by ID: (name, output).
    recorded: Vec<(i32, String, Result<String, String>)>,
    /// The sleep ran fresh: its recorded wake-up time depends on when.
    fresh_sleep: bool,
}

/// Replays step `id` if recorded: `Ok(Some(value))` replayed, `Ok(None)`
/// runs fresh, `Err(end)` the workflow fails here.
fn replayed<T: serde::de::DeserializeOwned>(case: &Case, id: i32) -> Result<Option<T>, End> {
    let Some(row) = case.row(id) else {
        return Ok(None);
    };
    let name = NAMES[id as usize];
    if row.name != name {
        return Err(End::Error(format!(
            "non-deterministic workflow: step {id} was recorded as {:?} but the code now calls {name:?}",
            row.name
        )));
    }
    match &row.output {
        Ok(json) => match serde_json::from_str(json) {
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(End::Error(format!(
                "cannot decode recorded output of step {id} ({name:?}): "
            ))),
        },
        Err(message) => Err(End::Error(format!(
            "step {id} ({name:?}) failed: {message}"
        ))),
    }
}

fn oracle(case: &Case) -> Expected {
    let mut runs = [0; 3];
    let mut recorded: Vec<(i32, String, Result<String, String>)> = case
        .rows
        .iter()
        .map(|r| (r.step_id, r.name.clone(), r.output.clone()))
        .collect();
    let mut fresh = |id: i32, out: Result<String, String>| {
        recorded.push((id, NAMES[id as usize].to_owned(), out));
    };
    let end = (|| -> End {
        if !case.registered {
            return End::Unfinished;
        }
        let Ok(n) = serde_json::from_str::<u32>(&case.input) else {
            return End::Error("cannot decode input of workflow \"replay\": ".to_owned());
        };
        let a = match replayed::<u32>(case, 0) {
            Err(end) => return end,
            Ok(Some(a)) => a,
            Ok(None) => {
                runs[0] += 1;
                let a = step_a(n);
                fresh(0, Ok(a.to_string()));
                a
            }
        };
        match replayed::<i64>(case, 1) {
            Err(end) => return end,
            Ok(Some(wake)) if wake > start_ms() + BOUND.as_millis() as i64 => {
                return End::Unfinished;
            }
            Ok(Some(_)) => {}
            // The wake-up time depends on when it ran (see `check`).
            Ok(None) => fresh(1, Ok(String::new())),
        }
        let b = match replayed::<String>(case, 2) {
            Err(end) => return end,
            Ok(Some(b)) => b,
            Ok(None) => {
                runs[1] += 1;
                let b = step_b(a);
                fresh(2, Ok(serde_json::to_string(&b).expect("encodes")));
                b
            }
        };
        let c = match replayed::<Vec<u16>>(case, 3) {
            Err(end) => return end,
            Ok(Some(c)) => c,
            Ok(None) => {
                runs[2] += 1;
                match step_c(a) {
                    Ok(c) => {
                        fresh(3, Ok(serde_json::to_string(&c).expect("encodes")));
                        c
                    }
                    Err(message) => {
                        fresh(3, Err(message.clone()));
                        return End::Error(format!("step 3 (\"c\") failed: {message}"));
                    }
                }
            }
        };
        let d = match replayed::<Option<i32>>(case, 4) {
            Err(end) => return end,
            Ok(Some(d)) => d,
            Ok(None) => {
                fresh(4, Ok("null".to_owned()));
                None
            }
        };
        let out = output(a, &b, &c, d);
        if out.contains('\0') {
            // A replayed NUL (only the memory model can hold one: jsonb
            // refuses it) cannot be stored in the output either.
            return End::Error(
                "output of workflow \"replay\" cannot be stored: it holds a NUL".to_owned(),
            );
        }
        End::Success(out)
    })();
    let fresh_sleep = recorded.iter().any(|r| r.0 == 1) && case.row(1).is_none();
    Expected {
        end,
        runs,
        recorded,
        fresh_sleep,
    }
}

/// Writes the workflow row and its history as the engine's storage
/// operations would have (an execution at epoch 1 on this executor).
async fn write_history(storage: &MemStorage, case: &Case) {
    let mut tx = storage.begin().await.expect("begin");
    let name = if case.registered { "replay" } else { "retired" };
    tx.workflow_insert(WorkflowInsert {
        id: WORKFLOW_ID.to_owned(),
        name: name.to_owned(),
        input: case.input.clone(),
        executor_id: EXECUTOR.to_owned(),
        parent_id: None,
        parent_epoch: None,
        deadline_ms: None,
        version: tandem::storage::DEFAULT_VERSION.to_owned(),
        trace_parent: None,
        now_ms: start_ms() - 60_000,
    })
    .await
    .expect("insert the workflow");
    for row in &case.rows {
        let (output, error) = match &row.output {
            Ok(json) => (Some(json.clone()), None),
            Err(message) => (None, Some(message.clone())),
        };
        tx.step_record(StepRecord {
            version: None,
            workflow_id: WORKFLOW_ID.to_owned(),
            step_id: row.step_id,
            name: row.name.clone(),
            kind: row.kind,
            output,
            error,
            owner_epoch: 1,
            attempts: 1,
            started_ms: start_ms() - 50_000,
            now_ms: start_ms() - 50_000,
        })
        .await
        .expect("record a step");
    }
    tx.commit().await.expect("commit the history");
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = Case::generate(&mut u) else {
        return;
    };
    let expected = oracle(&case);
    let storage = MemStorage::new();
    let runs = Arc::new(Runs::default());
    let rt = runtime();
    let (workflow, ledger) = rt.block_on(async {
        write_history(&storage, &case).await;
        let engine = Engine::builder(storage.clone())
            .env(VirtualEnv::new(0))
            .executor_id(EXECUTOR)
            .poll_interval(Duration::from_secs(1))
            .register(Replayed { runs: runs.clone() })
            .launch()
            .await
            .expect("the engine launches");
        let started = tokio::time::Instant::now();
        loop {
            let status = workflow_of(&storage).status;
            if status.is_terminal() || started.elapsed() >= BOUND {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        engine.shutdown().await;
        (workflow_of(&storage), storage.rows("ledger"))
    });
    check(&case, &expected, &workflow, &runs, &ledger, &storage);
}

fn workflow_of(storage: &MemStorage) -> WorkflowRecord {
    storage
        .workflows()
        .into_iter()
        .find(|w| w.id == WORKFLOW_ID)
        .expect("the workflow row exists")
}

fn check(
    case: &Case,
    expected: &Expected,
    workflow: &WorkflowRecord,
    runs: &Runs,
    ledger: &[(Key, serde_json::Value)],
    storage: &MemStorage,
) {
    let context = || format!("\ncase: {case:#?}\nexpected: {expected:#?}\nworkflow: {workflow:#?}");
    match &expected.end {
        End::Success(out) => {
            assert_eq!(workflow.status, Status::Success, "{}", context());
            let json = serde_json::to_string(out).expect("encodes");
            assert_eq!(
                workflow.output.as_deref(),
                Some(json.as_str()),
                "{}",
                context()
            );
        }
        End::Error(fragment) => {
            assert_eq!(workflow.status, Status::Error, "{}", context());
            let error = workflow.error.as_deref().unwrap_or_default();
            // Stored error messages hold no NUL (PostgreSQL's text cannot).
            let fragment = tandem::payload::error_text(fragment.clone());
            assert!(
                error.contains(fragment.as_str()),
                "error {error:?} lacks {fragment:?}{}",
                context()
            );
        }
        End::Unfinished => {
            assert!(!workflow.status.is_terminal(), "{}", context());
        }
    }
    let ran = [&runs.a, &runs.b, &runs.c].map(|r| r.load(Ordering::SeqCst));
    assert_eq!(ran, expected.runs, "step bodies ran (a, b, c){}", context());
    // The transactional step's write commits with its checkpoint, once.
    assert_eq!(
        ledger.len() as u32,
        expected.runs[1],
        "ledger rows {ledger:?}{}",
        context()
    );
    // Nothing recorded is rewritten, and everything that ran is recorded.
    let mut steps: Vec<_> = storage
        .steps()
        .into_iter()
        .filter(|s| s.workflow_id == WORKFLOW_ID)
        .map(|s| {
            (
                s.step_id,
                s.name,
                s.output.ok_or_else(|| s.error.unwrap_or_default()),
            )
        })
        .collect();
    steps.sort_by_key(|s| s.0);
    let mut want = expected.recorded.clone();
    want.sort_by_key(|s| s.0);
    // A fresh sleep records the wake-up time of the moment it ran: its
    // duration after a moment within the run.
    if let Some(w) = want.iter_mut().find(|w| expected.fresh_sleep && w.0 == 1) {
        let recorded = steps.iter().find(|s| s.0 == 1).map(|s| s.2.clone());
        let wake: i64 = match &recorded {
            Some(Ok(json)) => json.parse().unwrap_or(-1),
            _ => -1,
        };
        let earliest = START_MS + SLEEP.as_millis() as i64;
        assert!(
            (earliest..=earliest + BOUND.as_millis() as i64).contains(&wake),
            "the fresh sleep recorded {recorded:?}{}",
            context()
        );
        w.2 = Ok(wake.to_string());
    }
    assert_eq!(steps, want, "the recorded steps{}", context());
}
