//! The PostgreSQL backend (sqlx). All of Tandem's SQL lives in this file and
//! in `migrations/`.
//!
//! Every statement runs under READ COMMITTED. Timestamps that only record
//! history (`created_at`, `updated_at`) arrive from the engine as
//! milliseconds since the epoch (`now_ms`).
//!
//! Decisions shared between executors use the database's clock instead, so
//! that executors whose clocks drift still agree: lease expiry, and the
//! `started_at` / `completed_at` stamps that queue admission (rate limits)
//! reads. Those stamps are taken at statement time (`clock_timestamp()`),
//! which also orders them consistently with the claims' admission
//! decisions.
//!
//! Delays (`run_after`) are compared with the engine's clock, like durable
//! sleeps, so that an injected clock drives them.
//!
//! What both backends must agree on (error classification, the fencing
//! error, limits, epochs) is in `storage::contract`; this backend imports
//! nothing from the engine above the storage seam.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row};
use std::str::FromStr;
use std::time::Duration;

use super::intercept::{Hook, Interceptor, Phase, Tap, Verdict};
use super::{
    ErrorKind, EventInfo, ExecutorInfo, ExecutorRegister, GcCount, Listener, MessageInfo,
    QueueInfo, QueueLimits, ScheduleDecl, ScheduleState, Status, StepInfo, StepKind, StepRecord,
    StepRecorded, StepRow, Storage, StorageError, StorageResult, Transaction, WorkflowComplete,
    WorkflowEnqueue, WorkflowFilter, WorkflowFork, WorkflowInfo, WorkflowInsert, WorkflowInserted,
    WorkflowRow, WorkflowsClaim, WorkflowsGc, WorkflowsRecover, classify_sqlstate, contract,
    fenced,
};
use std::sync::Arc;

/// The embedded migrations (`migrations/` at the workspace root).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Where sqlx records which of Tandem's migrations ran. It lives in Tandem's
/// own schema so it never collides with the application's `_sqlx_migrations`.
const MIGRATIONS_TABLE: &str = "tandem._sqlx_migrations";

/// The retention statement: finished roots older than their queue's
/// retention (or `$1` ms, for every queue), oldest first, then `$roots`
/// (a LIMIT and lock, or nothing for a dry run); their trees; the roots of
/// trees with an unfinished member (`live`); then `$doomed` defines
/// `doomed` (the workflow IDs that go) and `s`, `m`, `e` (their steps,
/// messages and events), whose counts it returns with the roots'.
macro_rules! gc_statement {
    ($roots:literal, $doomed:literal) => {
        concat!(
            "WITH RECURSIVE roots AS (
                 SELECT w.id FROM tandem.workflows w
                   JOIN tandem.queues q ON q.name = w.queue
                  WHERE w.parent_id IS NULL
                    AND w.status IN ('SUCCESS', 'ERROR', 'CANCELLED')
                    AND w.completed_at < clock_timestamp()
                        - COALESCE($1::bigint, q.retention_ms) * interval '1 millisecond'
                  ORDER BY w.completed_at ",
            $roots,
            "),
             tree AS (
                 SELECT r.id, r.id AS root FROM roots r
                 UNION ALL
                 SELECT c.id, t.root FROM tandem.workflows c JOIN tree t ON c.parent_id = t.id
             ),
             live AS (
                 SELECT DISTINCT t.root FROM tree t JOIN tandem.workflows w ON w.id = t.id
                  WHERE w.status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED')
             ),
             ",
            $doomed,
            "
             SELECT (SELECT count(*) FROM roots), (SELECT count(*) FROM doomed),
                    (SELECT count(*) FROM s), (SELECT count(*) FROM m), (SELECT count(*) FROM e)"
        )
    };
}

/// Schedule rows with the database clock, as `schedule_from_row` reads
/// them, then `$tail` (a WHERE or ORDER BY clause).
macro_rules! schedule_select {
    ($tail:literal) => {
        concat!(
            "SELECT name, workflow_name, cron, time_zone, queue, catch_up, catch_up_max, grace_ms,
                    paused, cursor_ms, last_tick_ms, updated_ms, tandem.clock_ms()
               FROM tandem.schedules ",
            $tail
        )
    };
}

/// The columns `workflow_from_row` reads, in order (a macro so that queries
/// stay `&'static str` literals).
macro_rules! workflow_columns {
    () => {
        "id, name, status, input::text, output::text, error, executor_id, owner_epoch, queue, \
         parent_id, (extract(epoch FROM deadline_at) * 1000)::bigint, app_version, trace_parent"
    };
}

/// The same columns qualified by the alias `w`, for statements that join.
macro_rules! prefixed_workflow_columns {
    () => {
        "w.id, w.name, w.status, w.input::text, w.output::text, w.error, w.executor_id, \
         w.owner_epoch, w.queue, w.parent_id, (extract(epoch FROM w.deadline_at) * 1000)::bigint, \
         w.app_version, w.trace_parent"
    };
}

/// The management columns after the workflow columns.
/// The WHERE conditions of a [`WorkflowFilter`] but its status, on
/// parameters $2..$7 (bound by [`bind_filter`]).
macro_rules! filter_where {
    () => {
        "($2::text IS NULL OR name = $2)
         AND ($3::text IS NULL OR queue = $3)
         AND ($4::bigint IS NULL OR created_at >= to_timestamp($4::float8 / 1000))
         AND ($5::bigint IS NULL OR created_at < to_timestamp($5::float8 / 1000))
         AND ($6::text IS NULL OR app_version = $6)
         AND ($7::text IS NULL OR parent_id = $7)"
    };
}

macro_rules! info_columns {
    () => {
        concat!(
            workflow_columns!(),
            ", priority, (extract(epoch FROM created_at) * 1000)::bigint, \
             (extract(epoch FROM updated_at) * 1000)::bigint, \
             (extract(epoch FROM started_at) * 1000)::bigint, \
             (extract(epoch FROM completed_at) * 1000)::bigint, concurrency_key"
        )
    };
}

/// The claim's test of a ready row of queue `$1` with a name in `$2` at
/// engine time `$3` (ms), of a version in the parameter `$versions`: one
/// text for every statement that looks for claimable rows.
macro_rules! ready_rows {
    ($versions:literal) => {
        concat!(
            "status = 'ENQUEUED' AND queue = $1 AND name = ANY($2)
                AND (run_after IS NULL OR run_after <= to_timestamp($3::float8 / 1000))
                AND (app_version IS NULL OR app_version = ANY(",
            $versions,
            "))"
        )
    };
}

/// Workflow storage in a PostgreSQL database, usually the application's own.
#[derive(Debug, Clone)]
pub struct PgStorage {
    pool: PgPool,
    hook: Hook,
    wakeups: Wakeups,
}

/// `url` without a `pgbouncer=true` parameter, and whether it had one.
fn without_pooler_flag(url: &str) -> (String, bool) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), false);
    };
    let (flags, rest): (Vec<&str>, Vec<&str>) = query
        .split('&')
        .partition(|p| p.eq_ignore_ascii_case("pgbouncer=true"));
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, !flags.is_empty())
}

/// Where an executor listens for `NOTIFY tandem_work`.
#[derive(Debug, Clone)]
enum Wakeups {
    /// On a connection of the pool: a direct connection to the server.
    Pool,
    /// On a connection of its own to this URL: the pool goes through a
    /// pooler in transaction mode, which would hand a LISTENing server
    /// connection to other clients.
    Url(Arc<str>),
    /// Nowhere: executors poll every `queue_poll_interval`.
    Off,
}

impl PgStorage {
    /// Connects a pool to `url` with settings suited to the engine: a short
    /// acquire timeout, so that a database outage surfaces as a retryable
    /// error instead of a long stall, and no ping before each acquire (a dead
    /// connection fails its first statement, which the engine retries).
    ///
    /// A URL with `pgbouncer=true` among its parameters (the convention
    /// Prisma's URLs use) names a pooler in transaction mode: the
    /// parameter is taken out, and this storage never LISTENs through it
    /// (see [`PgStorage::listen_url`]): executors poll unless told where to
    /// listen.
    pub async fn connect(url: &str) -> StorageResult<Self> {
        let (url, pooled) = without_pooler_flag(url);
        let options = PgConnectOptions::from_str(&url).map_err(map_err)?;
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        let storage = Self::from_pool(pool);
        Ok(if pooled {
            storage.without_listen()
        } else {
            storage
        })
    }

    /// Uses an existing pool, for example the application's own.
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            hook: Hook::default(),
            wakeups: Wakeups::Pool,
        }
    }

    /// Listens for wake-ups (`NOTIFY tandem_work`, sent by every enqueue)
    /// on a connection of its own to `url` instead of one of the pool's:
    /// for a pool that goes through a pooler in transaction mode (PgBouncer's
    /// `pool_mode = transaction`). There a LISTEN stays with the server
    /// connection it ran on, which the pooler hands to other clients, and
    /// the notifications then arrive in the middle of their statements
    /// (sqlx fails them: "unexpected message: NotificationResponse").
    /// `url` is a direct connection to the server, or a pooler database in
    /// session mode (docs/deployment.md).
    pub fn listen_url(mut self, url: &str) -> Self {
        self.wakeups = Wakeups::Url(without_pooler_flag(url).0.into());
        self
    }

    /// Does not listen for wake-ups: executors find new work by polling
    /// every `queue_poll_interval` (a claim statement each time), and work
    /// enqueued elsewhere starts up to that late. For a pool behind a
    /// transaction-mode pooler with no direct connection to the server.
    pub fn without_listen(mut self) -> Self {
        self.wakeups = Wakeups::Off;
        self
    }

    /// This storage with every engine statement and commit reported to
    /// `interceptor`, which may inject faults (for crash tests; see
    /// [`storage::intercept`](super::intercept)). Autocommit operations then
    /// run as transactions of one statement, so that each has a commit to
    /// intercept.
    pub fn with_interceptor(&self, interceptor: Arc<dyn Interceptor>) -> Self {
        Self {
            pool: self.pool.clone(),
            hook: Hook::new(interceptor),
            wakeups: self.wakeups.clone(),
        }
    }

    /// Another storage on `pool` that listens where this one does, with
    /// no interceptor: a new process's handle on the same database.
    #[cfg(feature = "testing")]
    pub(crate) fn with_pool(&self, pool: PgPool) -> Self {
        Self {
            pool,
            hook: Hook::default(),
            wakeups: self.wakeups.clone(),
        }
    }

    /// The pool, for the application's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl PgStorage {
    /// The application versions of the unfinished runs and of the live
    /// executors, with how many runs of each wait or run and how many live
    /// executors accept each (for `tandem versions`). Not part of the
    /// [`Storage`] seam: the engine never needs it.
    pub async fn versions_info(&self) -> StorageResult<Vec<VersionInfo>> {
        // Unfinished runs only: both statuses have a partial index, so the
        // finished runs, the vast majority, are never read.
        let rows: Vec<(Option<String>, i64, i64, i64, i64)> = sqlx::query_as(
            "WITH live AS (
                 SELECT app_version, accepts FROM tandem.executors
                  WHERE lease_expires_at > clock_timestamp()
             ), runs AS (
                 SELECT app_version,
                        count(*) FILTER (WHERE status = 'ENQUEUED') AS enqueued,
                        count(*) FILTER (WHERE status = 'RUNNING') AS running
                   FROM tandem.workflows
                  WHERE status IN ('ENQUEUED', 'RUNNING')
                  GROUP BY app_version
             ), versions AS (
                 SELECT app_version FROM runs
                  UNION SELECT app_version FROM live WHERE app_version IS NOT NULL
             )
             SELECT v.app_version,
                    COALESCE(r.enqueued, 0), COALESCE(r.running, 0),
                    (SELECT count(*) FROM live l
                      WHERE v.app_version IS NULL OR v.app_version = ANY(l.accepts)),
                    (SELECT count(*) FROM live l WHERE l.app_version = v.app_version)
               FROM versions v LEFT JOIN runs r
                 ON r.app_version IS NOT DISTINCT FROM v.app_version
              ORDER BY v.app_version NULLS FIRST",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(
                |(version, enqueued, running, accepting, running_it)| VersionInfo {
                    version,
                    enqueued,
                    running,
                    executors_accepting: accepting,
                    executors_running: running_it,
                },
            )
            .collect())
    }
}

