//! Throw-away PostgreSQL servers for tests, examples and benchmarks, and
//! [`CrashTest`], the fault-injection harness for a user's own workflows.
//!
//! [`PgCluster::start`] runs `initdb` and `pg_ctl` into a temporary directory
//! (or uses the server named by `DATABASE_URL`), and [`PgCluster::create_database`]
//! hands out fresh, isolated databases on it. An owned cluster never outlives the
//! process that started it: a small watchdog shell stops it and removes its files
//! when the process exits, however it exits.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tokio::sync::OnceCell;

mod crash;

pub use crash::{
    CrashEnv, CrashScenario, CrashStorage, CrashTest, Failure, FaultKind, PgSource, PointId,
    Report, Schedule, TestFuture,
};

/// Environment variable naming an existing server to use instead of starting one.
const DATABASE_URL: &str = "DATABASE_URL";

/// Environment variable naming a `pgbouncer` binary (1.21 or later): the
/// shared cluster then puts it in front of the server in transaction
/// pooling mode, and every database URL it hands out goes through it
/// (marked `pgbouncer=true`, so that `PgStorage::connect` polls instead
/// of listening through the pooler).
pub const PGBOUNCER: &str = "TANDEM_TEST_PGBOUNCER";

/// The PgBouncer setup for [`PGBOUNCER`]: transaction pooling, with
/// protocol-level prepared statements tracked (sqlx prepares every
/// statement it runs), and idle server connections closed soon, since
/// every test has a database (a pool) of its own.
const PGBOUNCER_SETTINGS: &str = "\
pool_mode = transaction
max_prepared_statements = 500
max_client_conn = 2000
default_pool_size = 10
server_idle_timeout = 2
auth_type = trust
auth_user = postgres
auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename = $1
ignore_startup_parameters = extra_float_digits
listen_addr = 127.0.0.1
unix_socket_dir =
";

/// How many fresh ports to try when another process grabs the one we picked.
const START_ATTEMPTS: usize = 5;

/// Readiness polling: 300 tries 100ms apart, so a slow CI machine gets 30s.
const READY_ATTEMPTS: u32 = 300;
const READY_INTERVAL: Duration = Duration::from_millis(100);

/// How many server log lines a start failure carries.
const LOG_TAIL_LINES: usize = 30;

/// Settings appended to `postgresql.conf`. `fsync` stays on so that numbers
/// measured against this server mean something.
const SERVER_SETTINGS: &str = "\
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 128MB
deadlock_timeout = 100ms
log_min_messages = warning
";

/// Runs in the watchdog `sh`: waits until the test process closes the pipe on
/// its stdin (on drop, or when the kernel closes it because the process died,
/// even by SIGKILL), then stops the server like a crash and deletes its files.
/// Arguments: `$1` temp dir, `$2` data dir, the rest is the `pg_ctl` command
/// (prefixed by `runuser` when running as root).
const WATCHDOG_SCRIPT: &str = r#"
dir=$1
data=$2
shift 2
trap '' HUP INT TERM
cat >/dev/null
[ -f "$dir/pooler/pgbouncer.pid" ] && kill "$(cat "$dir/pooler/pgbouncer.pid")" 2>/dev/null
"$@" -D "$data" -m immediate -w stop >/dev/null 2>&1
rm -rf -- "$dir"
"#;

/// Errors from starting or using a test PostgreSQL server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// No `initdb`/`pg_ctl` on `PATH` nor under `/usr/lib/postgresql/*/bin`.
    #[error(
        "postgresql server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; \
         install postgresql or set DATABASE_URL"
    )]
    PostgresNotFound,
    /// Running as root, but there is no `postgres` OS user to run the server as.
    #[error("running as root, but there is no `postgres` os user to run postgresql as: {0}")]
    NoPostgresUser(String),
    /// A filesystem or process operation failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A helper program exited unsuccessfully.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// The server did not come up.
    #[error("postgresql server did not start: {reason}\nlast lines of {log}:\n{tail}")]
    Start {
        /// Why we gave up.
        reason: String,
        /// Path of the server log.
        log: String,
        /// The last lines of the server log.
        tail: String,
    },
    /// `DATABASE_URL` is not a URL this module can point at another database.
    #[error("database url {0:?} is not of the form scheme://host/database")]
    InvalidUrl(String),
    /// The operation needs a server this process started, not one from `DATABASE_URL`.
    #[error("the server is not owned by this process (it came from DATABASE_URL)")]
    NotOwned,
    /// Talking to the server failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> TestingError {
    let action = action.into();
    move |source| TestingError::Io { action, source }
}

