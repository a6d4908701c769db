//! Plain steps per second on the memory backend (the MVCC model the
//! simulator runs on): one workflow running many plain steps, each a
//! checkpoint commit through the model's MVCC machinery, on one core.
//! Target: at least 100,000 steps/s, so that simulations run thousands of
//! seeds per minute. Run: `cargo bench -p benches --bench memory`.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tandem::{Engine, MemStorage, Workflow, WorkflowContext, WorkflowError};

/// Runs `n` plain steps, each returning its index.
struct PlainSteps;

impl Workflow<MemStorage> for PlainSteps {
    const NAME: &'static str = "plain-steps";
    type Input = u64;
    type Output = u64;

    async fn run(
        &self,
        ctx: &mut WorkflowContext<MemStorage>,
        n: u64,
    ) -> Result<u64, WorkflowError> {
        let mut sum = 0;
        for i in 0..n {
            sum += ctx
                .step("step", || async move { Ok::<_, std::io::Error>(i) })
                .await?;
        }
        Ok(sum)
    }
}

/// The wall time of one workflow of `steps` plain steps on a fresh model.
async fn run(steps: u64) -> Duration {
    let engine = Engine::builder(MemStorage::new())
        .register(PlainSteps)
        .launch()
        .await
        .expect("launch on the memory backend");
    let start = Instant::now();
    let handle = engine
        .start::<PlainSteps>(steps)
        .await
        .expect("start the workflow");
    let sum = handle.result().await.expect("the workflow finishes");
    let elapsed = start.elapsed();
    assert_eq!(sum, steps * steps.saturating_sub(1) / 2);
    engine.shutdown().await;
    elapsed
}

fn plain_steps(c: &mut Criterion) {
    // One core: a current-thread runtime, as the simulator uses.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));
    group.bench_function("plain_step", |b| {
        b.iter_custom(|iters| runtime.block_on(run(iters)));
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    plain_steps(&mut criterion);
    criterion.final_summary();
}
