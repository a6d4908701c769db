//! Fault interception at the storage seam, for crash-testing workflows
//! (`tandem::testing::CrashTest`): both backends report every engine
//! statement and commit to an [`Interceptor`], which may inject a fault or
//! hold the operation (a paused or crashed process).
//!
//! It lives inside the backends, not in a wrapper type, so that a user's
//! workflows written against `PgStorage` run under test unchanged. Without
//! an interceptor the cost is one `Option` check per operation.
//!
//! Faults are real where they can be: on PostgreSQL a lost connection
//! terminates the transaction's backend (`pg_terminate_backend`), and a
//! serialization failure is raised by the server (SQLSTATE 40001), so the
//! error the engine classifies is the server's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// When an operation reaches the interceptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Before an engine statement runs (inside a transaction, or an
    /// autocommit operation, which runs as a transaction of one statement
    /// while an interceptor is installed).
    Statement,
    /// Before `COMMIT` is sent.
    Commit,
    /// After `COMMIT` succeeded, before the engine learns it did.
    Committed,
}

/// One operation, as the interceptor sees it.
#[derive(Debug, Clone)]
pub struct Point {
    /// When.
    pub phase: Phase,
    /// The engine operation (`"step_record"`, `"workflows_claim"`, ...). At
    /// a commit: the transaction's last operation.
    pub op: &'static str,
    /// The transaction's operations so far, this one included.
    pub ops: Vec<&'static str>,
    /// Whether the transaction was handed to a transactional step
    /// (`Transaction::conn` was called): its application writes commit or
    /// roll back with it.
    pub app: bool,
    /// The workflow the transaction writes for, when an operation names one
    /// (the first named).
    pub workflow_id: Option<String>,
    /// The step being recorded, if any (the last named).
    pub step: Option<String>,
    /// Rows the transaction's claims and recoveries returned so far.
    pub rows: usize,
}

/// What happens to the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// It runs normally.
    Proceed,
    /// The connection drops: the transaction rolls back and the operation
    /// fails as unavailable. At [`Phase::Committed`]: as [`Verdict::LoseAck`].
    ConnectionLost,
    /// The server reports a serialization failure (40001): the transaction
    /// rolls back, the operation fails as a conflict. At a commit: nothing
    /// commits.
    SerializationFailure,
    /// At [`Phase::Committed`]: the commit happened but the engine is told
    /// the connection dropped (outcome unknown). Elsewhere: as
    /// [`Verdict::ConnectionLost`].
    LoseAck,
}

/// A future the interceptor returns.
pub type VerdictFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// Decides, at each engine operation, what happens to it. The future may
/// stay pending for as long as it likes (a paused process) or forever (a
/// crashed one, whose tasks are then aborted).
pub trait Interceptor: Send + Sync + 'static {
    /// Called at each [`Point`].
    fn at(&self, point: Point) -> VerdictFuture<'_>;
}

/// A transaction's view of its interceptor: what it did so far, so that a
/// commit can say what it commits.
#[derive(Default)]
pub(crate) struct Tap {
    interceptor: Option<Arc<dyn Interceptor>>,
    ops: Vec<&'static str>,
    app: bool,
    workflow_id: Option<String>,
    step: Option<String>,
    rows: usize,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("installed", &self.interceptor.is_some())
            .field("ops", &self.ops)
            .finish()
    }
}

impl Tap {
    pub(crate) fn new(interceptor: Option<Arc<dyn Interceptor>>) -> Self {
        Self {
            interceptor,
            ..Self::default()
        }
    }

    /// The transaction was handed to application code.
    pub(crate) fn app(&mut self) {
        self.app = true;
    }

    /// Claims and recoveries report how many rows they returned.
    pub(crate) fn rows(&mut self, n: usize) {
        self.rows += n;
    }

    /// Before statement `op`, naming the workflow and step it writes for.
    pub(crate) async fn statement(
        &mut self,
        op: &'static str,
        workflow_id: Option<&str>,
        step: Option<&str>,
    ) -> Verdict {
        if self.interceptor.is_none() {
            return Verdict::Proceed;
        }
        self.ops.push(op);
        if self.workflow_id.is_none() {
            self.workflow_id = workflow_id.map(str::to_owned);
        }
        if step.is_some() {
            self.step = step.map(str::to_owned);
        }
        self.ask(Phase::Statement).await
    }

    /// Before (`Commit`) or after (`Committed`) the commit.
    pub(crate) async fn commit(&self, phase: Phase) -> Verdict {
        self.ask(phase).await
    }

    async fn ask(&self, phase: Phase) -> Verdict {
        let Some(interceptor) = &self.interceptor else {
            return Verdict::Proceed;
        };
        let point = Point {
            phase,
            op: self.ops.last().copied().unwrap_or("begin"),
            ops: self.ops.clone(),
            app: self.app,
            workflow_id: self.workflow_id.clone(),
            step: self.step.clone(),
            rows: self.rows,
        };
        interceptor.at(point).await
    }
}

/// A storage handle's interceptor, if one is installed (cloned with the
/// handle).
#[derive(Clone, Default)]
pub(crate) struct Hook(Option<Arc<dyn Interceptor>>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(installed)"
        } else {
            "Hook(none)"
        })
    }
}

impl Hook {
    pub(crate) fn new(interceptor: Arc<dyn Interceptor>) -> Self {
        Self(Some(interceptor))
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn is_installed(&self) -> bool {
        self.0.is_some()
    }

    /// A new transaction's tap.
    pub(crate) fn tap(&self) -> Tap {
        Tap::new(self.0.clone())
    }
}