/// A PostgreSQL server for tests: either a throw-away cluster this process started, or the server named by DATABASE_URL.
#[derive(Debug)]
pub struct PgCluster {
    admin_url: String,
    owned: Option<Owned>,
}

/// The parts of a cluster this process started.
#[derive(Debug)]
struct Owned {
    ctl: Ctl,
    port: u16,
    /// Deletion is normally done by the watchdog; `TempDir` is the fallback.
    dir: tempfile::TempDir,
    /// Its stdin is the pipe whose closing tells it to clean up.
    watchdog: Child,
    /// The port of the PgBouncer in front of the server ([`PGBOUNCER`]).
    pooler_port: Option<u16>,
}

/// Everything needed to run `pg_ctl` against one data directory.
#[derive(Debug)]
struct Ctl {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Postgres refuses to run as root, so as root we run it as `postgres`.
    as_postgres: bool,
}

impl Ctl {
    /// A command running `program` from the server's bin dir, as `postgres` if needed.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl_start(&self) -> Command {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"]);
        command
    }

    fn pg_ctl_stop_immediate(&self) -> Command {
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        command
    }

    /// The last lines of the server log, for error messages.
    fn log_tail(&self) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(could not read the log: {e})"),
        }
    }

    fn start_error(&self, reason: impl Into<String>) -> TestingError {
        TestingError::Start {
            reason: reason.into(),
            log: self.log.display().to_string(),
            tail: self.log_tail(),
        }
    }
}

static SHARED: OnceCell<PgCluster> = OnceCell::const_new();
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

impl PgCluster {
    /// Starts a throw-away cluster in a temp dir, unless `DATABASE_URL` is set, in which case it uses that server (and never stops it).
    pub async fn start() -> Result<PgCluster, TestingError> {
        match database_url_from_env() {
            Some(url) => {
                // Fail here, with the URL's server named, rather than in the first test.
                PgConnection::connect(&url).await?.close().await?;
                Ok(PgCluster {
                    admin_url: url,
                    owned: None,
                })
            }
            None => {
                let mut cluster = PgCluster::start_owned().await?;
                if let Some(pgbouncer) = std::env::var_os(PGBOUNCER).filter(|v| !v.is_empty()) {
                    cluster.start_pooler(Path::new(&pgbouncer)).await?;
                }
                Ok(cluster)
            }
        }
    }

