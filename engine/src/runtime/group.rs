//! Group commit: the starts, the plain checkpoints and the completions of
//! many workflows of one executor share one statement, and so one commit.
//!
//! A start, a plain checkpoint and a completion are each one autocommit
//! statement on their own. Under load an executor sends many at once, each paying its own
//! round trip, commit and WAL flush. Here the first caller with nothing in
//! flight becomes the *leader* and runs its own statement at once: at one
//! in flight nothing waits and nothing changes. Callers arriving while a
//! leader's statement runs queue up; when it finishes the leader hands the
//! lead to the oldest of them, who sends the whole queue (up to the group's
//! size) as one multi-row statement
//! ([`Storage::step_record_many`](crate::storage::Storage::step_record_many)).
//! So the delay a grouped write waits is bounded by one statement in flight,
//! and there is no timer to tune.
//!
//! What makes it safe:
//! - nobody is answered before the statement that holds their write has
//!   committed (its answers come from the committed statement); the planted
//!   bug `GroupAcksBeforeCommit` breaks this and the simulator catches it;
//! - a group's entries name distinct workflows, and each entry's answer is
//!   what its statement alone would have answered (its own fence);
//! - if the group's statement fails, nobody is told anything it did not
//!   commit: every entry goes back to its caller, who sends it alone, and
//!   retries it as it would any write (each is idempotent: a checkpoint that
//!   committed answers "exists", a completion that committed is found by
//!   the fenced path's re-read, a start that committed finds its row);
//! - a leader whose future is dropped (its caller stopped waiting) still
//!   hands the lead on, and its followers retry: their outcome is unknown,
//!   as after a lost connection.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::storage::{
    ErrorKind, StepRecord, StepRecorded, Storage, StorageError, StorageResult, WorkflowComplete,
    WorkflowInsert, WorkflowInserted,
};

/// A write that can join a group: one statement alone, or many in one.
pub(crate) trait Grouped: Clone + Send + Sized + 'static {
    /// What the write's statement answers.
    type Done: Send + 'static;

    /// The workflow written: one group holds each workflow at most once.
    fn workflow_id(&self) -> &str;

    /// The write in a statement of its own.
    fn one<S: Storage>(self, storage: &S)
    -> impl Future<Output = StorageResult<Self::Done>> + Send;

    /// The writes in one statement.
    fn many<S: Storage>(
        group: Vec<Self>,
        storage: &S,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<Self::Done>>>> + Send;

    /// What a write is assumed to answer ([`Bug::GroupAcksBeforeCommit`]).
    ///
    /// [`Bug::GroupAcksBeforeCommit`]: crate::bugs::Bug::GroupAcksBeforeCommit
    fn assumed() -> Self::Done;
}

impl Grouped for StepRecord {
    type Done = StepRecorded;

    fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    fn one<S: Storage>(
        self,
        storage: &S,
    ) -> impl Future<Output = StorageResult<StepRecorded>> + Send {
        storage.step_record(self)
    }

    fn many<S: Storage>(
        group: Vec<Self>,
        storage: &S,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<StepRecorded>>>> + Send {
        storage.step_record_many(group)
    }

    fn assumed() -> StepRecorded {
        StepRecorded::Recorded
    }
}

impl Grouped for WorkflowComplete {
    type Done = ();

    fn workflow_id(&self) -> &str {
        &self.id
    }

    fn one<S: Storage>(self, storage: &S) -> impl Future<Output = StorageResult<()>> + Send {
        storage.workflow_complete(self)
    }

    fn many<S: Storage>(
        group: Vec<Self>,
        storage: &S,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<()>>>> + Send {
        storage.workflow_complete_many(group)
    }

    fn assumed() {}
}

impl Grouped for WorkflowInsert {
    type Done = WorkflowInserted;

    fn workflow_id(&self) -> &str {
        &self.id
    }

    fn one<S: Storage>(
        self,
        storage: &S,
    ) -> impl Future<Output = StorageResult<WorkflowInserted>> + Send {
        storage.workflow_insert(self)
    }

    fn many<S: Storage>(
        group: Vec<Self>,
        storage: &S,
    ) -> impl Future<Output = StorageResult<Vec<StorageResult<WorkflowInserted>>>> + Send {
        storage.workflow_insert_many(group)
    }