impl PgStorage {
    /// Tandem's three roles (docs/security.md), whether each exists, and
    /// the roles that are its direct members (for `tandem roles`). Not part
    /// of the [`Storage`] seam.
    pub async fn roles_info(&self) -> StorageResult<Vec<RoleInfo>> {
        let rows: Vec<(String, bool, Vec<String>)> = sqlx::query_as(
            "SELECT t.name, r.oid IS NOT NULL,
                    COALESCE((SELECT array_agg(m.rolname::text ORDER BY m.rolname)
                                FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member
                               WHERE am.roleid = r.oid), '{}')
               FROM unnest(ARRAY['tandem_executor', 'tandem_enqueuer', 'tandem_operator'])
                    WITH ORDINALITY AS t(name, ord)
               LEFT JOIN pg_roles r ON r.rolname = t.name
              ORDER BY t.ord",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(name, exists, members)| RoleInfo {
                name,
                exists,
                members,
            })
            .collect())
    }

    /// Creates Tandem's roles that do not exist yet and grants them their
    /// privileges in this database (`tandem.setup_roles`, for `tandem
    /// setup-roles`). Needs a superuser, or CREATEROLE while a role is
    /// missing, and the schema's owner for the grants; fails with
    /// [`ErrorKind::Denied`] otherwise.
    pub async fn setup_roles(&self) -> StorageResult<Vec<RoleInfo>> {
        sqlx::query("SELECT tandem.setup_roles(true)")
            .execute(&self.pool)
            .await
            .map_err(|e| match kind_of(&e) {
                ErrorKind::Denied => StorageError::new(
                    ErrorKind::Denied,
                    format!(
                        "{}: setting up the roles needs a superuser, or the schema's owner \
                         once the roles exist (docs/security.md)",
                        db_message(&e)
                    ),
                ),
                _ => map_err(e),
            })?;
        self.roles_info().await
    }
}

/// One of Tandem's roles as `tandem roles` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    /// `tandem_executor`, `tandem_enqueuer` or `tandem_operator`.
    pub name: String,
    /// Whether the role exists in the cluster.
    pub exists: bool,
    /// The roles granted it directly (usually the login roles of services
    /// and people).
    pub members: Vec<String>,
}

/// An application version as management tools show it (see
/// [`PgStorage::versions_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version; `None` for runs that never ran (any executor may start
    /// them, stamping its own version).
    pub version: Option<String>,
    /// Its unfinished runs waiting to be claimed.
    pub enqueued: i64,
    /// Its runs owned by an executor.
    pub running: i64,
    /// Live executors (lease not expired) that accept it. Zero while runs
    /// wait: they wait until code that accepts them runs.
    pub executors_accepting: i64,
    /// Live executors whose code is this version.
    pub executors_running: i64,
}

/// A transaction on [`PgStorage`]; the application sees its connection.
#[derive(Debug)]
pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
    tap: Tap,
}

impl PgTx {
    /// Consults the interceptor before statement `op` and injects its fault
    /// for real: the server terminates this backend, or raises 40001.
    async fn at(
        &mut self,
        op: &'static str,
        workflow_id: Option<&str>,
        step: Option<&str>,
    ) -> StorageResult<()> {
        match self.tap.statement(op, workflow_id, step).await {
            Verdict::Proceed => Ok(()),
            Verdict::SerializationFailure => Err(raise_serialization_failure(&mut self.tx).await),
            Verdict::ConnectionLost | Verdict::LoseAck => {
                Err(terminate_backend(&mut self.tx).await)
            }
        }
    }
}

/// An injected connection loss: the backend serving `conn` terminates
/// itself (57P01), so the transaction rolls back on the server.
impl PgStorage {
    /// Whether every migration this build embeds is applied (with the same
    /// checksum). False when nothing was ever migrated.
    async fn schema_current(&self) -> StorageResult<bool> {
        let applied: Vec<(i64, Vec<u8>)> = match sqlx::query_as(
            "SELECT version, checksum FROM tandem._sqlx_migrations WHERE success",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(applied) => applied,
            // undefined_table, invalid_schema_name: never migrated.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("42P01" | "3F000")) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(map_err(e)),
        };
        Ok(MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .all(|m| {
                applied
                    .iter()
                    .any(|(version, checksum)| *version == m.version && *checksum == *m.checksum)
            }))
    }

    /// Fails with [`ErrorKind::Denied`], naming what is missing, unless
    /// this role holds every privilege an executor uses: all of the table
    /// privileges tandem_executor has, and EXECUTE on every function but
    /// the role setup's. Checked at launch, so that a role short of one
    /// fails there and not at its first claim or checkpoint.
    async fn check_executor_privileges(&self) -> StorageResult<()> {
        let (role, missing): (String, Option<String>) = sqlx::query_as(
            "SELECT current_user::text, string_agg(format('%s on %s', m.privileges, m.object), '; '
                                                   ORDER BY m.object)
               FROM (SELECT c.oid::regclass::text AS object,
                            string_agg(p.privilege, ', ' ORDER BY p.ord) AS privileges
                       FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                      CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'])
                                 WITH ORDINALITY AS p(privilege, ord)
                      WHERE n.nspname = 'tandem' AND c.relkind = 'r'
                        AND (c.relname <> '_sqlx_migrations' OR p.privilege = 'SELECT')
                        AND NOT has_table_privilege(c.oid, p.privilege)
                      GROUP BY c.oid
                     UNION ALL
                     SELECT 'schema tandem', 'USAGE'
                      WHERE NOT has_schema_privilege('tandem', 'USAGE')
                     UNION ALL
                     SELECT f.oid::regprocedure::text, 'EXECUTE'
                       FROM pg_proc f
                       JOIN pg_namespace n ON n.oid = f.pronamespace
                      WHERE n.nspname = 'tandem'
                        AND f.proname NOT IN ('grant_roles', 'setup_roles')
                        AND NOT has_function_privilege(f.oid, 'EXECUTE')) m",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        match missing {
            None => Ok(()),
            Some(missing) => Err(StorageError::new(
                ErrorKind::Denied,
                format!(
                    "role {role:?} may not run workflows: it lacks {missing}; grant it \
                     tandem_executor (docs/security.md)"
                ),
            )),
        }
    }
}

async fn terminate_backend(conn: &mut PgConnection) -> StorageError {
    match sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(conn)
        .await
    {
        Err(e) => map_err(e),
        Ok(_) => StorageError::new(ErrorKind::Unavailable, "injected connection loss"),
    }
}

/// An injected serialization failure, raised by the server (40001): the
/// transaction is aborted there.
async fn raise_serialization_failure(conn: &mut PgConnection) -> StorageError {
    match sqlx::query(
        "DO $$ BEGIN RAISE EXCEPTION 'injected serialization failure' \
         USING ERRCODE = 'serialization_failure'; END $$",
    )
    .execute(conn)
    .await
    {
        Err(e) => map_err(e),
        Ok(_) => StorageError::new(ErrorKind::Conflict, "injected serialization failure"),
    }
}

/// Runs an autocommit operation as `BEGIN`, the operation, `COMMIT` while an
/// interceptor is installed, so that its commit can be intercepted.
macro_rules! intercepted {
    ($self:ident, |$tx:ident| $op:expr) => {
        if $self.hook.is_installed() {
            let mut $tx = $self.begin().await?;
            let r = $op.await?;
            $tx.commit().await?;
            return Ok(r);
        }
    };
}

/// The channel `tandem.enqueue_workflow` notifies (payload: the queue).
const WORK_CHANNEL: &str = "tandem_work";

/// Wake-ups from `NOTIFY tandem_work` on a dedicated connection, or none
/// ([`PgStorage::without_listen`]).
#[derive(Debug)]
pub struct PgWakeups {
    listener: Option<sqlx::postgres::PgListener>,
}

impl Listener for PgWakeups {
    async fn recv(&mut self) -> StorageResult<()> {
        match &mut self.listener {
            Some(listener) => listener.recv().await.map(drop).map_err(map_err),
            None => std::future::pending().await,
        }
    }
}

impl Storage for PgStorage {
    type Tx = PgTx;
    type Conn = PgConnection;
    type Listener = PgWakeups;

    async fn listen(&self) -> StorageResult<PgWakeups> {
        let mut listener = match &self.wakeups {
            Wakeups::Pool => sqlx::postgres::PgListener::connect_with(&self.pool).await,
            Wakeups::Url(url) => sqlx::postgres::PgListener::connect(url).await,
            Wakeups::Off => return Ok(PgWakeups { listener: None }),
        }
        .map_err(map_err)?;
        listener.listen(WORK_CHANNEL).await.map_err(map_err)?;
        Ok(PgWakeups {
            listener: Some(listener),
        })
    }

    async fn begin(&self) -> StorageResult<PgTx> {
        let tx = self.pool.begin().await.map_err(map_err)?;
        Ok(PgTx {
            tx,
            tap: self.hook.tap(),
        })
    }