    /// Starts PgBouncer (`bin`) in front of this owned server, in
    /// transaction pooling mode; from then on [`PgCluster::create_database`]
    /// returns URLs through it. The admin URL stays direct.
    async fn start_pooler(&mut self, bin: &Path) -> Result<(), TestingError> {
        let owned = self.owned.as_mut().ok_or(TestingError::NotOwned)?;
        // A directory of its own, which the `postgres` user can write to
        // when PgBouncer runs as it.
        let dir = owned.dir.path().join("pooler");
        std::fs::create_dir(&dir).map_err(io_error("creating the pooler dir"))?;
        let (ini, users) = (dir.join("pgbouncer.ini"), dir.join("pgbouncer.users"));
        let port = free_port()?;
        let mut config = format!(
            "[databases]\n* = host=127.0.0.1 port={}\n[pgbouncer]\n{PGBOUNCER_SETTINGS}",
            owned.port
        );
        writeln!(config, "listen_port = {port}").expect("string write");
        for (key, file) in [
            ("auth_file", &users),
            ("logfile", &dir.join("pgbouncer.log")),
            ("pidfile", &dir.join("pgbouncer.pid")),
        ] {
            writeln!(config, "{key} = {}", file.display()).expect("string write");
        }
        std::fs::write(&ini, config).map_err(io_error("writing pgbouncer.ini"))?;
        std::fs::write(&users, "\"postgres\" \"\"\n")
            .map_err(io_error("writing the users file"))?;
        // PgBouncer refuses to run as root, like the server.
        let mut command = if owned.ctl.as_postgres {
            let (uid, gid) = postgres_ids()?;
            for path in [&dir, &ini, &users] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(io_error(format!("chowning {} to postgres", path.display())))?;
            }
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(bin);
            command
        } else {
            Command::new(bin)
        };
        // Daemonized (it detaches from this process once it listens); the
        // watchdog kills it by its pidfile before it stops the server.
        command.arg("-d").arg(&ini);
        run_async(command).await?;
        owned.pooler_port = Some(port);
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        wait_until_ready(&url, &owned.ctl).await
    }

    /// Whether database URLs go through PgBouncer ([`PGBOUNCER`]).
    pub fn is_pooled(&self) -> bool {
        self.owned.as_ref().is_some_and(|o| o.pooler_port.is_some())
    }

    /// `url` (one of [`PgCluster::create_database`]'s) as a direct
    /// connection to the server, bypassing PgBouncer: for what needs a
    /// session, such as LISTEN. The URL itself when not pooled.
    pub fn direct_url(&self, url: &str) -> String {
        match &self.owned {
            Some(Owned {
                port,
                pooler_port: Some(pooler),
                ..
            }) => url
                .replacen(&format!(":{pooler}/"), &format!(":{port}/"), 1)
                .replacen("?pgbouncer=true", "", 1),
            _ => url.to_owned(),
        }
    }

    /// Always starts a throw-away cluster (ignores DATABASE_URL); tests that stop/restart the server use this.
    pub async fn start_owned() -> Result<PgCluster, TestingError> {
        let bin = find_pg_bin().ok_or(TestingError::PostgresNotFound)?;
        let postgres_ids = if current_uid()? == 0 {
            Some(postgres_ids()?)
        } else {
            None
        };

        // Under /tmp rather than $TMPDIR: the socket path must stay under ~100
        // bytes, and as root the `postgres` user must be able to traverse it.
        let dir = tempfile::Builder::new()
            .prefix("tandem-pg-")
            .tempdir_in("/tmp")
            .map_err(io_error("creating a temp dir under /tmp"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io_error("making the temp dir traversable"))?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        let log = dir.path().join("server.log");
        std::fs::create_dir(&data).map_err(io_error("creating the data dir"))?;
        std::fs::create_dir(&socket_dir).map_err(io_error("creating the socket dir"))?;
        std::fs::File::create(&log).map_err(io_error("creating the server log"))?;
        if let Some((uid, gid)) = postgres_ids {
            for path in [&data, &socket_dir, &log] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(io_error(format!("chowning {} to postgres", path.display())))?;
            }
        }

        let ctl = Ctl {
            bin,
            data,
            log,
            as_postgres: postgres_ids.is_some(),
        };
        // The watchdog exists before the server does, so from here on every
        // exit path (an error below drops `cluster`) cleans up.
        let watchdog = spawn_watchdog(dir.path(), &ctl)?;
        let mut cluster = PgCluster {
            admin_url: String::new(),
            owned: Some(Owned {
                ctl,
                port: 0,
                dir,
                watchdog,
                pooler_port: None,
            }),
        };
        let owned = cluster.owned.as_mut().expect("just set");
        let ctl = &owned.ctl;

        let mut initdb = ctl.command("initdb");
        initdb
            .arg("-D")
            .arg(&ctl.data)
            // Trust auth and a fixed superuser name: URLs need no password and
            // do not depend on who runs the tests.
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            // C locale: the machine's LANG may name a locale that is not installed.
            // No sync: the initial files of a throw-away cluster need not
            // survive a machine crash (the running server still fsyncs).
            .args(["--locale=C", "--no-sync"]);
        run_async(initdb).await?;

        let mut settings = String::from("\n# tandem::testing\n");
        settings.push_str(SERVER_SETTINGS);
        let socket_dir = socket_dir.display().to_string().replace('\'', "''");
        writeln!(settings, "unix_socket_directories = '{socket_dir}'").expect("string write");
        append_config(&ctl.data, &settings)?;

        // The port is picked by binding port 0 and letting it go, so another
        // process can take it before the server binds it: retry on a new port.
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = free_port()?;
            append_config(&ctl.data, &format!("port = {port}\n"))?;
            let output = output_async(ctl.pg_ctl_start()).await?;
            if output.status.success() {
                break port;
            }
            let tail = ctl.log_tail();
            let port_taken = tail.contains("could not bind") || tail.contains("already in use");
            if !port_taken || attempt >= START_ATTEMPTS {
                return Err(ctl.start_error(format!(
                    "pg_ctl start exited with {}: {}",
                    output.status,
                    output_text(&output)
                )));
            }
        };
        owned.port = port;
        cluster.admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        wait_until_ready(&cluster.admin_url, ctl).await?;
        Ok(cluster)
    }

    /// Process-wide shared cluster (started once, lazily; `PgCluster::start` semantics), for test binaries where every test wants its own database but not its own server.
    ///
    /// It is never dropped; its watchdog stops it when the process exits.
    pub async fn shared() -> Result<&'static PgCluster, TestingError> {
        SHARED.get_or_try_init(PgCluster::start).await
    }

    /// URL of the admin database (`postgres`) on this server.
    ///
    /// For a server named by `DATABASE_URL` this is `DATABASE_URL` itself, as
    /// that may be the only database the given credentials can reach.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Creates a fresh, uniquely named empty database and returns its URL (names like `tandem_test_<pid>_<counter>`; if DATABASE_URL is used, create it on that server too).
    ///
    /// Databases created on a `DATABASE_URL` server are left there for inspection.
    pub async fn create_database(&self) -> Result<String, TestingError> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        // A server from DATABASE_URL may be shared with other processes, or keep
        // databases from an earlier run with the same pid: skip taken names
        // rather than dropping someone else's database.
        let mut attempts = 0;
        let name = loop {
            attempts += 1;
            let counter = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
            let name = format!("tandem_test_{}_{counter}", std::process::id());
            let sql = format!("CREATE DATABASE \"{name}\"");
            match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut admin).await {
                Ok(_) => break name,
                Err(e) if is_duplicate_database(&e) && attempts < 1000 => continue,
                Err(e) => return Err(e.into()),
            }
        };
        admin.close().await?;
        self.url_for(&name)
    }

    /// The URL of database `name` on this server.
    pub(crate) fn url_for(&self, name: &str) -> Result<String, TestingError> {
        match &self.owned {
            // `pgbouncer=true`: PgStorage::connect then never LISTENs
            // through the pooler.
            Some(Owned {
                pooler_port: Some(pooler),
                ..
            }) => Ok(format!(
                "postgres://postgres@127.0.0.1:{pooler}/{name}?pgbouncer=true"
            )),
            Some(owned) => Ok(format!(
                "postgres://postgres@127.0.0.1:{}/{name}",
                owned.port
            )),
            None => with_database(&self.admin_url, name),
        }
    }

    /// Whether this process owns (started) the server.
    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }

    /// Stops an owned server as a crash would (`pg_ctl -m immediate stop`). Error if not owned.
    pub fn stop_immediate(&self) -> Result<(), TestingError> {
        let owned = self.owned.as_ref().ok_or(TestingError::NotOwned)?;
        run(owned.ctl.pg_ctl_stop_immediate())
    }

    /// Starts an owned server again on the same port and data dir after `stop_immediate`, waiting until it accepts connections.
    pub fn restart(&self) -> Result<(), TestingError> {
        let owned = self.owned.as_ref().ok_or(TestingError::NotOwned)?;
        // `pg_ctl -w` returns only once the server accepts connections, i.e.
        // after crash recovery has finished.
        let mut start = owned.ctl.pg_ctl_start();
        let output = start
            .output()
            .map_err(io_error(format!("running {}", describe(&start))))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(owned.ctl.start_error(format!(
                "pg_ctl start exited with {}: {}",
                output.status,
                output_text(&output)
            )))
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let Some(owned) = &mut self.owned else {
            return;
        };
        // Closing the watchdog's stdin is its signal to stop the server and
        // delete the directory; waiting makes that finished when drop returns.
        drop(owned.watchdog.stdin.take());
        if owned.watchdog.wait().is_err() {
            // No watchdog to do it: clean up here.
            let _ = owned.ctl.pg_ctl_stop_immediate().output();
            let _ = std::fs::remove_dir_all(owned.dir.path());
        }
    }
}

