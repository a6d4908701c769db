//! The outbox benchmark: what `tandem.enqueue_workflow` costs the application
//! transaction that calls it (with and without NOTIFY, next to the same
//! transaction without the enqueue), how long an enqueued workflow waits
//! before an executor starts it (NOTIFY vs polling), and how fast one
//! executor drains a backlog. Run: `cargo bench -p benches --bench outbox`
//! (about 2 minutes after the build).
//!
//! Not criterion: the figures that matter are ratios between variants, so
//! the transaction rates come from short timed segments interleaved in
//! rotating order (drift in the shared machine's load then hits every
//! variant alike), and the latencies are percentiles over individual
//! workflows, which criterion does not report. Nothing is asserted.
//! Without `--bench` (as `cargo test --benches` runs it) every phase runs
//! once, briefly, as a smoke test.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benches::report;
use benches::server::{
    CounterReader, Counters, CpuTicks, Server, TICKS_PER_SECOND, database_name, load_average,
};
use benches::workloads::wait_succeeded;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use tandem::{Engine, EnqueueOptions, PgStorage, Workflow, WorkflowContext, WorkflowError};

/// Concurrent application clients in the transaction-rate phase.
const CLIENTS: [usize; 3] = [1, 8, 32];

/// How long the phases run: full length with `--bench`, a smoke test without.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Interleaved rounds per client count; each round runs every variant once.
    rounds: usize,
    /// Length of one timed segment (one variant, one round).
    segment: Duration,
    /// Length of the extra segment per variant that counters and CPU are
    /// read around (reading them settles for 0.6 s or more, too slow to do
    /// around every timed segment).
    counted: Duration,
    /// Untimed warm-up per client count (connections opened, plans cached).
    warmup: Duration,
    /// Measured workflows per latency variant.
    latency_samples: usize,
    /// Workflows in the drained backlog.
    drain_workflows: u64,
}

const FULL: Plan = Plan {
    rounds: 6,
    segment: Duration::from_millis(800),
    counted: Duration::from_millis(1200),
    warmup: Duration::from_millis(500),
    latency_samples: 300,
    drain_workflows: 5000,
};

const SMOKE: Plan = Plan {
    rounds: 1,
    segment: Duration::from_millis(200),
    counted: Duration::from_millis(200),
    warmup: Duration::from_millis(100),
    latency_samples: 5,
    drain_workflows: 50,
};

/// Enqueued workflows before the measured ones in a latency run: the first
/// claims also open the engine's pool connections.
const LATENCY_WARMUP: usize = 5;
/// Gap between two enqueues of a latency run: uniform in this range, so
/// that enqueues do not fall into step with the executor's poll.
const LATENCY_GAP_MS: (u64, u64) = (20, 40);
/// Give up waiting for enqueued workflows to start after this long.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Input of [`ProcessOrder`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderInput {
    order_id: i64,
}

/// The enqueued workflow. Its body does nothing, so the latency phase
/// measures the queue (commit, wake-up, claim) and the drain phase the queue
/// machinery (claim and completion) without any step of the application's.
#[derive(Debug)]
struct ProcessOrder;

impl Workflow<PgStorage> for ProcessOrder {
    const NAME: &'static str = "bench.process_order";
    type Input = OrderInput;
    type Output = i64;

    async fn run(
        &self,
        _ctx: &mut WorkflowContext<PgStorage>,
        input: OrderInput,
    ) -> Result<i64, WorkflowError> {
        Ok(input.order_id)
    }
}

/// What the application transaction does besides inserting its order row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    /// Only the order row: the floor.
    Floor,
    /// The order row and an enqueue, with `notify_on_enqueue` on.
    Notify,
    /// The order row and an enqueue, with `notify_on_enqueue` off.
    Quiet,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Floor, Variant::Notify, Variant::Quiet];

    fn name(self) -> &'static str {
        match self {
            Variant::Floor => "insert only (floor)",
            Variant::Notify => "insert + enqueue, NOTIFY",
            Variant::Quiet => "insert + enqueue, no NOTIFY",
        }
    }
}