    fn assumed() -> WorkflowInserted {
        WorkflowInserted::Inserted
    }
}

/// What a queued caller is told.
enum Reply<P: Grouped> {
    /// The committed answer to its write.
    Done(StorageResult<P::Done>),
    /// It leads now: here is its write back, to send with the queue.
    Lead(P),
    /// The group's statement failed: here is its write back, to send alone.
    Alone(P),
}

struct Waiter<P: Grouped> {
    write: P,
    reply: oneshot::Sender<Reply<P>>,
}

struct State<P: Grouped> {
    /// Whether a leader's statement is in flight.
    leading: bool,
    queue: VecDeque<Waiter<P>>,
}

/// One executor's group of one kind of write.
pub(crate) struct Group<P: Grouped> {
    state: Mutex<State<P>>,
    /// At most this many writes per statement; 1 turns grouping off.
    size: usize,
}

impl<P: Grouped> Group<P> {
    pub(crate) fn new(size: usize) -> Self {
        Group {
            state: Mutex::new(State {
                leading: false,
                queue: VecDeque::new(),
            }),
            size: size.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `write`, alone or with the writes queued meanwhile, and
    /// returns its answer once the statement holding it has committed.
    pub(crate) async fn submit<S: Storage>(&self, storage: &S, write: P) -> StorageResult<P::Done> {
        if self.size == 1 {
            return write.one(storage).await;
        }
        let queued = {
            let mut state = self.lock();
            if state.leading {
                let (reply, answer) = oneshot::channel();
                state.queue.push_back(Waiter { write, reply });
                Err(answer)
            } else {
                state.leading = true;
                Ok(write)
            }
        };
        let write = match queued {
            Ok(write) => write,
            Err(answer) => {
                let mut waiting = Waiting {
                    group: self,
                    answer,
                    answered: false,
                };
                let reply = (&mut waiting.answer).await;
                waiting.answered = true;
                match reply {
                    Ok(Reply::Done(done)) => return done,
                    Ok(Reply::Alone(write)) => return write.one(storage).await,
                    Ok(Reply::Lead(write)) => write,
                    Err(_) => return Err(leader_gone()),
                }
            }
        };
        let lead = Lead { group: self };
        let followers = lead.take(write.workflow_id());
        lead.run(storage, write, followers).await
    }
}

/// A queued caller's wait. Dropped before its answer was taken (its
/// caller stopped waiting), it takes the lead if one was handed to it and
/// hands it on: a lead sent into a dropped wait would otherwise be lost,
/// and every later write would queue behind a leader that does not exist.
struct Waiting<'g, P: Grouped> {
    group: &'g Group<P>,
    answer: oneshot::Receiver<Reply<P>>,
    answered: bool,
}

impl<P: Grouped> Drop for Waiting<'_, P> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // After `close` no leader can hand this wait the lead; one handed
        // before is still in the channel.
        self.answer.close();
        if let Ok(Reply::Lead(_)) = self.answer.try_recv() {
            drop(Lead { group: self.group });
        }
    }
}

/// The lead, held while a leader's statement is in flight; dropping it
/// (after the statement, or with the leader's future) hands it on.
struct Lead<'g, P: Grouped> {
    group: &'g Group<P>,
}

impl<P: Grouped> Lead<'_, P> {
    /// Up to `size - 1` queued writes of other workflows than `mine` and
    /// each other, oldest first; the rest stay queued in their order.
    /// Callers that stopped waiting are dropped.
    fn take(&self, mine: &str) -> Vec<Waiter<P>> {
        let mut state = self.group.lock();
        let mut taken: Vec<Waiter<P>> = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(w) = state.queue.pop_front() {
            if w.reply.is_closed() {
                continue;
            }
            let distinct = w.write.workflow_id() != mine
                && taken
                    .iter()
                    .all(|t| t.write.workflow_id() != w.write.workflow_id());
            if distinct && taken.len() + 1 < self.group.size {
                taken.push(w);
            } else {
                kept.push_back(w);
            }
        }
        state.queue = kept;
        taken
    }

    async fn run<S: Storage>(
        self,
        storage: &S,
        mine: P,
        followers: Vec<Waiter<P>>,
    ) -> StorageResult<P::Done> {
        if followers.is_empty() {
            return mine.one(storage).await;
        }
        let (writes, replies): (Vec<P>, Vec<_>) =
            followers.into_iter().map(|w| (w.write, w.reply)).unzip();
        let mut group = Vec::with_capacity(writes.len() + 1);
        group.push(mine.clone());
        group.extend(writes.iter().cloned());
        let mut replies: Vec<Option<oneshot::Sender<Reply<P>>>> =
            replies.into_iter().map(Some).collect();
        if crate::bugs::active(crate::bugs::Bug::GroupAcksBeforeCommit) {
            for reply in replies.iter_mut().filter_map(Option::take) {
                let _ = reply.send(Reply::Done(Ok(P::assumed())));
            }
        }
        match P::many(group, storage).await {
            Ok(answers) if answers.len() == writes.len() + 1 => {
                let mut answers = answers.into_iter();
                let own = answers.next().expect("one answer per write");
                for (reply, answer) in replies.into_iter().zip(answers) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Reply::Done(answer));
                    }
                }
                own
            }
            failed => {
                // Nothing of the group is known to have committed: each write
                // goes back to its caller, to be sent alone (in parallel, not
                // one after another here).
                if let Err(error) = &failed {
                    tracing::debug!(%error, size = writes.len() + 1, "group commit failed; writing each alone");
                }
                for (reply, write) in replies.into_iter().zip(writes) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Reply::Alone(write));
                    }
                }
                drop(self);
                mine.one(storage).await
            }
        }
    }
}

impl<P: Grouped> Drop for Lead<'_, P> {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        while let Some(w) = state.queue.pop_front() {
            match w.reply.send(Reply::Lead(w.write)) {
                Ok(()) => return,
                // That caller stopped waiting: try the next.
                Err(_) => continue,
            }
        }
        state.leading = false;
    }
}

