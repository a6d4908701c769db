//! The server the benchmarks run on, what they print about it, and the
//! `pg_stat_*` counters they read.
//!
//! The server is a throw-away cluster from `tandem::testing` (fsync on,
//! default commit settings), or the one `DATABASE_URL` names. Every benchmark
//! gets a fresh database on it, so per-database counters belong to one
//! workload.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};
use tandem::testing::PgCluster;

/// The PostgreSQL server under test.
#[derive(Debug)]
pub struct Server {
    cluster: PgCluster,
}

impl Server {
    /// Starts a throw-away cluster, or connects to `DATABASE_URL`'s server.
    pub async fn start() -> anyhow::Result<Server> {
        let cluster = PgCluster::start()
            .await
            .context("starting PostgreSQL (install the server binaries or set DATABASE_URL)")?;
        Ok(Server { cluster })
    }

    /// A fresh, empty database; returns its URL.
    pub async fn database(&self) -> anyhow::Result<String> {
        Ok(self.cluster.create_database().await?)
    }

    /// A fresh database with the tandem schema migrated, and a storage
    /// on it set up as `PgStorage::connect` does.
    pub async fn migrated_storage(&self) -> anyhow::Result<tandem::PgStorage> {
        use tandem::Storage as _;
        let storage = tandem::PgStorage::connect(&self.database().await?).await?;
        storage.migrate().await?;
        Ok(storage)
    }

    /// The admin database's URL. Counters are read through it so that the
    /// reads do not count as commits of the database under test.
    pub fn admin_url(&self) -> &str {
        self.cluster.admin_url()
    }

    /// The cluster itself (for `tandem::testing::CrashTest`).
    pub fn cluster(&self) -> &PgCluster {
        &self.cluster
    }

    /// Whether the server is a throw-away one this process started.
    pub fn is_owned(&self) -> bool {
        self.cluster.is_owned()
    }

    /// The process ID of the server's postmaster (the parent of every
    /// backend), if it runs on this machine and `/proc` can be read. Other
    /// clusters on a shared machine run `postgres` processes too; CPU is
    /// counted for this one's only through [`CpuTicks::of_cluster`].
    pub async fn postmaster_pid(&self) -> anyhow::Result<Option<u32>> {
        let mut admin = PgConnection::connect(self.admin_url()).await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut admin)
            .await?;
        admin.close().await?;
        let stat = read_proc(&format!("/proc/{backend}/stat"));
        // `pid (comm) state ppid ...`
        Ok(stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse().ok()))
    }

    /// A counter reader on the admin database.
    pub async fn counters(&self) -> anyhow::Result<CounterReader> {
        Ok(CounterReader {
            admin: PgConnection::connect(self.admin_url()).await?,
            flush_commits: Default::default(),
        })
    }

    /// The machine and server settings, as printed at the start of a run
    /// and recorded in docs/benchmarks.md.
    pub async fn describe(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        writeln!(out, "## Machine and settings")?;
        let cpu = read_proc("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory = read_proc("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        writeln!(out, "- cpu: {cpu}, {cores} cores available")?;
        writeln!(out, "- memory: {memory}")?;
        writeln!(
            out,
            "- kernel: {}",
            read_proc("/proc/sys/kernel/osrelease").trim()
        )?;
        writeln!(out, "- load average at start: {}", load_average())?;
        let mut admin = PgConnection::connect(self.admin_url()).await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut admin)
            .await?;
        let origin = if self.is_owned() {
            "throw-away cluster started by tandem::testing"
        } else {
            "server from DATABASE_URL"
        };
        writeln!(out, "- postgresql {version} ({origin})")?;
        let settings: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1) ORDER BY name",
        )
        .bind(SETTINGS)
        .fetch_all(&mut admin)
        .await?;
        let settings: Vec<String> = settings
            .into_iter()
            .map(|(name, value, unit)| match unit {
                Some(unit) if unit != "bool" => format!("{name}={value}{unit}"),
                _ => format!("{name}={value}"),
            })
            .collect();
        writeln!(out, "- settings: {}", settings.join(", "))?;
        admin.close().await?;
        Ok(out)
    }
}