/// The URL of a database to run against: DATABASE_URL if set, otherwise a fresh database on a throw-away cluster kept alive by the returned guard.
pub async fn database() -> Result<(String, Option<PgCluster>), TestingError> {
    if let Some(url) = database_url_from_env() {
        return Ok((url, None));
    }
    let cluster = PgCluster::start_owned().await?;
    let url = cluster.create_database().await?;
    Ok((url, Some(cluster)))
}

fn database_url_from_env() -> Option<String> {
    std::env::var(DATABASE_URL)
        .ok()
        .filter(|url| !url.is_empty())
}

/// Retries connecting until the server answers a query.
// The test harness runs outside the engine's injected environment, so it uses real time.
#[allow(clippy::disallowed_methods)]
async fn wait_until_ready(url: &str, ctl: &Ctl) -> Result<(), TestingError> {
    let mut last_error = None;
    for _ in 0..READY_ATTEMPTS {
        match PgConnection::connect(url).await {
            Ok(mut connection) => {
                sqlx::raw_sql("SELECT 1").execute(&mut connection).await?;
                connection.close().await?;
                return Ok(());
            }
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(READY_INTERVAL).await;
    }
    Err(ctl.start_error(format!(
        "not accepting connections at {url}: {}",
        last_error.map_or_else(String::new, |e| e.to_string())
    )))
}

/// Spawns the watchdog shell (see [`WATCHDOG_SCRIPT`]) for a cluster in `dir`.
fn spawn_watchdog(dir: &Path, ctl: &Ctl) -> Result<Child, TestingError> {
    let stop = ctl.command("pg_ctl");
    let mut command = Command::new("sh");
    command
        .args(["-c", WATCHDOG_SCRIPT, "tandem-pg-watchdog"])
        .arg(dir)
        .arg(&ctl.data)
        .arg(stop.get_program())
        .args(stop.get_args())
        .stdin(Stdio::piped())
        // Not holding the test's stdout/stderr open: a pipe reader (CI log
        // capture, `| tee`) would otherwise wait for the watchdog too.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a Ctrl-C or `timeout` aimed at the test's
        // group cannot kill it before it has cleaned up.
        .process_group(0);
    command
        .spawn()
        .map_err(io_error("spawning the cluster watchdog (sh)"))
}

/// Finds the directory holding `initdb` and `pg_ctl`: `PATH` first, then the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian does not put them on `PATH`).
fn find_pg_bin() -> Option<PathBuf> {
    let has_tools =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| has_tools(dir))
    {
        return Some(dir);
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    versions
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The effective uid of this process, from `id -u` (no libc here).
fn current_uid() -> Result<u32, TestingError> {
    let mut id = Command::new("id");
    id.arg("-u");
    let output = id.output();
    parse_id(&id, &run_output(output, &id)?)
}

/// The uid and gid of the `postgres` OS user.
fn postgres_ids() -> Result<(u32, u32), TestingError> {
    let lookup = |flag: &str| {
        let mut id = Command::new("id");
        id.args([flag, "postgres"]);
        let output = id.output().map_err(io_error("running `id`"))?;
        if !output.status.success() {
            return Err(TestingError::NoPostgresUser(output_text(&output)));
        }
        parse_id(&id, &output)
    };
    Ok((lookup("-u")?, lookup("-g")?))
}

fn parse_id(command: &Command, output: &Output) -> Result<u32, TestingError> {
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| TestingError::Command {
            command: describe(command),
            status: output.status.to_string(),
            output: format!("unexpected output: {}", output_text(output)),
        })
}

/// Picks a currently free TCP port on 127.0.0.1.
fn free_port() -> Result<u16, TestingError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(io_error("binding a tcp port to find a free one"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("reading the bound port"))?
        .port();
    Ok(port)
}

/// Appends to `postgresql.conf`; later lines override earlier ones.
fn append_config(data: &Path, text: &str) -> Result<(), TestingError> {
    let path = data.join("postgresql.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(io_error(format!("appending to {}", path.display())))
}

/// `url` with its path replaced by `/database`, keeping any query string.
fn with_database(url: &str, database: &str) -> Result<String, TestingError> {
    let invalid = || TestingError::InvalidUrl(url.to_owned());
    let authority_start = url.find("://").ok_or_else(invalid)? + 3;
    let rest = &url[authority_start..];
    let authority_end = authority_start + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = &url[authority_end..];
    let path_end = authority_end + rest.find(['?', '#']).unwrap_or(rest.len());
    Ok(format!(
        "{}/{database}{}",
        &url[..authority_end],
        &url[path_end..]
    ))
}

fn is_duplicate_database(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "42P04")
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn output_text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr.trim());
    }
    text
}

