//! Bad input gets a clear, typed error and leaves nothing half-written.

use sqlx::PgConnection;
use tandem::storage::Storage;
use tandem::{Engine, Error, PgStorage, Workflow, WorkflowContext, WorkflowError};

use crate::support::{self, Bank, Transfer, apply};

/// Echoes its input through a transactional step that writes a ledger row
/// and returns `input` repeated `times` times.
struct Echo;

impl<S: Storage<Conn = PgConnection>> Workflow<S> for Echo {
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
                apply(tx, &id, "repeat", 0, 1).await?;
                Ok::<_, sqlx::Error>(text.repeat(times))
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

async fn engine(payload_max_bytes: usize) -> (Engine<PgStorage>, Bank) {
    let (storage, bank) = support::bank().await;
    let engine = Engine::builder(storage)
        .payload_max_bytes(payload_max_bytes)
        .register(Echo)
        .register(Transfer {
            notifications: bank.pool.clone(),
        })
        .launch()
        .await
        .unwrap();
    (engine, bank)
}

async fn assert_nothing_written(bank: &Bank) {
    assert_eq!(
        bank.scalar("SELECT count(*) FROM tandem.workflows").await,
        0
    );
    assert_eq!(bank.scalar("SELECT count(*) FROM tandem.steps").await, 0);
    assert_eq!(bank.scalar("SELECT count(*) FROM ledger").await, 0);
}

#[tokio::test]
async fn rejected_starts_write_nothing() {
    let (engine, bank) = engine(200).await;
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
    assert_nothing_written(&bank).await;

    let err = engine
        .handle::<String>("missing")
        .result()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkflowNotFound { .. }), "{err}");
    engine.shutdown().await;
}

#[tokio::test]
async fn an_oversized_step_output_fails_the_step_and_rolls_back_its_writes() {
    let (engine, bank) = engine(200).await;
    // The step's output (250 bytes) is over the limit: its transaction rolls
    // back, and the failure is recorded as the step's outcome.
    let handle = engine.start::<Echo>(("y".repeat(50), 5)).await.unwrap();
    let err = handle.result().await.unwrap_err();
    // The workflow's own output (the failure text repeated) is over the limit
    // too, so the workflow ends in ERROR with that message.
    assert!(
        matches!(&err, Error::WorkflowFailed { message, .. } if message.contains("output of workflow \"echo\"") && message.contains("over the limit")),
        "{err}"
    );
    assert_eq!(
        bank.scalar("SELECT count(*) FROM ledger").await,
        0,
        "the step's write rolled back"
    );
    let step: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT output::text, error FROM tandem.steps WHERE workflow_id = $1")
            .bind(handle.workflow_id())
            .fetch_one(&bank.pool)
            .await
            .unwrap();
    assert_eq!(step.0, None);
    assert!(
        step.1
            .unwrap()
            .contains("output of step 0 (\"repeat\") is 252 bytes")
    );

    // Within the limit, the same workflow succeeds and applies its write.
    let ok = engine.start::<Echo>(("z".into(), 3)).await.unwrap();
    assert_eq!(ok.result().await.unwrap(), "zzz");
    assert_eq!(bank.scalar("SELECT count(*) FROM ledger").await, 1);
    engine.shutdown().await;
}