/// The server settings that decide what a commit costs, printed with every run.
const SETTINGS: &[&str] = &[
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "commit_delay",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_connections",
    "max_wal_size",
    "checkpoint_timeout",
];

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    read_proc("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The name of the database in a `scheme://host/database?...` URL.
pub fn database_name(url: &str) -> anyhow::Result<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .split_once('/')
        .map(|(_, path)| path)
        .context("database url has no database name")?;
    let name = path.split(['?', '#']).next().unwrap_or_default();
    anyhow::ensure!(!name.is_empty(), "database url has no database name: {url}");
    Ok(name.to_owned())
}

/// Cumulative counters for one database (commits) and the cluster (WAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// `pg_stat_database.xact_commit` of the database: every committed
    /// transaction, read-only ones included.
    pub commits: i64,
    /// `pg_stat_wal.wal_sync`: WAL flushes to disk (fdatasync) by any
    /// process of the cluster, the walwriter included.
    pub wal_syncs: i64,
    /// `pg_stat_wal.wal_write`: WAL writes (not necessarily flushed).
    pub wal_writes: i64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;

    fn sub(self, earlier: Counters) -> Counters {
        Counters {
            commits: self.commits - earlier.commits,
            wal_syncs: self.wal_syncs - earlier.wal_syncs,
            wal_writes: self.wal_writes - earlier.wal_writes,
        }
    }
}

/// Reads [`Counters`] through a connection to the admin database.
#[derive(Debug)]
pub struct CounterReader {
    admin: PgConnection,
    /// Per database, the commits that [`CounterReader::snapshot`]'s own
    /// flushes added so far; snapshots leave them out.
    flush_commits: std::collections::HashMap<String, i64>,
}

/// How long the counters must stay unchanged before they count as settled:
/// long enough for the walwriter's and exiting backends' reports to land.
/// It cannot cover an idle backend's lazy flush (see [`flush_pool`]).
const SETTLE_STABLE: Duration = Duration::from_millis(600);
const SETTLE_POLL: Duration = Duration::from_millis(150);
const SETTLE_MAX: Duration = Duration::from_secs(15);

/// Makes every connection of `pool` flush its pending statistics now, and
/// returns how many it flushed (each flush is itself one committed
/// `SELECT`, which the caller subtracts).
///
/// PostgreSQL 15 backends report commits and WAL counts lazily: at most once
/// a second, and a backend that goes idle less than a second after its last
/// report waits up to 10 s (`PGSTAT_IDLE_INTERVAL`) before reporting again.
/// A pool's idle connections would thus hide up to 10 s of work from
/// `pg_stat_database`. `pg_stat_force_next_flush()` makes the calling
/// backend report at the end of its statement, so it is run on every idle
/// connection, all held at once so that each is a distinct backend.
///
/// Only idle ones: a running engine holds one connection of its pool for
/// good (the `LISTEN` connection for wake-ups, which commits nothing after
/// its `LISTEN`) and may be using others, so waiting for `pool.size()`
/// connections would wait for the pool's acquire timeout and fail (issue
/// 20). A connection busy at that moment is missed: the engine's are busy
/// only for a claim poll or a heartbeat, a few commits within the noise.
pub async fn flush_pool(pool: &sqlx::PgPool) -> anyhow::Result<u64> {
    let mut held = Vec::new();
    while let Some(conn) = pool.try_acquire() {
        held.push(conn);
    }
    for conn in &mut held {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut **conn)
            .await
            .context("pg_stat_force_next_flush() (needs PostgreSQL 15 or later)")?;
    }
    Ok(held.len() as u64)
}