/// An application's transaction: `BEGIN`, the order row, the enqueue (the
/// documented Rust path, `PgStorage::enqueue_in`, which runs
/// `SELECT tandem.enqueue_workflow($1, .., $8)`), `COMMIT`.
async fn order_transaction(conn: &mut PgConnection, variant: Variant) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    let order_id: i64 = sqlx::query_scalar("INSERT INTO orders (note) VALUES ('x') RETURNING id")
        .fetch_one(&mut *tx)
        .await?;
    if variant != Variant::Floor {
        PgStorage::enqueue_in::<ProcessOrder>(
            &mut tx,
            &OrderInput { order_id },
            EnqueueOptions::default(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Runs `clients` clients, each on a connection of its own doing
/// [`order_transaction`] back to back, for `duration`. Returns the
/// transactions committed and the wall time until the last one finished.
async fn segment(
    pool: &PgPool,
    clients: usize,
    variant: Variant,
    duration: Duration,
) -> anyhow::Result<(u64, Duration)> {
    // Connections first, so that the timed part only runs transactions.
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(pool.acquire().await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        tasks.spawn(async move {
            let mut committed = 0u64;
            while Instant::now() < deadline {
                order_transaction(&mut conn, variant).await?;
                committed += 1;
            }
            anyhow::Ok((committed, conn))
        });
    }
    let mut committed = 0;
    let mut conns = Vec::with_capacity(clients);
    while let Some(result) = tasks.join_next().await {
        let (n, conn) = result??;
        committed += n;
        conns.push(conn);
    }
    let elapsed = start.elapsed();
    // Back in the pool before the next counter snapshot: a dropped
    // connection returns asynchronously, and one still on its way back
    // would be missed by `flush_pool` (which opens a new connection
    // instead), its commits then reported up to 10 s late.
    for mut conn in conns {
        conn.return_to_pool().await;
    }
    Ok((committed, elapsed))
}

async fn notify_set(pool: &PgPool, on: bool) -> anyhow::Result<()> {
    // The row `EngineBuilder::notify_on_enqueue` writes at launch; the SQL
    // function reads it in every call.
    let mut conn = pool.acquire().await?;
    sqlx::query("UPDATE tandem.settings SET value = $1 WHERE key = 'notify_on_enqueue'")
        .bind(on.to_string())
        .execute(&mut *conn)
        .await?;
    // Synchronously back in the pool, for the reason given in `segment`.
    conn.return_to_pool().await;
    Ok(())
}

/// One variant's figures at one client count.
#[derive(Debug, Default)]
struct Rate {
    /// Transactions over all timed rounds.
    transactions: u64,
    /// Wall time of all timed rounds.
    elapsed: Duration,
    /// Each round's rate, in round order.
    rounds: Vec<f64>,
    /// Transactions of the counted segment.
    counted: u64,
    /// Counter deltas around the counted segment.
    counters: Counters,
    /// CPU around the counted segment.
    cpu: CpuTicks,
}

impl Rate {
    fn tps(&self) -> Option<f64> {
        (!self.elapsed.is_zero()).then(|| self.transactions as f64 / self.elapsed.as_secs_f64())
    }
}

/// Phase 1: application transactions per second for every variant and
/// client count, on a fresh database with a listener on `tandem_work` (an
/// executor would hold one; NOTIFY then signals a real listener).
async fn rates(
    server: &Server,
    counters: &mut CounterReader,
    postmaster: Option<u32>,
    plan: Plan,
) -> anyhow::Result<HashMap<(usize, Variant), Rate>> {
    let url = server.database().await?;
    let database = database_name(&url)?;
    // An engine launch migrates the database and registers the workflow name
    // (which the SQL function validates against); it then stops, so that no
    // executor claims the enqueued workflows and competes for the CPU.
    let engine = engine_launch(&url, "rates-setup", true, Duration::from_secs(1)).await?;
    engine_close(engine).await;
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(CLIENTS[CLIENTS.len() - 1] + 1)?)
        .test_before_acquire(false)
        .connect(&url)
        .await?;
    sqlx::raw_sql("CREATE TABLE orders (id bigserial PRIMARY KEY, note text)")
        .execute(&pool)
        .await?;

    let mut listener = PgListener::connect(&url).await?;
    listener.listen("tandem_work").await?;
    let notifications = Arc::new(AtomicU64::new(0));
    let received = Arc::clone(&notifications);
    let draining = tokio::spawn(async move {
        while listener.recv().await.is_ok() {
            received.fetch_add(1, Ordering::Relaxed);
        }
    });

    let mut rates: HashMap<(usize, Variant), Rate> = HashMap::new();
    let mut rotation = 0;
    for clients in CLIENTS {
        for variant in Variant::ALL {
            notify_set(&pool, variant == Variant::Notify).await?;
            segment(&pool, clients, variant, plan.warmup).await?;
        }
        for _ in 0..plan.rounds {
            for k in 0..Variant::ALL.len() {
                let variant = Variant::ALL[(rotation + k) % Variant::ALL.len()];
                notify_set(&pool, variant == Variant::Notify).await?;
                let (transactions, elapsed) =
                    segment(&pool, clients, variant, plan.segment).await?;
                let rate = rates.entry((clients, variant)).or_default();
                rate.transactions += transactions;
                rate.elapsed += elapsed;
                rate.rounds
                    .push(transactions as f64 / elapsed.as_secs_f64());
            }
            rotation += 1;
        }
        // One snapshot between counted segments, not two: a segment's delta
        // then includes the settings UPDATE before it, one commit, which is
        // subtracted.
        let mut before = counters.snapshot(&database, &pool).await?;
        for variant in Variant::ALL {
            notify_set(&pool, variant == Variant::Notify).await?;
            let cpu_before = CpuTicks::of_cluster(postmaster);
            let (transactions, _) = segment(&pool, clients, variant, plan.counted).await?;
            let cpu = CpuTicks::of_cluster(postmaster) - cpu_before;
            let after = counters.snapshot(&database, &pool).await?;
            let rate = rates.entry((clients, variant)).or_default();
            rate.counted = transactions;
            rate.counters = after - before;
            rate.counters.commits -= 1;
            rate.cpu = cpu;
            before = after;
            println!(
                "rates: {clients:>2} clients, {:<28} {:>7.0} tx/s",
                variant.name(),
                rate.tps().unwrap_or(0.0)
            );
        }
    }
    draining.abort();
    println!(
        "rates: the listener received {} notifications",
        notifications.load(Ordering::Relaxed)
    );
    pool.close().await;
    Ok(rates)
}

/// An engine serving the default queue with [`ProcessOrder`] registered,
/// on the pool `PgStorage::connect` sets up (20 connections).
async fn engine_launch(
    url: &str,
    executor_id: &str,
    notify: bool,
    queue_poll_interval: Duration,
) -> anyhow::Result<Engine<PgStorage>> {
    let storage = PgStorage::connect(url).await?;
    let engine = Engine::builder(storage)
        .executor_id(executor_id)
        .register(ProcessOrder)
        .notify_on_enqueue(notify)
        .queue_poll_interval(queue_poll_interval)
        .launch()
        .await?;
    Ok(engine)
}

async fn engine_close(engine: Engine<PgStorage>) {
    engine.shutdown().await;
    engine.storage().pool().close().await;
}

/// A small deterministic generator for the gaps between enqueues.
struct Jitter(u64);

impl Jitter {
    fn next_ms(&mut self, (low, high): (u64, u64)) -> u64 {
        // xorshift64: good enough to decorrelate enqueues from polls.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low + 1)
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One latency variant's samples, in milliseconds.
#[derive(Debug)]
struct Latency {
    label: &'static str,
    notify: bool,
    poll: Duration,
    /// `started_at` minus the instant the client saw its COMMIT return.
    from_commit_ms: Vec<f64>,
    /// `started_at` minus `created_at` (the enqueuing transaction's start).
    from_created_ms: Vec<f64>,
    /// How long the client waited for COMMIT.
    commit_ms: Vec<f64>,
}

/// Phase 2: enqueue-to-start latency. One engine (fresh for each variant)
/// serves the default queue; one client enqueues workflows one at a time,
/// each in an order transaction, with a random 20-40 ms gap.
async fn latency(
    url: &str,
    label: &'static str,
    notify: bool,
    poll: Duration,
    samples: usize,
) -> anyhow::Result<Latency> {
    let engine = engine_launch(url, &format!("latency-{label}"), notify, poll).await?;
    let mut client = PgConnection::connect(url).await?;
    let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15);
    let mut ids = Vec::with_capacity(samples);
    let mut committed_at = Vec::with_capacity(samples);
    let mut commit_ms = Vec::with_capacity(samples);
    for i in 0..LATENCY_WARMUP + samples {
        let id = format!("latency-{label}-{i}");
        let mut tx = client.begin().await?;
        let order_id: i64 =
            sqlx::query_scalar("INSERT INTO orders (note) VALUES ('x') RETURNING id")
                .fetch_one(&mut *tx)
                .await?;
        PgStorage::enqueue_in::<ProcessOrder>(
            &mut tx,
            &OrderInput { order_id },
            EnqueueOptions::default().workflow_id(id.clone()),
        )
        .await?;
        let before_commit = Instant::now();
        tx.commit().await?;
        // The instant the application learns that its transaction
        // committed; the commit itself happened in the round trip before.
        let now = SystemTime::now();
        if i >= LATENCY_WARMUP {
            ids.push(id);
            committed_at.push(unix_seconds(now));
            commit_ms.push(before_commit.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(jitter.next_ms(LATENCY_GAP_MS))).await;
    }
    let waited = Instant::now();
    loop {
        let started: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tandem.workflows WHERE id = ANY($1) AND started_at IS NOT NULL",
        )
        .bind(&ids)
        .fetch_one(&mut client)
        .await?;
        if usize::try_from(started)? == ids.len() {
            break;
        }
        anyhow::ensure!(
            waited.elapsed() < START_TIMEOUT,
            "latency {label}: only {started} of {} enqueued workflows started within {START_TIMEOUT:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stamps: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT id, extract(epoch FROM started_at)::float8, extract(epoch FROM created_at)::float8
           FROM tandem.workflows WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut client)
    .await?;
    let stamps: HashMap<String, (f64, f64)> = stamps
        .into_iter()
        .map(|(id, started, created)| (id, (started, created)))
        .collect();
    let mut from_commit_ms = Vec::with_capacity(ids.len());
    let mut from_created_ms = Vec::with_capacity(ids.len());
    for (id, committed) in ids.iter().zip(&committed_at) {
        let (started, created) = stamps[id];
        from_commit_ms.push((started - committed) * 1000.0);
        from_created_ms.push((started - created) * 1000.0);
    }
    client.close().await?;
    engine_close(engine).await;
    Ok(Latency {
        label,
        notify,
        poll,
        from_commit_ms,
        from_created_ms,
        commit_ms,
    })
}

/// The `p`th percentile (nearest rank) of `samples`.
fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Phase 3's result.
#[derive(Debug)]
struct Drain {
    workflows: u64,
    /// From the first claim to the last completion, by the database's clock.
    span: Duration,
    /// From the engine's launch until the bench saw every workflow finished.
    wall: Duration,
    counters: Counters,
    cpu: CpuTicks,
}

/// Phase 3: a backlog of `workflows` committed in one transaction, then one
/// executor (default `worker_concurrency` 64, NOTIFY on) drains it.
async fn drain(
    url: &str,
    counters: &mut CounterReader,
    postmaster: Option<u32>,
    workflows: u64,
) -> anyhow::Result<Drain> {
    let database = database_name(url)?;
    let mut client = PgConnection::connect(url).await?;
    // The backlog, in one statement (the name was registered by the latency
    // phase's engines on this database).
    sqlx::query(
        "SELECT count(tandem.enqueue_workflow('bench.process_order',
                                              jsonb_build_object('order_id', g),
                                              workflow_id => 'drain-' || g))
           FROM generate_series(1, $1) g",
    )
    .bind(i64::try_from(workflows)?)
    .execute(&mut client)
    .await?;
    client.close().await?;
    let mut watcher = PgConnection::connect(url).await?;
    let before = counters.settled(&database).await?;
    let cpu_before = CpuTicks::of_cluster(postmaster);
    let start = Instant::now();
    let engine = engine_launch(url, "drain", true, Duration::from_secs(1)).await?;
    let every = Duration::from_millis(50);
    let polls = wait_succeeded(
        &mut watcher,
        "drain-",
        workflows,
        every,
        start,
        START_TIMEOUT,
    )
    .await?;
    let wall = start.elapsed();
    let cpu = CpuTicks::of_cluster(postmaster) - cpu_before;
    let span: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(completed_at) - min(started_at))::float8
           FROM tandem.workflows WHERE id LIKE 'drain-%'",
    )
    .fetch_one(&mut watcher)
    .await?;
    watcher.close().await?;
    // Stopped first: the claim loop's listener holds a pool connection,
    // which `snapshot` could not acquire with the pool at its maximum.
    engine.shutdown().await;
    let pool = engine.storage().pool().clone();
    // Every connection back and idle, for the reason given in `segment`.
    let idle_wait = Instant::now();
    while pool.num_idle() < pool.size() as usize && idle_wait.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut delta = counters.snapshot(&database, &pool).await? - before;
    pool.close().await;
    // The watcher's polls (and the span query) are the bench's, not the
    // engine's.
    delta.commits -= polls + 1;
    Ok(Drain {
        workflows,
        span: Duration::from_secs_f64(span.max(0.0)),
        wall,
        counters: delta,
        cpu,
    })
}