/// Checks a finished command's output, turning failures into errors.
fn run_output(output: io::Result<Output>, command: &Command) -> Result<Output, TestingError> {
    let output = output.map_err(io_error(format!("running {}", describe(command))))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(TestingError::Command {
            command: describe(command),
            status: output.status.to_string(),
            output: output_text(&output),
        })
    }
}

fn run(mut command: Command) -> Result<(), TestingError> {
    let output = command.output();
    run_output(output, &command).map(drop)
}

/// Runs a command without blocking the async runtime; any exit status is returned.
async fn output_async(command: Command) -> Result<Output, TestingError> {
    let description = describe(&command);
    tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_error(format!("running {description}")))
}

async fn run_async(command: Command) -> Result<(), TestingError> {
    let description = describe(&command);
    let output = output_async(command).await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TestingError::Command {
            command: description,
            status: output.status.to_string(),
            output: output_text(&output),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead as _;

    async fn connect(url: &str) -> PgConnection {
        PgConnection::connect(url).await.expect("connect")
    }

    #[tokio::test]
    async fn started_cluster_accepts_a_query() {
        let cluster = PgCluster::start_owned().await.unwrap();
        assert!(cluster.is_owned());
        let mut connection = connect(cluster.admin_url()).await;
        let (answer, database): (i32, String) = sqlx::query_as("SELECT 6 * 7, current_database()")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!((answer, database.as_str()), (42, "postgres"));
        let settings: (String, String, String) = sqlx::query_as(
            "SELECT current_setting('max_connections'), current_setting('deadlock_timeout'), current_setting('fsync')",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(settings, ("200".into(), "100ms".into(), "on".into()));
    }

    #[tokio::test]
    async fn created_databases_are_distinct_and_isolated() {
        let cluster = PgCluster::shared().await.unwrap();
        let first = cluster.create_database().await.unwrap();
        let second = cluster.create_database().await.unwrap();
        assert_ne!(first, second);

        let mut a = connect(&first).await;
        let mut b = connect(&second).await;
        let name_a: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut a)
            .await
            .unwrap();
        assert!(name_a.starts_with("tandem_test_"), "{name_a}");
        sqlx::raw_sql("CREATE TABLE only_in_first (x int)")
            .execute(&mut a)
            .await
            .unwrap();
        let visible_in_second: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('only_in_first')::text")
                .fetch_one(&mut b)
                .await
                .unwrap();
        assert_eq!(visible_in_second, None);
        let visible_in_first: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('only_in_first')::text")
                .fetch_one(&mut a)
                .await
                .unwrap();
        assert_eq!(visible_in_first.as_deref(), Some("only_in_first"));
    }

    #[tokio::test]
    async fn committed_data_survives_an_immediate_stop_and_restart() {
        let cluster = PgCluster::start_owned().await.unwrap();
        let url = cluster.create_database().await.unwrap();
        let mut connection = connect(&url).await;
        sqlx::raw_sql("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
            .execute(&mut connection)
            .await
            .unwrap();

        cluster.stop_immediate().unwrap();
        assert!(
            sqlx::raw_sql("SELECT 1")
                .execute(&mut connection)
                .await
                .is_err()
        );
        assert!(PgConnection::connect(&url).await.is_err());

        cluster.restart().unwrap();
        let mut connection = connect(&url).await;
        let x: i32 = sqlx::query_scalar("SELECT x FROM t")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(x, 7);
    }

    #[tokio::test]
    async fn drop_stops_the_server_and_removes_its_files() {
        let cluster = PgCluster::start_owned().await.unwrap();
        let url = cluster.admin_url().to_owned();
        let dir = cluster.owned.as_ref().unwrap().dir.path().to_owned();
        assert!(dir.join("data/postgresql.conf").exists());
        drop(cluster);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(PgConnection::connect(&url).await.is_err());
    }

    #[tokio::test]
    async fn a_server_from_database_url_cannot_be_stopped() {
        let cluster = PgCluster {
            admin_url: "postgres://elsewhere/postgres".into(),
            owned: None,
        };
        assert!(!cluster.is_owned());
        assert!(matches!(
            cluster.stop_immediate(),
            Err(TestingError::NotOwned)
        ));
        assert!(matches!(cluster.restart(), Err(TestingError::NotOwned)));
    }

    #[test]
    fn database_urls_are_rewritten_keeping_the_rest() {
        let cases = [
            ("postgres://u:p@h:5432/db", "postgres://u:p@h:5432/x"),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/x?sslmode=disable",
            ),
            ("postgresql://h", "postgresql://h/x"),
            ("postgres://h?a=b", "postgres://h/x?a=b"),
            (
                "postgres:///db?host=/run/postgresql",
                "postgres:///x?host=/run/postgresql",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "x").unwrap(), expected, "{url}");
        }
        assert!(with_database("not a url", "x").is_err());
    }

    /// Env var that turns [`child_holds_a_cluster`] from a no-op into the
    /// child half of [`cluster_dies_with_a_killed_process`].
    const CHILD_ENV: &str = "TANDEM_TESTING_HOLD_CLUSTER";

    /// Child half: starts a cluster, reports it, and waits to be SIGKILLed.
    // Real sleeping is fine in the test harness, which runs outside the engine's injected environment.
    #[allow(clippy::disallowed_methods)]
    #[tokio::test]
    async fn child_holds_a_cluster() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let cluster = PgCluster::start_owned().await.unwrap();
        let dir = cluster
            .owned
            .as_ref()
            .unwrap()
            .dir
            .path()
            .display()
            .to_string();
        println!("HOLDING {} {dir}", cluster.admin_url());
        io::stdout().flush().unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    // Polling for the watchdog's cleanup needs real time; the harness runs outside the engine's injected environment.
    #[allow(clippy::disallowed_methods)]
    #[tokio::test]
    async fn cluster_dies_with_a_killed_process() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "testing::tests::child_holds_a_cluster",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .env_remove(DATABASE_URL)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = io::BufReader::new(child.stdout.take().unwrap());
        let line = stdout
            .lines()
            .map(Result::unwrap)
            .find(|line| line.starts_with("HOLDING "))
            .expect("the child reports its cluster");
        let mut fields = line.split(' ').skip(1);
        let (url, dir) = (
            fields.next().unwrap(),
            PathBuf::from(fields.next().unwrap()),
        );
        connect(url).await.close().await.unwrap();

        child.kill().unwrap(); // SIGKILL: no destructors run.
        child.wait().unwrap();

        let mut gone = false;
        for _ in 0..200 {
            if !dir.exists() && PgConnection::connect(url).await.is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            gone,
            "cluster at {url} ({}) outlived its process",
            dir.display()
        );
    }
}
