//! Bad input gets a clear, typed error and leaves nothing half-written.

use std::marker::PhantomData;

use tandem::storage::Storage;
use tandem::{Engine, Error, Workflow, WorkflowContext, WorkflowError};

use crate::support::{self, App, Bank, Transfer, both};

both!(
    rejected_starts_write_nothing,
    an_oversized_step_output_fails_the_step_and_rolls_back_its_writes,
    nul_characters_fail_cleanly_and_ids_count_characters,
);

/// Echoes its input through a transactional step that writes a ledger row
/// and returns `input` repeated `times` times.
struct Echo<A>(PhantomData<fn() -> A>);

impl<A> Echo<A> {
    fn new() -> Self {
        Echo(PhantomData)
    }
}

impl<A: App, S: Storage<Conn = <A::Storage as Storage>::Conn>> Workflow<S> for Echo<A> {
    const NAME: &'static str = "echo";
    type Input = (String, usize);
    type Output = String;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<S>,
        (text, times): (String, usize),
    ) -> Result<String, WorkflowError> {
        let id = ctx.workflow_id().to_owned();
        let repeated = ctx
            .transaction("repeat", async move |tx| {
                A::apply(tx, &id, "repeat", 0, 1).await?;
                Ok::<_, A::Error>(text.repeat(times))
            })
            .await;
        match repeated {
            Ok(s) => Ok(s),
            // A failed step can be handled; here the workflow returns the
            // output a second way to check the workflow-level limit too.
            Err(e) => Ok(format!("step failed: {e}").repeat(times)),
        }
    }
}

async fn engine<A: App>(payload_max_bytes: usize) -> (Engine<A::Storage>, Bank<A>) {
    let (storage, bank) = support::bank::<A>().await;
    let engine = Engine::builder(storage)
        .payload_max_bytes(payload_max_bytes)
        .register(Echo::<A>::new())
        .register(Transfer {
            app: bank.app.clone(),
        })
        .launch()
        .await
        .unwrap();
    (engine, bank)
}

async fn assert_nothing_written<A: App>(bank: &Bank<A>) {
    assert_eq!(bank.workflow_count().await, 0);
    assert_eq!(bank.app.steps().await.len(), 0);
    assert_eq!(bank.ledger_rows(None).await, 0);
}

async fn rejected_starts_write_nothing<A: App>() {
    let (engine, bank) = engine::<A>(200).await;
    let check = async |name: &str, id: Option<&str>, input: &str, expect: &str| {
        let err = engine
            .start_json(name, id.map(str::to_owned), input)
            .await
            .expect_err(input);
        assert!(err.to_string().contains(expect), "{name} {input}: {err}");
        err
    };
    let err = check("nope", None, "{}", "unknown workflow \"nope\"").await;
    assert!(matches!(err, Error::UnknownWorkflow { .. }));
    let err = check(
        "transfer",
        None,
        "{\"from\": 1,",
        "cannot decode input of workflow \"transfer\"",
    )
    .await;
    assert!(matches!(err, Error::Decode { .. }));
    check(
        "transfer",
        None,
        "{\"from\": \"one\", \"to\": 2, \"amount\": 3}",
        "invalid type",
    )
    .await;
    check(
        "transfer",
        None,
        "{\"to\": 2, \"amount\": 3}",
        "missing field `from`",
    )
    .await;
    check("echo", None, "[\"x\", -1]", "invalid value").await;
    let big = format!("[\"{}\", 1]", "x".repeat(300));
    let err = check("echo", None, &big, "over the limit of 200 bytes").await;
    assert!(matches!(err, Error::PayloadTooLarge { size, max: 200, .. } if size == big.len()));
    check("echo", Some(""), "[\"x\", 1]", "invalid workflow ID").await;
    check(
        "echo",
        Some(&"i".repeat(300)),
        "[\"x\", 1]",
        "invalid workflow ID",
    )
    .await;
    check("echo", Some("a\0b"), "[\"x\", 1]", "invalid workflow ID").await;
    // jsonb cannot hold NUL: refused up front on every backend (PostgreSQL
    // alone would fail the insert with 22P05).
    let err = check("echo", None, "[\"a\\u0000\", 1]", "NUL").await;
    assert!(matches!(err, Error::UnstorablePayload { .. }), "{err}");
    assert_nothing_written(&bank).await;

    let err = engine
        .handle::<String>("missing")
        .result()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkflowNotFound { .. }), "{err}");
    engine.shutdown().await;
}