fn main() -> anyhow::Result<()> {
    // A smoke run (see `benches::bench_mode`) uses the small plan.
    let plan = if benches::bench_mode() { FULL } else { SMOKE };
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start())?;
    println!("{}", rt.block_on(server.describe())?);
    println!("- plan: {plan:?}\n");
    let mut counters = rt.block_on(server.counters())?;

    // Each phase prints its table when it ends, so that a later failure
    // does not lose the earlier figures.
    let postmaster = rt.block_on(server.postmaster_pid())?;
    let rates = rt.block_on(rates(&server, &mut counters, postmaster, plan))?;
    print_rates(&rates);

    let latency_url = rt.block_on(server.database())?;
    rt.block_on(async {
        // The first launch migrates the database; the orders table is the
        // application's, so it is created next to tandem's.
        let engine =
            engine_launch(&latency_url, "latency-setup", true, Duration::from_secs(1)).await?;
        engine_close(engine).await;
        let mut conn = PgConnection::connect(&latency_url).await?;
        sqlx::raw_sql("CREATE TABLE orders (id bigserial PRIMARY KEY, note text)")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        anyhow::Ok(())
    })?;
    let variants: [(&'static str, bool, Duration); 3] = [
        ("notify", true, Duration::from_secs(1)),
        ("poll-1s", false, Duration::from_secs(1)),
        ("poll-100ms", false, Duration::from_millis(100)),
    ];
    let mut latencies = Vec::new();
    for (label, notify, poll) in variants {
        println!("latency: {label} ({} samples)", plan.latency_samples);
        latencies.push(rt.block_on(latency(
            &latency_url,
            label,
            notify,
            poll,
            plan.latency_samples,
        ))?);
    }

    print_latencies(&latencies);

    println!("drain: {} workflows", plan.drain_workflows);
    let drained = rt.block_on(drain(
        &latency_url,
        &mut counters,
        postmaster,
        plan.drain_workflows,
    ))?;
    print_drain(&drained);
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

fn cpu_ms(ticks: u64, units: u64) -> Option<f64> {
    report::per(i64::try_from(ticks).unwrap_or(i64::MAX), units)
        .map(|t| t * 1000.0 / TICKS_PER_SECOND)
}

/// `a ÷ b` over all rounds, with the range of the per-round ratios (each
/// round ran both variants back to back).
fn ratio_with_range(a: Option<&Rate>, b: Option<&Rate>) -> String {
    let (Some(a), Some(b)) = (a, b) else {
        return "n/a".into();
    };
    let per_round: Vec<f64> = a.rounds.iter().zip(&b.rounds).map(|(x, y)| x / y).collect();
    let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    let high = per_round.iter().copied().fold(0.0, f64::max);
    format!("{} ({low:.2}-{high:.2})", report::ratio(a.tps(), b.tps()))
}

fn print_rates(rates: &HashMap<(usize, Variant), Rate>) {
    println!("\n## Outbox: application transactions per second\n");
    let get = |clients, variant| rates.get(&(clients, variant));
    let tps = |clients, variant| get(clients, variant).and_then(Rate::tps);
    let mut rows = Vec::new();
    for clients in CLIENTS {
        rows.push(vec![
            clients.to_string(),
            report::number(tps(clients, Variant::Floor)),
            report::number(tps(clients, Variant::Notify)),
            report::number(tps(clients, Variant::Quiet)),
            ratio_with_range(get(clients, Variant::Notify), get(clients, Variant::Floor)),
            ratio_with_range(get(clients, Variant::Quiet), get(clients, Variant::Floor)),
            ratio_with_range(get(clients, Variant::Notify), get(clients, Variant::Quiet)),
        ]);
    }
    print!(
        "{}",
        report::table(
            &[
                "clients",
                "insert only tx/s",
                "+ enqueue, NOTIFY tx/s",
                "+ enqueue, no NOTIFY tx/s",
                "NOTIFY ÷ floor (rounds)",
                "no NOTIFY ÷ floor (rounds)",
                "NOTIFY ÷ no NOTIFY (rounds)",
            ],
            &rows
        )
    );
    println!();
    let mut rows = Vec::new();
    for clients in CLIENTS {
        for variant in Variant::ALL {
            let Some(rate) = get(clients, variant) else {
                continue;
            };
            let n = rate.counted;
            let low = rate.rounds.iter().copied().fold(f64::INFINITY, f64::min);
            let high = rate.rounds.iter().copied().fold(0.0, f64::max);
            rows.push(vec![
                clients.to_string(),
                variant.name().to_owned(),
                report::number(rate.tps()),
                format!("{low:.0}-{high:.0}"),
                report::number(report::per(rate.counters.commits, n)),
                report::number(report::per(rate.counters.wal_syncs, n)),
                report::number(cpu_ms(rate.cpu.postgres, n)),
                report::number(cpu_ms(rate.cpu.bench, n)),
            ]);
        }
    }
    print!(
        "{}",
        report::table(
            &[
                "clients",
                "transaction",
                "tx/s",
                "rounds' range",
                "commits/tx",
                "WAL flushes/tx",
                "postgres CPU ms/tx",
                "bench process CPU ms/tx",
            ],
            &rows
        )
    );
}

fn print_latencies(latencies: &[Latency]) {
    println!("\n## Outbox: enqueue-to-start latency (ms)\n");
    let rows: Vec<Vec<String>> = latencies
        .iter()
        .map(|l| {
            vec![
                l.label.to_owned(),
                if l.notify { "on" } else { "off" }.to_owned(),
                format!("{:?}", l.poll),
                l.from_commit_ms.len().to_string(),
                report::number(percentile(&l.from_commit_ms, 50.0)),
                report::number(percentile(&l.from_commit_ms, 99.0)),
                report::number(percentile(&l.from_commit_ms, 100.0)),
                report::number(percentile(&l.from_created_ms, 50.0)),
                report::number(percentile(&l.from_created_ms, 99.0)),
                report::number(percentile(&l.commit_ms, 50.0)),
            ]
        })
        .collect();
    print!(
        "{}",
        report::table(
            &[
                "variant",
                "NOTIFY",
                "queue_poll_interval",
                "samples",
                "p50 from commit",
                "p99 from commit",
                "max from commit",
                "p50 from created_at",
                "p99 from created_at",
                "COMMIT round trip p50",
            ],
            &rows
        )
    );
}

fn print_drain(d: &Drain) {
    println!("\n## Outbox: draining a backlog (one executor, worker_concurrency 64)\n");
    let rate = d.workflows as f64 / d.span.as_secs_f64().max(1e-9);
    print!(
        "{}",
        report::table(
            &[
                "workflows",
                "first start to last completion",
                "workflows/s",
                "launch to all seen done",
                "commits/wf",
                "WAL flushes/wf",
                "postgres CPU ms/wf",
                "bench process CPU ms/wf",
            ],
            &[vec![
                d.workflows.to_string(),
                format!("{:.2} s", d.span.as_secs_f64()),
                report::number(Some(rate)),
                format!("{:.2} s", d.wall.as_secs_f64()),
                report::number(report::per(d.counters.commits, d.workflows)),
                report::number(report::per(d.counters.wal_syncs, d.workflows)),
                report::number(cpu_ms(d.cpu.postgres, d.workflows)),
                report::number(cpu_ms(d.cpu.bench, d.workflows)),
            ]]
        )
    );
}