/// A follower whose leader's future was dropped before answering: its write
/// may or may not have committed, as after a lost connection.
fn leader_gone() -> StorageError {
    StorageError::new(
        ErrorKind::Unavailable,
        "the group commit holding this write stopped before its answer; retrying",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStorage;
    use crate::storage::{StepKind, Transaction, WorkflowInsert, WorkflowInserted};

    fn insert(id: &str) -> WorkflowInsert {
        WorkflowInsert {
            id: id.to_owned(),
            name: "w".to_owned(),
            input: "null".to_owned(),
            executor_id: "e".to_owned(),
            parent_id: None,
            parent_epoch: None,
            deadline_ms: None,
            version: "v".to_owned(),
            trace_parent: None,
            now_ms: 0,
        }
    }

    fn step(id: &str, epoch: i64) -> StepRecord {
        StepRecord {
            workflow_id: id.to_owned(),
            step_id: 0,
            name: "s".to_owned(),
            kind: StepKind::Plain,
            output: Some("1".to_owned()),
            error: None,
            owner_epoch: epoch,
            attempts: 1,
            started_ms: 0,
            now_ms: 0,
            version: None,
        }
    }

    async fn storage(ids: &[&str]) -> MemStorage {
        let storage = MemStorage::new();
        storage.migrate().await.unwrap();
        for id in ids {
            let inserted = storage.workflow_insert(insert(id)).await.unwrap();
            assert_eq!(inserted, WorkflowInserted::Inserted);
        }
        storage
    }

    /// Writes queued behind a leader go out together, each with its own
    /// answer: a fenced entry does not fail its neighbours, and a second
    /// write of one workflow waits for the next statement.
    #[tokio::test]
    async fn queued_writes_share_a_statement_and_keep_their_own_answers() {
        let storage = storage(&["a", "b", "c", "d"]).await;
        let group = Group::new(8);
        // Hold the lead by hand, queue four writes, then let them go.
        group.lock().leading = true;
        let writes = [step("b", 1), step("c", 2), step("d", 1), step("b", 1)];
        let mut answers = Vec::new();
        for w in writes {
            let (storage, group) = (&storage, &group);
            answers.push(async move { group.submit(storage, w).await });
        }
        let lead = async {
            tokio::task::yield_now().await;
            assert_eq!(group.lock().queue.len(), 4, "every write queued");
            drop(Lead { group: &group });
        };
        let (answers, ()) = tokio::join!(futures_join(answers), lead);
        let answers: Vec<String> = answers
            .into_iter()
            .map(|a| match a {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("{:?}", e.kind()),
            })
            .collect();
        assert_eq!(answers, ["Recorded", "Fenced", "Recorded", "Exists"]);
        assert!(!group.lock().leading, "the lead is released");
        let mut tx = storage.begin().await.unwrap();
        assert!(tx.step_get("b", 0).await.unwrap().is_some());
        assert!(tx.step_get("c", 0).await.unwrap().is_none());
    }

    /// Runs the futures concurrently, in order of their answers' positions.
    async fn futures_join<F: Future>(fs: Vec<F>) -> Vec<F::Output> {
        let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
        let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
                if o.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *o = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().map(Option::unwrap).collect()
    }

    /// A leader whose caller stops waiting still hands the lead on: the
    /// next write is not stranded behind it.
    #[tokio::test]
    async fn a_dropped_leader_hands_the_lead_on() {
        let storage = storage(&["a", "b"]).await;
        let group = Group::new(8);
        group.lock().leading = true;
        let (storage_ref, group_ref) = (&storage, &group);
        let follower = async move { group_ref.submit(storage_ref, step("a", 1)).await };
        let mut follower = Box::pin(follower);
        assert!(futures_poll_once(&mut follower).await.is_pending());
        // The leader "stops": its lead drops.
        drop(Lead { group: &group });
        assert_eq!(follower.await.unwrap(), StepRecorded::Recorded);
        assert!(!group.lock().leading);
    }

    /// A queued caller that is handed the lead but stops waiting before it
    /// takes it hands the lead on: the writes behind it are not stranded.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // a bound on a test that would hang
    async fn a_lead_handed_to_a_caller_that_stopped_waiting_is_handed_on() {
        let storage = storage(&["a", "b"]).await;
        let group = Group::new(8);
        group.lock().leading = true;
        let (storage_ref, group_ref) = (&storage, &group);
        let mut first = Box::pin(async move { group_ref.submit(storage_ref, step("a", 1)).await });
        let mut second = Box::pin(async move { group_ref.submit(storage_ref, step("b", 1)).await });
        assert!(futures_poll_once(&mut first).await.is_pending());
        assert!(futures_poll_once(&mut second).await.is_pending());
        // The leader finishes: the lead goes to `first`, which is dropped
        // before it runs again.
        drop(Lead { group: &group });
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), second)
            .await
            .expect("the write behind the dropped caller is stranded");
        assert_eq!(second.unwrap(), StepRecorded::Recorded);
        assert!(!group.lock().leading, "the lead is released");
    }

    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx)))
            .await
    }
}