async fn an_oversized_step_output_fails_the_step_and_rolls_back_its_writes<A: App>() {
    let (engine, bank) = engine::<A>(200).await;
    // The step's output (250 bytes) is over the limit: its transaction rolls
    // back, and the failure is recorded as the step's outcome.
    let handle = engine.start::<Echo<A>>(("y".repeat(50), 5)).await.unwrap();
    let err = handle.result().await.unwrap_err();
    // The workflow's own output (the failure text repeated) is over the limit
    // too, so the workflow ends in ERROR with that message.
    assert!(
        matches!(&err, Error::WorkflowFailed { message, .. } if message.contains("output of workflow \"echo\"") && message.contains("over the limit")),
        "{err}"
    );
    assert_eq!(
        bank.ledger_rows(None).await,
        0,
        "the step's write rolled back"
    );
    let steps = bank.steps_of(handle.workflow_id()).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].output, None);
    let error = steps[0].error.clone().unwrap();
    assert!(
        error.contains("output of step 0 (\"repeat\") is 252 bytes"),
        "{error}"
    );

    // Within the limit, the same workflow succeeds and applies its write.
    let ok = engine.start::<Echo<A>>(("z".into(), 3)).await.unwrap();
    assert_eq!(ok.result().await.unwrap(), "zzz");
    assert_eq!(bank.ledger_rows(None).await, 1);
    engine.shutdown().await;
}

/// A step that returns a string holding a NUL character (`true`), or fails
/// with an error message holding one (`false`).
struct Nul;

impl<S: Storage> Workflow<S> for Nul {
    const NAME: &'static str = "nul";
    type Input = bool;
    type Output = String;

    async fn run(&self, ctx: &mut WorkflowContext<S>, ok: bool) -> Result<String, WorkflowError> {
        ctx.step("nul", || async move {
            if ok {
                Ok("a\0b".to_owned())
            } else {
                Err(std::io::Error::other("bad\0byte"))
            }
        })
        .await
    }
}

/// PostgreSQL's `text` and `jsonb` cannot hold NUL. Found by the
/// `enqueue_args` and `payload_decode` fuzz targets' rules: the memory model
/// stored such values while PostgreSQL refused them, so a step output or a
/// failure message with a NUL would have failed the very write that records
/// it. Now both backends behave alike: a NUL in a step's output fails the
/// step with a clear error, a NUL in a failure message is stored as U+FFFD,
/// and workflow IDs are measured in characters, as the SQL function does.
async fn nul_characters_fail_cleanly_and_ids_count_characters<A: App>() {
    let (storage, bank) = support::bank::<A>().await;
    let engine = Engine::builder(storage)
        .register(Echo::<A>::new())
        .register(Nul)
        .launch()
        .await
        .unwrap();
    // A step output holding NUL: the step fails with a clear error.
    let handle = engine.start::<Nul>(true).await.unwrap();
    let err = handle.result().await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkflowFailed { message, .. }
            if message.contains("output of step 0 (\"nul\") cannot be stored") && message.contains("NUL")),
        "{err}"
    );

    // A failure message holding NUL is recorded, NUL replaced.
    let handle = engine.start::<Nul>(false).await.unwrap();
    let err = handle.result().await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkflowFailed { message, .. } if message.contains("bad\u{fffd}byte")),
        "{err}"
    );
    let steps = bank.steps_of(handle.workflow_id()).await;
    assert_eq!(steps[0].error.as_deref(), Some("bad\u{fffd}byte"));

    // 200 two-byte characters: 400 bytes, a valid ID on both paths.
    let id = "é".repeat(200);
    let handle = engine
        .start_with_id::<Echo<A>>(&id, ("c".into(), 2))
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), "cc");
    engine.shutdown().await;
}