impl CounterReader {
    /// The counters as the statistics system shows them right now.
    pub async fn read(&mut self, database: &str) -> anyhow::Result<Counters> {
        let (commits, wal_syncs, wal_writes): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = $1),
                    wal_sync, wal_write
               FROM pg_stat_wal",
        )
        .bind(database)
        .fetch_one(&mut self.admin)
        .await
        .with_context(|| format!("reading pg_stat_database for {database}"))?;
        Ok(Counters {
            commits,
            wal_syncs,
            wal_writes,
        })
    }

    /// The counters of `database` after flushing `pool`'s pending statistics
    /// ([`flush_pool`]), leaving out the commits of such flushes. Take one
    /// before and one after a workload whose connections all belong to
    /// `pool` (or have exited) and subtract.
    pub async fn snapshot(
        &mut self,
        database: &str,
        pool: &sqlx::PgPool,
    ) -> anyhow::Result<Counters> {
        let flushed = flush_pool(pool).await?;
        let total = self.flush_commits.entry(database.to_owned()).or_default();
        *total += i64::try_from(flushed)?;
        let total = *total;
        let mut counters = self.settled(database).await?;
        counters.commits -= total;
        Ok(counters)
    }

    /// The counters once they stop changing for [`SETTLE_STABLE`]. Call it
    /// when the workload's connections are closed or were flushed with
    /// [`flush_pool`].
    pub async fn settled(&mut self, database: &str) -> anyhow::Result<Counters> {
        let start = Instant::now();
        let mut last = self.read(database).await?;
        let mut stable_since = Instant::now();
        while stable_since.elapsed() < SETTLE_STABLE && start.elapsed() < SETTLE_MAX {
            tokio::time::sleep(SETTLE_POLL).await;
            let now = self.read(database).await?;
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        Ok(last)
    }
}

/// CPU time used so far, in clock ticks (1/100 s on Linux): by this process,
/// and by all running `postgres` processes together (backends that exited
/// are not counted, so take both readings while the workload's connections
/// are open).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    /// This process (the benchmark and the engine in it).
    pub bench: u64,
    /// The PostgreSQL server's processes.
    pub postgres: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on
/// every Linux architecture that matters here).
pub const TICKS_PER_SECOND: f64 = 100.0;

impl CpuTicks {
    /// Reads `/proc`. Zeroes where it cannot be read (not Linux).
    pub fn now() -> CpuTicks {
        CpuTicks::sample(None, false)
    }

    /// Like [`CpuTicks::now`], but `postgres` counts only the cluster whose
    /// postmaster is `postmaster` ([`Server::postmaster_pid`]) and its
    /// children, not other clusters running on the same machine.
    pub fn of_cluster(postmaster: Option<u32>) -> CpuTicks {
        CpuTicks::sample(postmaster, false)
    }

    /// Like [`CpuTicks::of_cluster`], with this process's child processes
    /// (other than PostgreSQL's) counted in `bench`: executors the bench
    /// started. A child that exited before the reading is not counted.
    pub fn of_cluster_and_children(postmaster: Option<u32>) -> CpuTicks {
        CpuTicks::sample(postmaster, true)
    }

    fn sample(postmaster: Option<u32>, children: bool) -> CpuTicks {
        let own = std::process::id();
        let mut ticks = CpuTicks::default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ticks;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`: comm may hold spaces, so split
            // after its closing parenthesis; utime and stime are fields 14
            // and 15, i.e. the 12th and 13th after the parenthesis.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let used = fields
                .get(11)
                .and_then(|u| u.parse::<u64>().ok())
                .unwrap_or(0)
                + fields
                    .get(12)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
            let ppid = fields.get(1).and_then(|p| p.parse::<u32>().ok());
            let in_cluster = postmaster.is_none_or(|p| pid == p || ppid == Some(p));
            if head.ends_with("(postgres") {
                if in_cluster {
                    ticks.postgres += used;
                }
            } else if pid == own || (children && ppid == Some(own)) {
                ticks.bench += used;
            }
        }
        ticks
    }
}

impl std::ops::Sub for CpuTicks {
    type Output = CpuTicks;

    fn sub(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            bench: self.bench.saturating_sub(earlier.bench),
            postgres: self.postgres.saturating_sub(earlier.postgres),
        }
    }
}