    async fn migrate(&self) -> StorageResult<()> {
        // An executor's role may run workflows without owning the schema
        // (docs/security.md): when every migration this build carries is
        // applied, it needs no CREATE privilege, so nothing is attempted.
        // A schema migrated by a newer build counts as up to date too, so
        // that older executors keep launching during a rolling deploy.
        let current = match self.schema_current().await {
            // A role that may not read the migrations' record may not run
            // workflows either: say everything it lacks.
            Err(e) if e.kind() == ErrorKind::Denied => {
                return self.check_executor_privileges().await.and(Err(e));
            }
            current => current?,
        };
        if !current {
            let mut migrator = sqlx::migrate::Migrator {
                migrations: MIGRATOR.migrations.clone(),
                ..sqlx::migrate::Migrator::DEFAULT
            };
            migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
            migrator.create_schema("tandem");
            // Every pending migration in one transaction (each in a
            // savepoint of it), under a transaction-level advisory lock, so
            // that several processes starting at once apply each migration
            // once. sqlx's own lock is a session lock, taken and released
            // by separate statements: through a transaction-mode pooler the
            // release can run on another server connection and leave the
            // lock held, stalling every later migration.
            migrator.set_locking(false);
            let migrated = async {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tandem migrations'))")
                    .execute(&mut *tx)
                    .await?;
                // `run_direct`, not `run`: sqlx's own way around `run`'s
                // "Acquire is not general enough" on a borrowed connection
                // in a `Send` future (doc-hidden, so checked at each sqlx
                // upgrade by the migration tests).
                migrator.run_direct(None, &mut *tx, false).await?;
                tx.commit().await?;
                Ok::<_, sqlx::migrate::MigrateError>(())
            };
            migrated.await.map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) if kind_of(&e) == ErrorKind::Denied => {
                    StorageError::new(
                        ErrorKind::Denied,
                        format!(
                            "the tandem schema needs migrating and this role may not: run \
                             `tandem migrate` as the schema's owner ({})",
                            db_message(&e)
                        ),
                    )
                }
                e => StorageError::new(ErrorKind::Other, e),
            })?;
        }
        self.check_executor_privileges().await
    }

    fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(sqlx_error) = e.downcast_ref::<sqlx::Error>() {
                let kind = kind_of(sqlx_error);
                return matches!(kind, ErrorKind::Conflict | ErrorKind::Unavailable)
                    .then_some(kind);
            }
            current = e.source();
        }
        None
    }

    // The autocommit operations below run one statement on a pooled
    // connection: one round trip and one commit, instead of BEGIN, statement,
    // COMMIT.

    async fn workflow_insert(&self, params: WorkflowInsert) -> StorageResult<WorkflowInserted> {
        intercepted!(self, |tx| tx.workflow_insert(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflow_insert(&mut conn, params).await
    }

    async fn workflow_get(&self, id: &str) -> StorageResult<Option<WorkflowRow>> {
        intercepted!(self, |tx| tx.workflow_get(id));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflow_get(&mut conn, id).await
    }

    async fn workflow_complete(&self, params: WorkflowComplete) -> StorageResult<()> {
        intercepted!(self, |tx| tx.workflow_complete(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflow_complete(&mut conn, params).await
    }

    async fn workflows_recover(&self, params: WorkflowsRecover) -> StorageResult<Vec<WorkflowRow>> {
        intercepted!(self, |tx| tx.workflows_recover(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflows_recover(&mut conn, params).await
    }

    async fn steps_load(&self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        intercepted!(self, |tx| tx.steps_load(workflow_id));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        steps_load(&mut conn, workflow_id).await
    }

    async fn step_get(&self, workflow_id: &str, step_id: i32) -> StorageResult<Option<StepRow>> {
        intercepted!(self, |tx| tx.step_get(workflow_id, step_id));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        step_get(&mut conn, workflow_id, step_id).await
    }

    async fn step_record(&self, params: StepRecord) -> StorageResult<StepRecorded> {
        intercepted!(self, |tx| tx.step_record(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        step_record(&mut conn, params).await
    }

    async fn workflow_insert_many(
        &self,
        params: Vec<WorkflowInsert>,
    ) -> StorageResult<Vec<StorageResult<WorkflowInserted>>> {
        intercepted!(self, |tx| tx.workflow_insert_many(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflow_insert_many(&mut conn, params).await
    }

    async fn step_record_many(
        &self,
        params: Vec<StepRecord>,
    ) -> StorageResult<Vec<StorageResult<StepRecorded>>> {
        intercepted!(self, |tx| tx.step_record_many(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        step_record_many(&mut conn, params).await
    }

    async fn workflow_complete_many(
        &self,
        params: Vec<WorkflowComplete>,
    ) -> StorageResult<Vec<StorageResult<()>>> {
        intercepted!(self, |tx| tx.workflow_complete_many(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflow_complete_many(&mut conn, params).await
    }

    async fn executor_heartbeat(
        &self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StorageResult<()> {
        intercepted!(self, |tx| tx.executor_heartbeat(
            executor_id,
            now_ms,
            lease_ms
        ));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        executor_heartbeat(&mut conn, executor_id, now_ms, lease_ms).await
    }

    async fn workflows_reclaim(&self, now_ms: i64) -> StorageResult<u64> {
        intercepted!(self, |tx| tx.workflows_reclaim(now_ms));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflows_reclaim(&mut conn, now_ms).await
    }

    async fn workflows_claim(&self, params: WorkflowsClaim) -> StorageResult<Vec<WorkflowRow>> {
        intercepted!(self, |tx| tx.workflows_claim(params));
        // A queue without limits claims in one autocommit statement; a
        // limited one needs a transaction to hold its queue lock.
        if params.queue.is_limited() {
            let mut tx = self.begin().await?;
            let rows = tx.workflows_claim(params).await?;
            tx.commit().await?;
            Ok(rows)
        } else {
            let mut conn = self.pool.acquire().await.map_err(map_err)?;
            workflows_claim(&mut conn, params).await
        }
    }

    async fn workflows_release(&self, executor_id: &str, now_ms: i64) -> StorageResult<u64> {
        intercepted!(self, |tx| tx.workflows_release(executor_id, now_ms));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflows_release(&mut conn, executor_id, now_ms).await
    }

    async fn workflows_owned(&self, executor_id: &str) -> StorageResult<Vec<(String, i64)>> {
        intercepted!(self, |tx| tx.workflows_owned(executor_id));
        // One autocommit statement: no BEGIN and COMMIT round trips.
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflows_owned(&mut conn, executor_id).await
    }

    async fn workflow_enqueue(&self, params: WorkflowEnqueue) -> StorageResult<String> {
        intercepted!(self, |tx| tx.workflow_enqueue(params));
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        workflow_enqueue(&mut conn, params).await
    }
}

impl Transaction for PgTx {
    type Conn = PgConnection;

    fn conn(&mut self) -> &mut PgConnection {
        self.tap.app();
        &mut self.tx
    }

    async fn workflow_insert(&mut self, params: WorkflowInsert) -> StorageResult<WorkflowInserted> {
        self.at("workflow_insert", Some(&params.id), None).await?;
        workflow_insert(&mut self.tx, params).await
    }

    async fn workflow_get(&mut self, id: &str) -> StorageResult<Option<WorkflowRow>> {
        self.at("workflow_get", Some(id), None).await?;
        workflow_get(&mut self.tx, id).await
    }

    async fn workflow_complete(&mut self, params: WorkflowComplete) -> StorageResult<()> {
        self.at("workflow_complete", Some(&params.id), None).await?;
        workflow_complete(&mut self.tx, params).await
    }

    async fn workflows_recover(
        &mut self,
        params: WorkflowsRecover,
    ) -> StorageResult<Vec<WorkflowRow>> {
        self.at("workflows_recover", params.workflow_id.as_deref(), None)
            .await?;
        let rows = workflows_recover(&mut self.tx, params).await?;
        self.tap.rows(rows.len());
        Ok(rows)
    }

    async fn steps_load(&mut self, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
        self.at("steps_load", Some(workflow_id), None).await?;
        steps_load(&mut self.tx, workflow_id).await
    }

    async fn step_get(
        &mut self,
        workflow_id: &str,
        step_id: i32,
    ) -> StorageResult<Option<StepRow>> {
        self.at("step_get", Some(workflow_id), None).await?;
        step_get(&mut self.tx, workflow_id, step_id).await
    }

    async fn step_record(&mut self, params: StepRecord) -> StorageResult<StepRecorded> {
        self.at("step_record", Some(&params.workflow_id), Some(&params.name))
            .await?;
        step_record(&mut self.tx, params).await
    }

    async fn workflow_insert_many(
        &mut self,
        params: Vec<WorkflowInsert>,
    ) -> StorageResult<Vec<StorageResult<WorkflowInserted>>> {
        let first = params.first().map(|p| p.id.clone());
        self.at("workflow_insert_many", first.as_deref(), None)
            .await?;
        workflow_insert_many(&mut self.tx, params).await
    }

    async fn step_record_many(
        &mut self,
        params: Vec<StepRecord>,
    ) -> StorageResult<Vec<StorageResult<StepRecorded>>> {
        let first = params.first().map(|p| p.workflow_id.clone());
        self.at("step_record_many", first.as_deref(), None).await?;
        step_record_many(&mut self.tx, params).await
    }

    async fn workflow_complete_many(
        &mut self,
        params: Vec<WorkflowComplete>,
    ) -> StorageResult<Vec<StorageResult<()>>> {
        let first = params.first().map(|p| p.id.clone());
        self.at("workflow_complete_many", first.as_deref(), None)
            .await?;
        workflow_complete_many(&mut self.tx, params).await
    }

    async fn executor_register(&mut self, params: ExecutorRegister) -> StorageResult<()> {
        self.at("executor_register", None, None).await?;
        executor_register(&mut self.tx, params).await
    }

    async fn executor_heartbeat(
        &mut self,
        executor_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StorageResult<()> {
        self.at("executor_heartbeat", None, None).await?;
        executor_heartbeat(&mut self.tx, executor_id, now_ms, lease_ms).await
    }

    async fn workflows_reclaim(&mut self, now_ms: i64) -> StorageResult<u64> {
        self.at("workflows_reclaim", None, None).await?;
        workflows_reclaim(&mut self.tx, now_ms).await
    }

    async fn workflows_claim(&mut self, params: WorkflowsClaim) -> StorageResult<Vec<WorkflowRow>> {
        self.at("workflows_claim", None, None).await?;
        if let Some(n) = claim_budget(&mut self.tx, &params).await? {
            let limit = params.limit.min(n);
            if limit == 0 {
                return Ok(Vec::new());
            }
            let rows = workflows_claim(&mut self.tx, WorkflowsClaim { limit, ..params }).await?;
            self.tap.rows(rows.len());
            return Ok(rows);
        }
        let rows = workflows_claim(&mut self.tx, params).await?;
        self.tap.rows(rows.len());
        Ok(rows)
    }

    async fn workflows_release(&mut self, executor_id: &str, now_ms: i64) -> StorageResult<u64> {
        self.at("workflows_release", None, None).await?;
        workflows_release(&mut self.tx, executor_id, now_ms).await
    }

    async fn workflow_enqueue(&mut self, params: WorkflowEnqueue) -> StorageResult<String> {
        self.at("workflow_enqueue", params.workflow_id.as_deref(), None)
            .await?;
        workflow_enqueue(&mut self.tx, params).await
    }

    async fn workflow_suspend(
        &mut self,
        id: &str,
        owner_epoch: i64,
        run_after_ms: i64,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.at("workflow_suspend", Some(id), None).await?;
        let done = sqlx::query(
            "UPDATE tandem.workflows
                SET status = 'ENQUEUED', executor_id = NULL,
                    run_after = to_timestamp($3::float8 / 1000),
                    updated_at = to_timestamp($4::float8 / 1000)
              WHERE id = $1 AND owner_epoch = $2 AND status = 'RUNNING'",
        )
        .bind(id)
        .bind(owner_epoch)
        .bind(run_after_ms)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(fenced(id))
        }
    }

    async fn message_send(
        &mut self,
        workflow_id: &str,
        topic: &str,
        payload: &str,
        _now_ms: i64,
    ) -> StorageResult<()> {
        self.at("message_send", Some(workflow_id), None).await?;
        message_send(&mut self.tx, workflow_id, topic, payload).await
    }

    async fn recv_deadline(
        &mut self,
        workflow_id: &str,
        owner_epoch: i64,
        step_id: i32,
        deadline_ms: i64,
    ) -> StorageResult<i64> {
        self.at("recv_deadline", Some(workflow_id), None).await?;
        // Kept if this step's wait recorded one already (an earlier
        // execution's); the engine's clock, in ms, like a sleep's wake-up.
        let recorded: Option<i64> = sqlx::query_scalar(
            "UPDATE tandem.workflows
                SET wait_until_ms = CASE WHEN wait_step = $3 THEN wait_until_ms ELSE $4 END,
                    wait_step = $3
              WHERE id = $1 AND owner_epoch = $2 AND status = 'RUNNING'
          RETURNING wait_until_ms",
        )
        .bind(workflow_id)
        .bind(owner_epoch)
        .bind(step_id)
        .bind(deadline_ms)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        recorded.ok_or_else(|| fenced(workflow_id))
    }

    async fn message_take(
        &mut self,
        workflow_id: &str,
        topic: &str,
        owner_epoch: i64,
    ) -> StorageResult<Option<String>> {
        self.at("message_take", Some(workflow_id), None).await?;
        // SKIP LOCKED: a concurrent execution of the same workflow taking the
        // same message must not make this one wait; the step's checkpoint
        // (primary key) decides which of them commits. The fence makes a
        // waiting receiver of a cancelled workflow stop. Every table is
        // filtered by the workflow ID, the DELETE too (redundant here), so
        // that a distributed PostgreSQL can route the statement to the one
        // shard of that workflow (docs/scaling.md).
        let (owned, payload): (bool, Option<String>) = sqlx::query_as(
            "WITH fence AS (
                 SELECT 1 FROM tandem.workflows
                  WHERE id = $1 AND owner_epoch = $3 AND status = 'RUNNING'
             ), taken AS (
                 DELETE FROM tandem.messages
                  WHERE workflow_id = $1
                    AND id = (SELECT id FROM tandem.messages
                               WHERE workflow_id = $1 AND topic = $2
                               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                    AND EXISTS (SELECT 1 FROM fence)
              RETURNING payload::text
             )
             SELECT EXISTS (SELECT 1 FROM fence), (SELECT payload FROM taken)",
        )
        .bind(workflow_id)
        .bind(topic)
        .bind(owner_epoch)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(map_err)?;
        if owned {
            Ok(payload)
        } else {
            Err(fenced(workflow_id))
        }
    }

    async fn event_set(
        &mut self,
        workflow_id: &str,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.at("event_set", Some(workflow_id), None).await?;
        sqlx::query(
            "INSERT INTO tandem.events (workflow_id, key, value, updated_at)
             VALUES ($1, $2, $3::jsonb, to_timestamp($4::float8 / 1000))
             ON CONFLICT (workflow_id, key) DO UPDATE
                SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(workflow_id)
        .bind(key)
        .bind(value)
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn event_get(&mut self, workflow_id: &str, key: &str) -> StorageResult<Option<String>> {
        self.at("event_get", Some(workflow_id), None).await?;
        sqlx::query_scalar(
            "SELECT value::text FROM tandem.events WHERE workflow_id = $1 AND key = $2",
        )
        .bind(workflow_id)
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)
    }

    async fn workflows_cancel(
        &mut self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        self.at("workflows_cancel", Some(id), None).await?;
        cancel_tree(&mut self.tx, id, reason, now_ms, None).await
    }

    async fn workflow_cancel_overdue(
        &mut self,
        id: &str,
        owner_epoch: i64,
        now_ms: i64,
    ) -> StorageResult<Vec<String>> {
        self.at("workflow_cancel_overdue", Some(id), None).await?;
        let cancelled = cancel_tree(
            &mut self.tx,
            id,
            contract::DEADLINE_EXCEEDED,
            now_ms,
            Some(owner_epoch),
        )
        .await?;
        crate::storage::contract::overdue_cancelled(id, cancelled)
    }

    async fn workflow_resume(&mut self, id: &str, now_ms: i64) -> StorageResult<bool> {
        self.at("workflow_resume", Some(id), None).await?;
        // In SQL (migrations/0007_roles.sql) so that an operator, who may
        // not write the tables, can resume through it.
        sqlx::query_scalar("SELECT tandem.resume_workflow($1, $2)")
            .bind(id)
            .bind(now_ms)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.constraint() == Some("workflows_dedup") => {
                    StorageError::new(ErrorKind::Invalid, contract::resume_dedup_held(id))
                }
                _ => map_err(e),
            })
    }

    async fn workflow_fork(&mut self, p: WorkflowFork) -> StorageResult<bool> {
        self.at("workflow_fork", Some(&p.new_id), None).await?;
        // In SQL (migrations/0007_roles.sql), for operators as for resume.
        // The function hard-codes the fork's epochs (storage::contract's);
        // the conformance suite compares them with the memory model's.
        sqlx::query_scalar("SELECT tandem.fork_workflow($1, $2, $3, $4)")
            .bind(&p.source_id)
            .bind(&p.new_id)
            .bind(p.from_step)
            .bind(p.now_ms)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    async fn workflows_owned(&mut self, executor_id: &str) -> StorageResult<Vec<(String, i64)>> {
        self.at("workflows_owned", None, None).await?;
        workflows_owned(&mut self.tx, executor_id).await
    }

    async fn workflows_list(&mut self, f: WorkflowFilter) -> StorageResult<Vec<WorkflowInfo>> {
        self.at("workflows_list", None, None).await?;
        let rows: Vec<PgRow> = bind_filter(
            sqlx::query(concat!(
                "SELECT ",
                info_columns!(),
                " FROM tandem.workflows WHERE ($1::text IS NULL OR status = $1) AND ",
                filter_where!(),
                " ORDER BY created_at DESC, id LIMIT $8 OFFSET $9"
            ))
            .bind(f.status.map(Status::as_str)),
            &f,
        )
        .bind(i64::from(f.limit))
        .bind(i64::try_from(f.offset).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        rows.iter().map(info_from_row).collect()
    }

    async fn workflows_count(
        &mut self,
        f: WorkflowFilter,
        cap: u64,
    ) -> StorageResult<Vec<(Status, u64)>> {
        self.at("workflows_count", None, None).await?;
        // One capped subquery per status, so that each reads at most `cap`
        // rows (through the status's partial index where there is one).
        let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        let rows: Vec<(String, i64)> = bind_filter(
            sqlx::query_as(concat!(
                "SELECT s.status, (SELECT count(*) FROM (SELECT 1 FROM tandem.workflows
                                    WHERE status = s.status AND ",
                filter_where!(),
                " LIMIT $8) c)
                   FROM unnest($1::text[]) WITH ORDINALITY AS s(status, ord)
                  ORDER BY s.ord"
            ))
            .bind(statuses),
            &f,
        )
        .bind(i64::try_from(cap).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(status, n)| {
                let status = Status::parse(&status).ok_or_else(|| {
                    StorageError::new(
                        ErrorKind::Other,
                        format!("unknown workflow status {status:?}"),
                    )
                })?;
                Ok((status, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn queues_info(&mut self, now_ms: i64) -> StorageResult<Vec<QueueInfo>> {
        self.at("queues_info", None, None).await?;
        // One scalar subquery per figure, so that each reads its partial
        // index (`workflows_ready`, `workflows_running_by_queue`) instead of
        // scanning the finished workflows, the vast majority.
        let rows: Vec<QueueTuple> = sqlx::query_as(
            "SELECT q.name, q.concurrency_global, q.rate_limit_count, q.rate_limit_period_ms,
                    q.concurrency_per_key, q.retention_ms,
                    (SELECT count(*) FROM tandem.workflows w
                      WHERE w.queue = q.name AND w.status = 'ENQUEUED'),
                    (SELECT count(*) FROM tandem.workflows w
                      WHERE w.queue = q.name AND w.status = 'RUNNING'),
                    (SELECT (extract(epoch FROM min(w.created_at)) * 1000)::bigint
                       FROM tandem.workflows w
                      WHERE w.queue = q.name AND w.status = 'ENQUEUED'
                        AND (w.run_after IS NULL
                             OR w.run_after <= to_timestamp($1::float8 / 1000)))
               FROM tandem.queues q
              ORDER BY q.name COLLATE \"C\"",
        )
        .bind(now_ms)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    name,
                    global,
                    count,
                    period_ms,
                    per_key,
                    retention_ms,
                    enqueued,
                    running,
                    oldest,
                )| {
                    QueueInfo {
                        limits: QueueLimits {
                            name,
                            concurrency_global: global.map(|n| n as u32),
                            rate_limit: count.zip(period_ms).map(|(n, ms)| (n as u32, ms)),
                            concurrency_per_key: per_key.map(|n| n as u32),
                            retention_ms,
                        },
                        enqueued,
                        running,
                        oldest_ready_ms: oldest,
                    }
                },
            )
            .collect())
    }

    async fn executors_info(&mut self) -> StorageResult<Vec<ExecutorInfo>> {
        self.at("executors_info", None, None).await?;
        type Tuple = (
            String,
            Option<String>,
            Option<Vec<String>>,
            i64,
            i64,
            i64,
            i64,
        );
        let rows: Vec<Tuple> = sqlx::query_as(
            "SELECT e.id, e.app_version, e.accepts,
                    (extract(epoch FROM e.started_at) * 1000)::bigint,
                    (extract(epoch FROM e.heartbeat_at) * 1000)::bigint,
                    (extract(epoch FROM e.lease_expires_at) * 1000)::bigint,
                    (SELECT count(*) FROM tandem.workflows w
                      WHERE w.status = 'RUNNING' AND w.executor_id = e.id)
               FROM tandem.executors e
              ORDER BY e.id COLLATE \"C\"",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, version, accepts, started_ms, heartbeat_ms, lease_expires_ms, running)| {
                    ExecutorInfo {
                        id,
                        version,
                        accepts: accepts.unwrap_or_default(),
                        started_ms,
                        heartbeat_ms,
                        lease_expires_ms,
                        running,
                    }
                },
            )
            .collect())
    }

    async fn messages_info(&mut self, workflow_id: &str) -> StorageResult<Vec<MessageInfo>> {
        self.at("messages_info", Some(workflow_id), None).await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT topic, payload::text, (extract(epoch FROM created_at) * 1000)::bigint
               FROM tandem.messages WHERE workflow_id = $1 ORDER BY id",
        )
        .bind(workflow_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(topic, payload, created_ms)| MessageInfo {
                topic,
                payload,
                created_ms,
            })
            .collect())
    }

    async fn events_info(&mut self, workflow_id: &str) -> StorageResult<Vec<EventInfo>> {
        self.at("events_info", Some(workflow_id), None).await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT key, value::text, (extract(epoch FROM updated_at) * 1000)::bigint
               FROM tandem.events WHERE workflow_id = $1 ORDER BY key COLLATE \"C\"",
        )
        .bind(workflow_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(key, value, updated_ms)| EventInfo {
                key,
                value,
                updated_ms,
            })
            .collect())
    }

    async fn workflow_info(&mut self, id: &str) -> StorageResult<Option<WorkflowInfo>> {
        self.at("workflow_info", Some(id), None).await?;
        let row: Option<PgRow> = sqlx::query(concat!(
            "SELECT ",
            info_columns!(),
            " FROM tandem.workflows WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(map_err)?;
        row.as_ref().map(info_from_row).transpose()
    }

    async fn steps_info(&mut self, workflow_id: &str) -> StorageResult<Vec<StepInfo>> {
        self.at("steps_info", Some(workflow_id), None).await?;
        type Tuple = (
            i32,
            String,
            String,
            Option<String>,
            Option<String>,
            i32,
            i64,
            i64,
            i64,
        );
        let rows: Vec<Tuple> = sqlx::query_as(
            "SELECT step_id, name, kind, output::text, error, attempts, owner_epoch,
                    (extract(epoch FROM started_at) * 1000)::bigint,
                    (extract(epoch FROM completed_at) * 1000)::bigint
               FROM tandem.steps WHERE workflow_id = $1 ORDER BY step_id",
        )
        .bind(workflow_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(
                |(
                    step_id,
                    name,
                    kind,
                    output,
                    error,
                    attempts,
                    owner_epoch,
                    started_ms,
                    completed_ms,
                )| {
                    Ok(StepInfo {
                        row: step_row(step_id, name, kind, output, error)?,
                        attempts,
                        owner_epoch,
                        started_ms,
                        completed_ms,
                    })
                },
            )
            .collect()
    }

    async fn workflows_gc(&mut self, p: WorkflowsGc) -> StorageResult<GcCount> {
        self.at("workflows_gc", None, None).await?;
        let row: (i64, i64, i64, i64, i64) = if p.dry_run {
            sqlx::query_as(gc_statement!(
                "",
                "doomed AS (SELECT t.id FROM tree t WHERE t.root NOT IN (SELECT root FROM live)),
                 s AS (SELECT 1 FROM tandem.steps WHERE workflow_id IN (SELECT id FROM doomed)),
                 m AS (SELECT 1 FROM tandem.messages WHERE workflow_id IN (SELECT id FROM doomed)),
                 e AS (SELECT 1 FROM tandem.events WHERE workflow_id IN (SELECT id FROM doomed))"
            ))
            .bind(p.older_than_ms)
            .fetch_one(&mut *self.tx)
            .await
        } else {
            sqlx::query_as(gc_statement!(
                "LIMIT $2 FOR UPDATE OF w SKIP LOCKED",
                // The DELETE re-checks the status on a row that changed
                // since the snapshot (a child resumed on its own meanwhile
                // stays, and so do its checkpoints).
                "doomed AS (
                     DELETE FROM tandem.workflows w USING tree t
                      WHERE w.id = t.id AND t.root NOT IN (SELECT root FROM live)
                        AND w.status IN ('SUCCESS', 'ERROR', 'CANCELLED')
                     RETURNING w.id),
                 s AS (DELETE FROM tandem.steps
                        WHERE workflow_id IN (SELECT id FROM doomed) RETURNING 1),
                 m AS (DELETE FROM tandem.messages
                        WHERE workflow_id IN (SELECT id FROM doomed) RETURNING 1),
                 e AS (DELETE FROM tandem.events
                        WHERE workflow_id IN (SELECT id FROM doomed) RETURNING 1)"
            ))
            .bind(p.older_than_ms)
            .bind(i64::from(p.limit))
            .fetch_one(&mut *self.tx)
            .await
        }
        .map_err(map_err)?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(GcCount {
            roots: n(row.0),
            workflows: n(row.1),
            steps: n(row.2),
            messages: n(row.3),
            events: n(row.4),
        })
    }

    async fn schedule_lock(
        &mut self,
        name: &str,
        _now_ms: i64,
    ) -> StorageResult<Option<ScheduleState>> {
        self.at("schedule_lock", None, None).await?;
        let row = sqlx::query(schedule_select!("WHERE name = $1 FOR UPDATE SKIP LOCKED"))
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        row.map(|r| schedule_from_row(&r)).transpose()
    }

    async fn schedule_advance(
        &mut self,
        name: &str,
        cursor_ms: i64,
        last_tick_ms: Option<i64>,
        _now_ms: i64,
    ) -> StorageResult<()> {
        self.at("schedule_advance", None, None).await?;
        sqlx::query(
            "UPDATE tandem.schedules
                SET cursor_ms = $2, last_tick_ms = COALESCE($3, last_tick_ms),
                    updated_ms = tandem.clock_ms()
              WHERE name = $1",
        )
        .bind(name)
        .bind(cursor_ms)
        .bind(last_tick_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn schedule_pause(
        &mut self,
        name: &str,
        paused: bool,
        _now_ms: i64,
    ) -> StorageResult<Option<ScheduleState>> {
        self.at("schedule_pause", None, None).await?;
        // In SQL (migrations/0010_schedules.sql) so that an operator, who
        // may not write the tables, can pause and resume.
        let sql = if paused {
            "SELECT tandem.pause_schedule($1)"
        } else {
            "SELECT tandem.resume_schedule($1)"
        };
        let found: bool = sqlx::query_scalar(sql)
            .bind(name)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)?;
        if !found {
            return Ok(None);
        }
        let row = sqlx::query(schedule_select!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        row.map(|r| schedule_from_row(&r)).transpose()
    }

    async fn schedules_list(&mut self, _now_ms: i64) -> StorageResult<Vec<ScheduleState>> {
        self.at("schedules_list", None, None).await?;
        let rows = sqlx::query(schedule_select!("ORDER BY name"))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn commit(mut self) -> StorageResult<()> {
        match self.tap.commit(Phase::Commit).await {
            Verdict::Proceed => {}
            Verdict::SerializationFailure => {
                return Err(raise_serialization_failure(&mut self.tx).await);
            }
            Verdict::ConnectionLost | Verdict::LoseAck => {
                return Err(terminate_backend(&mut self.tx).await);
            }
        }
        self.tx.commit().await.map_err(map_err)?;
        match self.tap.commit(Phase::Committed).await {
            Verdict::Proceed => Ok(()),
            _ => Err(StorageError::new(
                ErrorKind::Unavailable,
                "injected: the commit's acknowledgement was lost",
            )),
        }
    }

    async fn rollback(self) -> StorageResult<()> {
        self.tx.rollback().await.map_err(map_err)
    }
}

type WorkflowTuple = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn workflow_from_row(row: WorkflowTuple) -> StorageResult<WorkflowRow> {
    let (
        id,
        name,
        status,
        input,
        output,
        error,
        executor_id,
        owner_epoch,
        queue,
        parent_id,
        deadline_ms,
        version,
        trace_parent,
    ) = row;
    let status = Status::parse(&status).ok_or_else(|| {
        StorageError::new(
            ErrorKind::Other,
            format!("unknown workflow status {status:?}"),
        )
    })?;
    Ok(WorkflowRow {
        id,
        name,
        status,
        input,
        output,
        error,
        executor_id,
        owner_epoch,
        queue,
        parent_id,
        deadline_ms,
        version,
        trace_parent,
    })
}

async fn workflow_insert(
    conn: &mut PgConnection,
    p: WorkflowInsert,
) -> StorageResult<WorkflowInserted> {
    // ON CONFLICT DO NOTHING: a concurrent start of the same ID waits for the
    // first inserter and then inserts nothing, so an ID never gets two runs.
    // A child's row comes from the parent's row, locked (FOR NO KEY UPDATE,
    // re-checked after a wait) while the parent runs at the starting
    // execution's epoch: a cancel of the parent (an UPDATE of that row)
    // either waits for this insert to commit, and then finds the child, or
    // commits first, and then this inserts nothing.
    macro_rules! insert_select {
        () => {
            "INSERT INTO tandem.workflows
                 (id, name, status, input, executor_id, owner_epoch, created_at, updated_at,
                  started_at, parent_id, deadline_at, app_version, trace_parent)
             SELECT $1, $2, 'RUNNING', $3::jsonb, $4, 1, to_timestamp($5::float8 / 1000),
                    to_timestamp($5::float8 / 1000), clock_timestamp(), $6,
                    to_timestamp($7::float8 / 1000), $9, $10"
        };
    }
    let sql = if p.parent_epoch.is_some() {
        concat!(
            "WITH parent AS (
                 SELECT 1 FROM tandem.workflows
                  WHERE id = $6 AND owner_epoch = $8 AND status = 'RUNNING'
                    FOR NO KEY UPDATE) ",
            insert_select!(),
            " FROM parent ON CONFLICT (id) DO NOTHING RETURNING owner_epoch"
        )
    } else {
        concat!(
            insert_select!(),
            " WHERE $8::bigint IS NULL ON CONFLICT (id) DO NOTHING RETURNING owner_epoch"
        )
    };
    let inserted: Option<(i64,)> = sqlx::query_as(sql)
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.input)
        .bind(&p.executor_id)
        .bind(p.now_ms)
        .bind(&p.parent_id)
        .bind(p.deadline_ms)
        .bind(p.parent_epoch)
        .bind(&p.version)
        .bind(&p.trace_parent)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    if inserted.is_some() {
        return Ok(WorkflowInserted::Inserted);
    }
    // The INSERT's snapshot may predate the conflicting row's commit, so the
    // existing row is read in a statement of its own (a fresh snapshot).
    match workflow_get(conn, &p.id).await? {
        Some(row) => Ok(WorkflowInserted::Existing(Box::new(row))),
        None => match (&p.parent_id, p.parent_epoch) {
            (Some(parent), Some(_)) => Err(fenced(parent)),
            _ => Err(StorageError::new(
                ErrorKind::Conflict,
                format!("workflow {:?} conflicted on insert but is gone", p.id),
            )),
        },
    }
}

async fn workflow_insert_many(
    conn: &mut PgConnection,
    ps: Vec<WorkflowInsert>,
) -> StorageResult<Vec<StorageResult<WorkflowInserted>>> {
    super::debug_check_many(
        ps.iter().map(|p| p.id.as_str()),
        ps.iter()
            .any(|p| p.parent_id.is_some() || p.parent_epoch.is_some()),
    );
    // `workflow_insert`'s statement for top-level workflows, every row of
    // the group at once: ON CONFLICT DO NOTHING waits for a concurrent
    // inserter of an ID and then skips it. In ID order, so that two groups
    // sharing IDs wait for each other in one order.
    let inserted: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO tandem.workflows
             (id, name, status, input, executor_id, owner_epoch, created_at, updated_at,
              started_at, deadline_at, app_version, trace_parent)
         SELECT id, name, 'RUNNING', input::jsonb, executor_id, 1,
                to_timestamp(now_ms::float8 / 1000), to_timestamp(now_ms::float8 / 1000),
                clock_timestamp(), to_timestamp(deadline_ms::float8 / 1000), app_version,
                trace_parent
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                       $7::text[], $8::text[])
                AS i(id, name, input, executor_id, now_ms, deadline_ms, app_version, trace_parent)
          ORDER BY id
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(ps.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.input.as_str()).collect::<Vec<_>>())
    .bind(
        ps.iter()
            .map(|p| p.executor_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(ps.iter().map(|p| p.now_ms).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.deadline_ms).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.version.as_str()).collect::<Vec<_>>())
    .bind(
        ps.iter()
            .map(|p| p.trace_parent.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let inserted: std::collections::HashSet<String> =
        inserted.into_iter().map(|(id,)| id).collect();
    let mut answers = Vec::with_capacity(ps.len());
    for p in &ps {
        answers.push(if inserted.contains(&p.id) {
            Ok(WorkflowInserted::Inserted)
        } else {
            // As for one: the INSERT's snapshot may predate the conflicting
            // row's commit, so the row is read in a statement of its own.
            match workflow_get(conn, &p.id).await? {
                Some(row) => Ok(WorkflowInserted::Existing(Box::new(row))),
                None => Err(StorageError::new(
                    ErrorKind::Conflict,
                    format!("workflow {:?} conflicted on insert but is gone", p.id),
                )),
            }
        });
    }
    Ok(answers)
}

async fn workflow_get(conn: &mut PgConnection, id: &str) -> StorageResult<Option<WorkflowRow>> {
    let row: Option<WorkflowTuple> = sqlx::query_as(concat!(
        "SELECT ",
        workflow_columns!(),
        " FROM tandem.workflows WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(map_err)?;
    row.map(workflow_from_row).transpose()
}

async fn workflow_complete(conn: &mut PgConnection, p: WorkflowComplete) -> StorageResult<()> {
    super::debug_check_completion(&p);
    // The fence: only the execution holding the current epoch may finish the
    // workflow. An UPDATE under READ COMMITTED re-checks the newest row
    // version after waiting, so a concurrent epoch bump is always seen.
    let done = sqlx::query(
        "UPDATE tandem.workflows
            SET status = $3, output = $4::jsonb, error = $5,
                updated_at = to_timestamp($6::float8 / 1000),
                completed_at = clock_timestamp()
          WHERE id = $1 AND owner_epoch = $2 AND status = 'RUNNING'",
    )
    .bind(&p.id)
    .bind(p.owner_epoch)
    .bind(p.status.as_str())
    .bind(&p.output)
    .bind(&p.error)
    .bind(p.now_ms)
    .execute(conn)
    .await
    .map_err(map_err)?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(fenced(&p.id))
    }
}

async fn workflow_complete_many(
    conn: &mut PgConnection,
    ps: Vec<WorkflowComplete>,
) -> StorageResult<Vec<StorageResult<()>>> {
    super::debug_check_many(ps.iter().map(|p| p.id.as_str()), false);
    ps.iter().for_each(super::debug_check_completion);
    // `workflow_complete`'s fenced UPDATE for every row of the group in one
    // statement (one round trip, one commit); the rows it returns are the
    // completions that passed their fence. READ COMMITTED re-checks each row
    // after waiting for a concurrent writer, as for one row.
    let done: Vec<(String,)> = sqlx::query_as(
        "UPDATE tandem.workflows w
            SET status = u.status, output = u.output::jsonb, error = u.error,
                updated_at = to_timestamp(u.now_ms::float8 / 1000),
                completed_at = clock_timestamp()
           FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[])
                AS u(id, owner_epoch, status, output, error, now_ms)
          WHERE w.id = u.id AND w.owner_epoch = u.owner_epoch AND w.status = 'RUNNING'
      RETURNING w.id",
    )
    .bind(ps.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.owner_epoch).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.status.as_str()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.output.as_deref()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.error.as_deref()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.now_ms).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    let done: std::collections::HashSet<String> = done.into_iter().map(|(id,)| id).collect();
    Ok(ps
        .iter()
        .map(|p| {
            if done.contains(&p.id) {
                Ok(())
            } else {
                Err(fenced(&p.id))
            }
        })
        .collect())
}

async fn workflows_recover(
    conn: &mut PgConnection,
    p: WorkflowsRecover,
) -> StorageResult<Vec<WorkflowRow>> {
    // Bumping the epoch fences any execution of the previous incarnation of
    // this executor that might still be running (a zombie). A run of a
    // version this executor does not accept (its previous incarnation ran
    // other code) goes back to its queue in the same UPDATE, for an executor
    // that accepts it; only the runs that stay RUNNING are returned to run.
    let rows: Vec<WorkflowTuple> = sqlx::query_as(concat!(
        "UPDATE tandem.workflows
            SET owner_epoch = owner_epoch + 1, updated_at = to_timestamp($2::float8 / 1000),
                status = CASE WHEN app_version IS NULL OR app_version = ANY($4)
                              THEN status ELSE 'ENQUEUED' END,
                executor_id = CASE WHEN app_version IS NULL OR app_version = ANY($4)
                                   THEN executor_id END
          WHERE executor_id = $1 AND status = 'RUNNING' AND ($3::text IS NULL OR id = $3)
      RETURNING ",
        workflow_columns!()
    ))
    .bind(&p.executor_id)
    .bind(p.now_ms)
    .bind(&p.workflow_id)
    .bind(&p.versions.accepts)
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    let rows: Vec<WorkflowRow> = rows
        .into_iter()
        .map(workflow_from_row)
        .collect::<StorageResult<_>>()?;
    Ok(rows
        .into_iter()
        .filter(|r| r.status == Status::Running)
        .collect())
}

async fn steps_load(conn: &mut PgConnection, workflow_id: &str) -> StorageResult<Vec<StepRow>> {
    type StepTuple = (i32, String, String, Option<String>, Option<String>);
    let rows: Vec<StepTuple> = sqlx::query_as(
        "SELECT step_id, name, kind, output::text, error
           FROM tandem.steps WHERE workflow_id = $1 ORDER BY step_id",
    )
    .bind(workflow_id)
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    rows.into_iter()
        .map(|(step_id, name, kind, output, error)| step_row(step_id, name, kind, output, error))
        .collect()
}

async fn step_get(
    conn: &mut PgConnection,
    workflow_id: &str,
    step_id: i32,
) -> StorageResult<Option<StepRow>> {
    type StepTuple = (i32, String, String, Option<String>, Option<String>);
    // The primary key: one index probe.
    let row: Option<StepTuple> = sqlx::query_as(
        "SELECT step_id, name, kind, output::text, error
           FROM tandem.steps WHERE workflow_id = $1 AND step_id = $2",
    )
    .bind(workflow_id)
    .bind(step_id)
    .fetch_optional(conn)
    .await
    .map_err(map_err)?;
    row.map(|(step_id, name, kind, output, error)| step_row(step_id, name, kind, output, error))
        .transpose()
}

fn step_row(
    step_id: i32,
    name: String,
    kind: String,
    output: Option<String>,
    error: Option<String>,
) -> StorageResult<StepRow> {
    let kind = StepKind::parse(&kind).ok_or_else(|| {
        StorageError::new(ErrorKind::Other, format!("unknown step kind {kind:?}"))
    })?;
    Ok(StepRow {
        step_id,
        name,
        kind,
        output,
        error,
    })
}

/// Binds parameters $2..$7 of `filter_where!()`.
fn bind_filter<'q, Q: BindFilter<'q>>(query: Q, f: &'q WorkflowFilter) -> Q {
    query
        .bind_str(f.name.as_deref())
        .bind_str(f.queue.as_deref())
        .bind_i64(f.created_from_ms)
        .bind_i64(f.created_until_ms)
        .bind_str(f.version.as_deref())
        .bind_str(f.parent_id.as_deref())
}

/// The two query types `bind_filter` binds on.
trait BindFilter<'q>: Sized {
    fn bind_str(self, v: Option<&'q str>) -> Self;
    fn bind_i64(self, v: Option<i64>) -> Self;
}

impl<'q> BindFilter<'q> for sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    fn bind_str(self, v: Option<&'q str>) -> Self {
        self.bind(v)
    }
    fn bind_i64(self, v: Option<i64>) -> Self {
        self.bind(v)
    }
}

impl<'q, O> BindFilter<'q> for sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_str(self, v: Option<&'q str>) -> Self {
        self.bind(v)
    }
    fn bind_i64(self, v: Option<i64>) -> Self {
        self.bind(v)
    }
}

/// A `queues_info` row: name, global concurrency, rate limit count and
/// period, per-key concurrency, retention, enqueued and running counts,
/// and the oldest ready workflow's creation.
type QueueTuple = (
    String,
    Option<i32>,
    Option<i32>,
    Option<i64>,
    Option<i32>,
    Option<i64>,
    i64,
    i64,
    Option<i64>,
);

/// A row of `info_columns!()`: the workflow columns (decoded by position,
/// as `WorkflowTuple`), then priority and the four timestamps. Too many
/// columns for one tuple.
fn info_from_row(row: &PgRow) -> StorageResult<WorkflowInfo> {
    let info = || -> Result<_, sqlx::Error> {
        let w = <WorkflowTuple as sqlx::FromRow<PgRow>>::from_row(row)?;
        let n = 13;
        Ok((
            w,
            row.try_get::<i32, _>(n)?,
            row.try_get::<i64, _>(n + 1)?,
            row.try_get::<i64, _>(n + 2)?,
            row.try_get::<Option<i64>, _>(n + 3)?,
            row.try_get::<Option<i64>, _>(n + 4)?,
            row.try_get::<Option<String>, _>(n + 5)?,
        ))
    };
    let (w, priority, created_ms, updated_ms, started_ms, completed_ms, concurrency_key) =
        info().map_err(map_err)?;
    Ok(WorkflowInfo {
        row: workflow_from_row(w)?,
        priority,
        created_ms,
        updated_ms,
        started_ms,
        completed_ms,
        concurrency_key,
    })
}

pub(crate) async fn message_send(
    conn: &mut PgConnection,
    workflow_id: &str,
    topic: &str,
    payload: &str,
) -> StorageResult<()> {
    // Through the SQL function, so Rust and SQL callers share validation.
    sqlx::query("SELECT tandem.send($1, $2, $3::jsonb)")
        .bind(workflow_id)
        .bind(topic)
        .bind(payload)
        .execute(conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn step_record(conn: &mut PgConnection, p: StepRecord) -> StorageResult<StepRecorded> {
    super::debug_check_step_record(&p);
    // One statement does the fence check and the checkpoint insert, so a
    // transactional step costs no extra round trip and no row lock on the
    // workflow. The fence reads the statement's snapshot; that suffices
    // because the primary key, not the fence, is what makes a step
    // exactly-once: two executions can never both commit a checkpoint for the
    // same step. ON CONFLICT DO NOTHING waits for a concurrent inserter of
    // the same step and then reports "exists" instead of aborting.
    // A patch marker that changes the run's version (`version` set) is
    // fenced strictly instead: its UPDATE of the run's row waits for and
    // re-checks the newest row version and keeps the row locked to the
    // commit, and the insert depends on it. The caller rolls back when the
    // step exists, undoing the version change.
    let (epoch, status, inserted, stamped): (Option<i64>, Option<String>, bool, bool) =
        sqlx::query_as(
            "WITH stamp AS (
                 UPDATE tandem.workflows SET app_version = $11
                  WHERE $11::text IS NOT NULL
                    AND id = $1 AND owner_epoch = $7 AND status = 'RUNNING'
              RETURNING 1
             ), fence AS (
                 SELECT owner_epoch, status FROM tandem.workflows WHERE id = $1
             ), ins AS (
                 INSERT INTO tandem.steps
                     (workflow_id, step_id, name, kind, output, error, owner_epoch, attempts,
                      started_at, completed_at)
                 SELECT $1, $2, $3, $4, $5::jsonb, $6, $7, $8,
                        to_timestamp($9::float8 / 1000), to_timestamp($10::float8 / 1000)
                   FROM fence
                  WHERE fence.owner_epoch = $7 AND fence.status = 'RUNNING'
                    AND ($11::text IS NULL OR EXISTS (SELECT 1 FROM stamp))
                 ON CONFLICT (workflow_id, step_id) DO NOTHING
                 RETURNING 1
             )
             SELECT (SELECT owner_epoch FROM fence),
                    (SELECT status FROM fence),
                    EXISTS (SELECT 1 FROM ins),
                    EXISTS (SELECT 1 FROM stamp)",
        )
        .bind(&p.workflow_id)
        .bind(p.step_id)
        .bind(&p.name)
        .bind(p.kind.as_str())
        .bind(&p.output)
        .bind(&p.error)
        .bind(p.owner_epoch)
        .bind(p.attempts)
        .bind(p.started_ms)
        .bind(p.now_ms)
        .bind(&p.version)
        .fetch_one(conn)
        .await
        .map_err(map_err)?;
    if p.version.is_some() && !stamped {
        Err(fenced(&p.workflow_id))
    } else if inserted {
        Ok(StepRecorded::Recorded)
    } else if epoch == Some(p.owner_epoch) && status.as_deref() == Some("RUNNING") {
        Ok(StepRecorded::Exists)
    } else {
        Err(fenced(&p.workflow_id))
    }
}

async fn step_record_many(
    conn: &mut PgConnection,
    ps: Vec<StepRecord>,
) -> StorageResult<Vec<StorageResult<StepRecorded>>> {
    super::debug_check_many(
        ps.iter().map(|p| p.workflow_id.as_str()),
        ps.iter().any(|p| p.version.is_some()),
    );
    ps.iter().for_each(super::debug_check_step_record);
    // `step_record`'s statement for every checkpoint of the group at once:
    // each row's fence reads the statement's snapshot, the inserts wait for
    // concurrent inserters of the same step and skip them, and the
    // `steps_fence` trigger checks each inserted row again (its error fails
    // the whole statement; the caller then records each on its own). The
    // ordinality keeps the answers in the order of `ps`; the workflows are
    // distinct, so (workflow, step) names one entry.
    type Fenced = (Option<i64>, Option<String>, bool);
    let rows: Vec<Fenced> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::int8[], $8::int4[], $9::int8[], $10::int8[])
                    WITH ORDINALITY
                    AS i(workflow_id, step_id, name, kind, output, error, owner_epoch,
                         attempts, started_ms, now_ms, ord)
         ), fence AS (
             SELECT i.*, w.owner_epoch AS current_epoch, w.status AS current_status
               FROM input i LEFT JOIN tandem.workflows w ON w.id = i.workflow_id
         ), ins AS (
             INSERT INTO tandem.steps
                 (workflow_id, step_id, name, kind, output, error, owner_epoch, attempts,
                  started_at, completed_at)
             SELECT workflow_id, step_id, name, kind, output::jsonb, error, owner_epoch,
                    attempts, to_timestamp(started_ms::float8 / 1000),
                    to_timestamp(now_ms::float8 / 1000)
               FROM fence
              WHERE current_epoch = owner_epoch AND current_status = 'RUNNING'
              ORDER BY workflow_id
             ON CONFLICT (workflow_id, step_id) DO NOTHING
             RETURNING workflow_id
         )
         SELECT f.current_epoch, f.current_status,
                EXISTS (SELECT 1 FROM ins WHERE ins.workflow_id = f.workflow_id)
           FROM fence f ORDER BY f.ord",
    )
    .bind(
        ps.iter()
            .map(|p| p.workflow_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(ps.iter().map(|p| p.step_id).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.kind.as_str()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.output.as_deref()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.error.as_deref()).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.owner_epoch).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.attempts).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.started_ms).collect::<Vec<_>>())
    .bind(ps.iter().map(|p| p.now_ms).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    if rows.len() != ps.len() {
        return Err(StorageError::new(
            ErrorKind::Other,
            format!("{} checkpoints answered {} rows", ps.len(), rows.len()),
        ));
    }
    Ok(ps
        .iter()
        .zip(rows)
        .map(|(p, (epoch, status, inserted))| {
            if inserted {
                Ok(StepRecorded::Recorded)
            } else if epoch == Some(p.owner_epoch) && status.as_deref() == Some("RUNNING") {
                Ok(StepRecorded::Exists)
            } else {
                Err(fenced(&p.workflow_id))
            }
        })
        .collect())
}

async fn executor_register(conn: &mut PgConnection, p: ExecutorRegister) -> StorageResult<()> {
    executor_heartbeat(conn, &p.executor_id, p.now_ms, p.lease_ms).await?;
    sqlx::query("UPDATE tandem.executors SET app_version = $2, accepts = $3 WHERE id = $1")
        .bind(&p.executor_id)
        .bind(&p.versions.version)
        .bind(&p.versions.accepts)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    // Upserts in name order, so that executors launching at once lock the
    // shared rows in the same order and never deadlock.
    let mut workflows = p.workflows;
    workflows.sort();
    for (name, input_types) in workflows {
        sqlx::query(
            "INSERT INTO tandem.workflow_names (name, input_types, registered_at)
             VALUES ($1, $2, to_timestamp($3::float8 / 1000))
             ON CONFLICT (name) DO UPDATE
                SET input_types = excluded.input_types, registered_at = excluded.registered_at",
        )
        .bind(&name)
        .bind(&input_types)
        .bind(p.now_ms)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    let mut queues = p.queues;
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    for q in queues {
        sqlx::query(
            "INSERT INTO tandem.queues (name, concurrency_global, rate_limit_count, rate_limit_period_ms,
                                        concurrency_per_key, retention_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE
                SET concurrency_global = excluded.concurrency_global,
                    rate_limit_count = excluded.rate_limit_count,
                    rate_limit_period_ms = excluded.rate_limit_period_ms,
                    concurrency_per_key = excluded.concurrency_per_key,
                    retention_ms = excluded.retention_ms",
        )
        .bind(&q.name)
        .bind(q.concurrency_global.map(|n| n as i32))
        .bind(q.rate_limit.map(|(n, _)| n as i32))
        .bind(q.rate_limit.map(|(_, ms)| ms))
        .bind(q.concurrency_per_key.map(|n| n as i32))
        .bind(q.retention_ms)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    let mut schedules = p.schedules;
    schedules.sort_by(|a, b| a.name.cmp(&b.name));
    for d in schedules {
        // The declaration is the last launch's; the cursor and the pause
        // survive a redeploy. A new schedule's cursor starts at the database
        // clock: it does not catch up on its own past.
        sqlx::query(
            "INSERT INTO tandem.schedules AS s (name, workflow_name, cron, time_zone, queue, catch_up,
                                           catch_up_max, grace_ms, cursor_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, tandem.clock_ms(), tandem.clock_ms())
             ON CONFLICT (name) DO UPDATE
                SET workflow_name = excluded.workflow_name, cron = excluded.cron,
                    time_zone = excluded.time_zone, queue = excluded.queue,
                    catch_up = excluded.catch_up, catch_up_max = excluded.catch_up_max,
                    grace_ms = excluded.grace_ms,
                    updated_ms = CASE
                        WHEN (s.workflow_name, s.cron, s.time_zone, s.queue, s.catch_up,
                              s.catch_up_max, s.grace_ms)
                             IS DISTINCT FROM
                             (excluded.workflow_name, excluded.cron, excluded.time_zone,
                              excluded.queue, excluded.catch_up, excluded.catch_up_max,
                              excluded.grace_ms)
                        THEN excluded.updated_ms ELSE s.updated_ms END",
        )
        .bind(&d.name)
        .bind(&d.workflow)
        .bind(&d.cron)
        .bind(&d.time_zone)
        .bind(&d.queue)
        .bind(&d.catch_up)
        .bind(d.catch_up_max.map(|n| n as i32))
        .bind(d.grace_ms)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    sqlx::query(
        "INSERT INTO tandem.settings (key, value)
         VALUES ('notify_on_enqueue', $1), ('payload_max_bytes', $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(p.notify_on_enqueue.to_string())
    .bind(p.payload_max_bytes.to_string())
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn executor_heartbeat(
    conn: &mut PgConnection,
    executor_id: &str,
    now_ms: i64,
    lease_ms: i64,
) -> StorageResult<()> {
    // An upsert: if a peer reaped this executor while it was paused, the
    // heartbeat brings it back (its old workflows were fenced by the reap).
    sqlx::query(
        "INSERT INTO tandem.executors (id, started_at, heartbeat_at, lease_expires_at)
         VALUES ($1, to_timestamp($2::float8 / 1000), to_timestamp($2::float8 / 1000),
                 clock_timestamp() + $3::bigint * interval '1 millisecond')
         ON CONFLICT (id) DO UPDATE
            SET heartbeat_at = excluded.heartbeat_at, lease_expires_at = excluded.lease_expires_at",
    )
    .bind(executor_id)
    .bind(now_ms)
    .bind(lease_ms)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn workflows_reclaim(conn: &mut PgConnection, now_ms: i64) -> StorageResult<u64> {
    // All CTEs share one snapshot, so the NOT EXISTS below still sees the
    // executors this statement deletes: `dead` is checked explicitly. The
    // UPDATE re-checks each row's newest version (a concurrent reaper's
    // re-enqueue makes the row no longer RUNNING, so it is bumped once).
    let (count,): (i64,) = sqlx::query_as(
        "WITH dead AS (
             DELETE FROM tandem.executors
              WHERE lease_expires_at < clock_timestamp()
          RETURNING id
         ), requeued AS (
             UPDATE tandem.workflows w
                SET status = 'ENQUEUED', executor_id = NULL, owner_epoch = w.owner_epoch + 1,
                    updated_at = to_timestamp($1::float8 / 1000)
              WHERE w.status = 'RUNNING'
                AND (w.executor_id IN (SELECT id FROM dead)
                     OR NOT EXISTS (SELECT 1 FROM tandem.executors e WHERE e.id = w.executor_id))
          RETURNING 1
         )
         SELECT count(*) FROM requeued",
    )
    .bind(now_ms)
    .fetch_one(conn)
    .await
    .map_err(map_err)?;
    Ok(count as u64)
}

/// For a limited queue: locks the queue's row (serializing its claimers
/// without stricter isolation: every claimer's next statement sees the claims
/// committed before it got the lock) and returns how many more workflows may
/// start now. `None` for an unlimited queue.
async fn claim_budget(conn: &mut PgConnection, p: &WorkflowsClaim) -> StorageResult<Option<u32>> {
    if !p.queue.is_limited() {
        return Ok(None);
    }
    sqlx::query("SELECT 1 FROM tandem.queues WHERE name = $1 FOR UPDATE")
        .bind(&p.queue.name)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let period_ms = p.queue.rate_limit.map_or(0, |(_, ms)| ms);
    let (running, recent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'RUNNING'),
                count(*) FILTER (WHERE started_at > clock_timestamp() - $2 * interval '1 millisecond')
           FROM tandem.workflows
          WHERE queue = $1
            AND (status = 'RUNNING'
                 OR started_at > clock_timestamp() - $2 * interval '1 millisecond')",
    )
    .bind(&p.queue.name)
    .bind(period_ms)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(Some(p.queue.budget(running, recent)))
}

async fn workflows_claim(
    conn: &mut PgConnection,
    p: WorkflowsClaim,
) -> StorageResult<Vec<WorkflowRow>> {
    if p.queue.concurrency_per_key.is_some() {
        return workflows_claim_per_key(conn, p).await;
    }
    // SKIP LOCKED: concurrent claimers take different rows instead of
    // queueing behind each other. The outer UPDATE re-checks each locked
    // row's newest version, and the lock taken by the inner SELECT keeps it
    // from changing in between, so a row is never claimed twice.
    let rows: Vec<WorkflowTuple> = sqlx::query_as(concat!(
        "WITH ready AS (
             SELECT id FROM tandem.workflows
              WHERE ",
        ready_rows!("$6"),
        "
              ORDER BY priority, created_at, id
              LIMIT $4
                FOR UPDATE SKIP LOCKED
         )
         UPDATE tandem.workflows w
            SET status = 'RUNNING', executor_id = $5, owner_epoch = w.owner_epoch + 1,
                started_at = clock_timestamp(),
                updated_at = to_timestamp($3::float8 / 1000),
                app_version = COALESCE(w.app_version, $7)
           FROM ready
          WHERE w.id = ready.id
      RETURNING ",
        prefixed_workflow_columns!()
    ))
    .bind(&p.queue.name)
    .bind(&p.names)
    .bind(p.now_ms)
    .bind(i64::from(p.limit))
    .bind(&p.executor_id)
    .bind(&p.versions.accepts)
    .bind(&p.versions.version)
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    rows.into_iter().map(workflow_from_row).collect()
}

/// The claim of a queue with a per-key concurrency limit. Claimers of such
/// a queue hold its row lock (`claim_budget`), so each statement's snapshot
/// sees every claim before it, and only a claim makes a keyed workflow
/// `RUNNING`. Per key, only the first (limit - running) ready workflows in
/// claim order are eligible, ranked before any is locked: one locked by
/// another transaction still takes its key's turn, so no key ever runs
/// more than its limit. The eligible ones are then taken in claim order,
/// skipping locked rows, up to the claim's limit.
///
/// The ranking reads only a prefix of the ready workflows in claim order
/// (through the `workflows_ready` index), which is exact for every row in
/// it: a row's turn counts only rows of its key before it. When the prefix
/// was cut short and did not yield the whole batch, the next statement
/// looks at a prefix eight times longer (and at last at every ready row),
/// with the rows claimed so far now counted as running: the same rows a
/// ranking of the whole backlog would take, at the cost of the prefix a
/// claim needs, not of the backlog (`benches/benches/claim.rs`).
async fn workflows_claim_per_key(
    conn: &mut PgConnection,
    p: WorkflowsClaim,
) -> StorageResult<Vec<WorkflowRow>> {
    let mut claimed = Vec::new();
    let mut prefix: Option<i64> = Some((i64::from(p.limit) * 16).max(256));
    loop {
        let want = i64::from(p.limit) - claimed.len() as i64;
        let rows: Vec<PgRow> = sqlx::query(concat!(
            "WITH running AS (
                 SELECT concurrency_key, count(*) AS n FROM tandem.workflows
                  WHERE status = 'RUNNING' AND queue = $1 AND concurrency_key IS NOT NULL
                  GROUP BY concurrency_key
             ), prefix AS (
                 SELECT id, concurrency_key, priority, created_at FROM tandem.workflows
                  WHERE ",
            ready_rows!("$6"),
            "
                  ORDER BY priority, created_at, id
                  LIMIT $9
             ), ranked AS (
                 SELECT id, concurrency_key, priority, created_at,
                        row_number() OVER (PARTITION BY concurrency_key
                                           ORDER BY priority, created_at, id) AS turn
                   FROM prefix
             ), eligible AS (
                 SELECT r.id, r.priority, r.created_at FROM ranked r
                   LEFT JOIN running ON running.concurrency_key = r.concurrency_key
                  WHERE r.concurrency_key IS NULL OR r.turn + COALESCE(running.n, 0) <= $8
             ), ready AS (
                 SELECT w.id FROM tandem.workflows w JOIN eligible e ON e.id = w.id
                  WHERE w.status = 'ENQUEUED'
                  ORDER BY e.priority, e.created_at, e.id
                  LIMIT $4
                    FOR UPDATE OF w SKIP LOCKED
             )
             UPDATE tandem.workflows w
                SET status = 'RUNNING', executor_id = $5, owner_epoch = w.owner_epoch + 1,
                    started_at = clock_timestamp(),
                    updated_at = to_timestamp($3::float8 / 1000),
                    app_version = COALESCE(w.app_version, $7)
               FROM ready
              WHERE w.id = ready.id
          RETURNING ",
            prefixed_workflow_columns!(),
            ", (SELECT count(*) FROM prefix)"
        ))
        .bind(&p.queue.name)
        .bind(&p.names)
        .bind(p.now_ms)
        .bind(want)
        .bind(&p.executor_id)
        .bind(&p.versions.accepts)
        .bind(&p.versions.version)
        .bind(p.queue.concurrency_per_key.map(i64::from))
        .bind(prefix)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        let scanned = match rows.first() {
            // The column after the workflow's (`WorkflowTuple`'s 13).
            Some(row) => row.try_get::<i64, _>(13).map_err(map_err)?,
            // Nothing claimed: whether the prefix held every ready row is
            // one more, cheap, look (the saturated queue's usual case).
            None => match prefix {
                None => 0,
                Some(n) => sqlx::query_scalar(concat!(
                    "SELECT count(*) FROM (SELECT 1 FROM tandem.workflows WHERE ",
                    ready_rows!("$4"),
                    " LIMIT $5) s"
                ))
                .bind(&p.queue.name)
                .bind(&p.names)
                .bind(p.now_ms)
                .bind(&p.versions.accepts)
                .bind(n)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?,
            },
        };
        for row in &rows {
            let tuple = <WorkflowTuple as sqlx::FromRow<PgRow>>::from_row(row).map_err(map_err)?;
            claimed.push(workflow_from_row(tuple)?);
        }
        let short = (claimed.len() as u32) < p.limit;
        match prefix {
            Some(n) if short && scanned >= n => {
                prefix = n.checked_mul(8).filter(|n| *n <= 1 << 20);
            }
            _ => return Ok(claimed),
        }
    }
}

async fn workflows_owned(
    conn: &mut PgConnection,
    executor_id: &str,
) -> StorageResult<Vec<(String, i64)>> {
    // Served by the partial index workflows_running_by_executor.
    sqlx::query_as(
        "SELECT id, owner_epoch FROM tandem.workflows
          WHERE executor_id = $1 AND status = 'RUNNING'
          ORDER BY id",
    )
    .bind(executor_id)
    .fetch_all(conn)
    .await
    .map_err(map_err)
}

async fn workflows_release(
    conn: &mut PgConnection,
    executor_id: &str,
    now_ms: i64,
) -> StorageResult<u64> {
    let (count,): (i64,) = sqlx::query_as(
        "WITH released AS (
             UPDATE tandem.workflows
                SET status = 'ENQUEUED', executor_id = NULL, owner_epoch = owner_epoch + 1,
                    updated_at = to_timestamp($2::float8 / 1000)
              WHERE executor_id = $1 AND status = 'RUNNING'
          RETURNING 1
         ), gone AS (
             DELETE FROM tandem.executors WHERE id = $1
         )
         SELECT count(*) FROM released",
    )
    .bind(executor_id)
    .bind(now_ms)
    .fetch_one(conn)
    .await
    .map_err(map_err)?;
    Ok(count as u64)
}

pub(crate) async fn workflow_enqueue(
    conn: &mut PgConnection,
    p: WorkflowEnqueue,
) -> StorageResult<String> {
    // The Rust side of the outbox is the SQL function itself, so both paths
    // validate and deduplicate identically.
    sqlx::query_scalar(
        "SELECT tandem.enqueue_workflow($1, $2::jsonb, $3, $4, $5, $6,
                                        $7::bigint * interval '1 millisecond', $8, $9, $10,
                                        $11::bigint * interval '1 millisecond', $12)",
    )
    .bind(&p.name)
    .bind(&p.input)
    .bind(&p.queue)
    .bind(&p.workflow_id)
    .bind(p.priority)
    .bind(&p.dedup_key)
    .bind(p.delay_ms)
    .bind(p.dedup_error)
    .bind(&p.concurrency_key)
    .bind(&p.debounce_key)
    .bind(p.debounce_max_wait_ms)
    .bind(&p.trace_parent)
    .fetch_one(conn)
    .await
    .map_err(map_err)
}

/// The one place that maps sqlx errors to [`ErrorKind`].
fn schedule_from_row(r: &PgRow) -> StorageResult<ScheduleState> {
    let get = || -> Result<ScheduleState, sqlx::Error> {
        Ok(ScheduleState {
            decl: ScheduleDecl {
                name: r.try_get(0)?,
                workflow: r.try_get(1)?,
                cron: r.try_get(2)?,
                time_zone: r.try_get(3)?,
                queue: r.try_get(4)?,
                catch_up: r.try_get(5)?,
                catch_up_max: r.try_get::<Option<i32>, _>(6)?.map(|n| n.max(0) as u32),
                grace_ms: r.try_get(7)?,
            },
            paused: r.try_get(8)?,
            cursor_ms: r.try_get(9)?,
            last_tick_ms: r.try_get(10)?,
            updated_ms: r.try_get(11)?,
            now_ms: r.try_get(12)?,
        })
    };
    get().map_err(map_err)
}

fn map_err(error: sqlx::Error) -> StorageError {
    match kind_of(&error) {
        ErrorKind::Denied => StorageError::new(ErrorKind::Denied, Denied(error)),
        kind => StorageError::new(kind, error),
    }
}

/// A privilege the role lacks: PostgreSQL's message names the object, and
/// this says which of Tandem's roles grants it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} (SQLSTATE 42501): grant this database role tandem_executor to run workflows, \
     tandem_enqueuer to enqueue and send, or tandem_operator to inspect and manage them \
     (docs/security.md)",
    db_message(.0)
)]
struct Denied(#[source] sqlx::Error);

/// The database's own message, without sqlx's prefix.
fn db_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

fn kind_of(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .as_deref()
            .map_or(ErrorKind::Other, classify_sqlstate),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// A cancel's cascade (`tandem.cancel_tree`, migrations/0007_roles.sql,
/// which says why it goes level by level). Without `fence` it goes through
/// `tandem.cancel_workflow`, which an operator may call; with `fence` (a
/// deadline's cancel, by the executor running the workflow) the root is
/// cancelled only while it runs under that epoch, and nothing otherwise.
async fn cancel_tree(
    conn: &mut PgConnection,
    id: &str,
    reason: &str,
    now_ms: i64,
    fence: Option<i64>,
) -> StorageResult<Vec<String>> {
    let query = match fence {
        None => sqlx::query_scalar("SELECT tandem.cancel_workflow($1, $2, $3)")
            .bind(id)
            .bind(reason)
            .bind(now_ms),
        Some(epoch) => sqlx::query_scalar("SELECT tandem.cancel_tree($1, $2, $3, $4)")
            .bind(id)
            .bind(reason)
            .bind(now_ms)
            .bind(epoch),
    };
    query.fetch_one(conn).await.map_err(map_err)
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::PgCluster;

    async fn fresh() -> String {
        let cluster = PgCluster::shared().await.expect("test server");
        cluster.create_database().await.expect("test database")
    }

    #[tokio::test]
    async fn concurrent_migrations_from_several_processes_apply_once() {
        let url = fresh().await;
        // Separate pools stand in for separate processes: each migrates on
        // its own connection, all at once.
        let mut storages = Vec::new();
        for _ in 0..4 {
            storages.push(PgStorage::connect(&url).await.unwrap());
        }
        let [a, b, c, d] = &storages[..] else {
            unreachable!()
        };
        let results = tokio::join!(a.migrate(), b.migrate(), c.migrate(), d.migrate());
        for result in [results.0, results.1, results.2, results.3] {
            result.unwrap();
        }
        let pool = storages[0].pool();
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM tandem._sqlx_migrations")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(applied, MIGRATOR.migrations.len() as i64);
        // The application's own sqlx migrations table is untouched.
        let public: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations')::text")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(public, None);
        // Migrating again is a no-op.
        storages[0].migrate().await.unwrap();
    }

    #[tokio::test]
    async fn conflicts_and_outages_are_retryable_and_app_errors_are_not() {
        let url = fresh().await;
        let storage = PgStorage::connect(&url).await.unwrap();
        let pool = storage.pool();
        sqlx::raw_sql(
            "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0);",
        )
        .execute(pool)
        .await
        .unwrap();

        // 40001: a REPEATABLE READ transaction updates a row another
        // transaction changed after its snapshot.
        let mut a = pool.begin().await.unwrap();
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *a)
            .await
            .unwrap();
        sqlx::query("SELECT v FROM t WHERE id = 1")
            .execute(&mut *a)
            .await
            .unwrap();
        sqlx::query("UPDATE t SET v = 1 WHERE id = 1")
            .execute(pool)
            .await
            .unwrap();
        let err = sqlx::query("UPDATE t SET v = 2 WHERE id = 1")
            .execute(&mut *a)
            .await
            .unwrap_err();
        assert_eq!(
            PgStorage::classify(&err),
            Some(ErrorKind::Conflict),
            "{err}"
        );
        // Wrapped in another error, the cause is still found.
        let wrapped: Box<dyn std::error::Error + Send + Sync> =
            Box::new(StorageError::new(ErrorKind::Other, err));
        assert_eq!(PgStorage::classify(&*wrapped), Some(ErrorKind::Conflict));
        a.rollback().await.unwrap();

        // An application error that is not a conflict is the step's failure.
        let err = sqlx::query("INSERT INTO t VALUES (1, 0)")
            .execute(pool)
            .await
            .unwrap_err();
        assert_eq!(PgStorage::classify(&err), None, "{err}");
        assert_eq!(kind_of(&err), ErrorKind::Invalid);

        // A closed server is unavailable.
        let err = PgStorage::connect("postgres://postgres@127.0.0.1:1/none")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
}
