//! A generator of [`Transaction`](super::Transaction) forwarders, for
//! wrappers around a backend's transaction (the simulator's, the tests'
//! probe): the signatures are written once, here, next to the trait.

/// Implements the named [`Transaction`](crate::storage::Transaction)
/// operations of a wrapper by forwarding each to the field `inner`, after
/// awaiting the wrapper's own method `before(op_name)` (latency, counting,
/// ...) if one is named: `forward_transaction!(inner, before; ops)` or
/// `forward_transaction!(inner; ops)`.
/// List the operations to forward; write the others (and `conn`, `commit`,
/// `rollback`) by hand. A trait operation that is neither listed nor
/// written is a compile error, so a new operation cannot be forgotten.
///
/// ```ignore
/// impl Transaction for MyTx {
///     type Conn = MemConn;
///     fn conn(&mut self) -> &mut MemConn { self.tx.conn() }
///     tandem::forward_transaction!(tx, before; workflow_get, steps_load);
///     // ... commit, rollback and the rest by hand
/// }
/// ```
#[macro_export]
macro_rules! forward_transaction {
    ($inner:ident, $before:ident; $($op:ident),* $(,)?) => {
        $( $crate::forward_transaction!(@one $inner, [$before], $op); )*
    };
    ($inner:ident; $($op:ident),* $(,)?) => {
        $( $crate::forward_transaction!(@one $inner, [], $op); )*
    };
    (@one $inner:ident, [$($before:ident)?], workflow_insert) => {
        async fn workflow_insert(&mut self, params: $crate::storage::WorkflowInsert) -> $crate::storage::StorageResult<$crate::storage::WorkflowInserted> {
            $( self.$before("workflow_insert").await; )?
            self.$inner.workflow_insert(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_get) => {
        async fn workflow_get(&mut self, id: &str) -> $crate::storage::StorageResult<::std::option::Option<$crate::storage::WorkflowRow>> {
            $( self.$before("workflow_get").await; )?
            self.$inner.workflow_get(id).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_complete) => {
        async fn workflow_complete(&mut self, params: $crate::storage::WorkflowComplete) -> $crate::storage::StorageResult<()> {
            $( self.$before("workflow_complete").await; )?
            self.$inner.workflow_complete(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_recover) => {
        async fn workflows_recover(&mut self, params: $crate::storage::WorkflowsRecover) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::WorkflowRow>> {
            $( self.$before("workflows_recover").await; )?
            self.$inner.workflows_recover(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], steps_load) => {
        async fn steps_load(&mut self, workflow_id: &str) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::StepRow>> {
            $( self.$before("steps_load").await; )?
            self.$inner.steps_load(workflow_id).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], step_get) => {
        async fn step_get(&mut self, workflow_id: &str, step_id: i32) -> $crate::storage::StorageResult<::std::option::Option<$crate::storage::StepRow>> {
            $( self.$before("step_get").await; )?
            self.$inner.step_get(workflow_id, step_id).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], step_record) => {
        async fn step_record(&mut self, params: $crate::storage::StepRecord) -> $crate::storage::StorageResult<$crate::storage::StepRecorded> {
            $( self.$before("step_record").await; )?
            self.$inner.step_record(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_insert_many) => {
        async fn workflow_insert_many(&mut self, params: ::std::vec::Vec<$crate::storage::WorkflowInsert>) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::StorageResult<$crate::storage::WorkflowInserted>>> {
            $( self.$before("workflow_insert_many").await; )?
            self.$inner.workflow_insert_many(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], step_record_many) => {
        async fn step_record_many(&mut self, params: ::std::vec::Vec<$crate::storage::StepRecord>) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::StorageResult<$crate::storage::StepRecorded>>> {
            $( self.$before("step_record_many").await; )?
            self.$inner.step_record_many(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_complete_many) => {
        async fn workflow_complete_many(&mut self, params: ::std::vec::Vec<$crate::storage::WorkflowComplete>) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::StorageResult<()>>> {
            $( self.$before("workflow_complete_many").await; )?
            self.$inner.workflow_complete_many(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], executor_register) => {
        async fn executor_register(&mut self, params: $crate::storage::ExecutorRegister) -> $crate::storage::StorageResult<()> {
            $( self.$before("executor_register").await; )?
            self.$inner.executor_register(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], executor_heartbeat) => {
        async fn executor_heartbeat(&mut self, executor_id: &str, now_ms: i64, lease_ms: i64) -> $crate::storage::StorageResult<()> {
            $( self.$before("executor_heartbeat").await; )?
            self.$inner.executor_heartbeat(executor_id, now_ms, lease_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_reclaim) => {
        async fn workflows_reclaim(&mut self, now_ms: i64) -> $crate::storage::StorageResult<u64> {
            $( self.$before("workflows_reclaim").await; )?
            self.$inner.workflows_reclaim(now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_claim) => {
        async fn workflows_claim(&mut self, params: $crate::storage::WorkflowsClaim) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::WorkflowRow>> {
            $( self.$before("workflows_claim").await; )?
            self.$inner.workflows_claim(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_release) => {
        async fn workflows_release(&mut self, executor_id: &str, now_ms: i64) -> $crate::storage::StorageResult<u64> {
            $( self.$before("workflows_release").await; )?
            self.$inner.workflows_release(executor_id, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_enqueue) => {
        async fn workflow_enqueue(&mut self, params: $crate::storage::WorkflowEnqueue) -> $crate::storage::StorageResult<::std::string::String> {
            $( self.$before("workflow_enqueue").await; )?
            self.$inner.workflow_enqueue(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_suspend) => {
        async fn workflow_suspend(&mut self, id: &str, owner_epoch: i64, run_after_ms: i64, now_ms: i64) -> $crate::storage::StorageResult<()> {
            $( self.$before("workflow_suspend").await; )?
            self.$inner.workflow_suspend(id, owner_epoch, run_after_ms, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], message_send) => {
        async fn message_send(&mut self, workflow_id: &str, topic: &str, payload: &str, now_ms: i64) -> $crate::storage::StorageResult<()> {
            $( self.$before("message_send").await; )?
            self.$inner.message_send(workflow_id, topic, payload, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], recv_deadline) => {
        async fn recv_deadline(&mut self, workflow_id: &str, owner_epoch: i64, step_id: i32, deadline_ms: i64) -> $crate::storage::StorageResult<i64> {
            $( self.$before("recv_deadline").await; )?
            self.$inner.recv_deadline(workflow_id, owner_epoch, step_id, deadline_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], message_take) => {
        async fn message_take(&mut self, workflow_id: &str, topic: &str, owner_epoch: i64) -> $crate::storage::StorageResult<::std::option::Option<::std::string::String>> {
            $( self.$before("message_take").await; )?
            self.$inner.message_take(workflow_id, topic, owner_epoch).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], event_set) => {
        async fn event_set(&mut self, workflow_id: &str, key: &str, value: &str, now_ms: i64) -> $crate::storage::StorageResult<()> {
            $( self.$before("event_set").await; )?
            self.$inner.event_set(workflow_id, key, value, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], event_get) => {
        async fn event_get(&mut self, workflow_id: &str, key: &str) -> $crate::storage::StorageResult<::std::option::Option<::std::string::String>> {
            $( self.$before("event_get").await; )?
            self.$inner.event_get(workflow_id, key).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_cancel_overdue) => {
        async fn workflow_cancel_overdue(&mut self, id: &str, owner_epoch: i64, now_ms: i64) -> $crate::storage::StorageResult<::std::vec::Vec<::std::string::String>> {
            $( self.$before("workflow_cancel_overdue").await; )?
            self.$inner.workflow_cancel_overdue(id, owner_epoch, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_cancel) => {
        async fn workflows_cancel(&mut self, id: &str, reason: &str, now_ms: i64) -> $crate::storage::StorageResult<::std::vec::Vec<::std::string::String>> {
            $( self.$before("workflows_cancel").await; )?
            self.$inner.workflows_cancel(id, reason, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_resume) => {
        async fn workflow_resume(&mut self, id: &str, now_ms: i64) -> $crate::storage::StorageResult<bool> {
            $( self.$before("workflow_resume").await; )?
            self.$inner.workflow_resume(id, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_fork) => {
        async fn workflow_fork(&mut self, params: $crate::storage::WorkflowFork) -> $crate::storage::StorageResult<bool> {
            $( self.$before("workflow_fork").await; )?
            self.$inner.workflow_fork(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_gc) => {
        async fn workflows_gc(&mut self, params: $crate::storage::WorkflowsGc) -> $crate::storage::StorageResult<$crate::storage::GcCount> {
            $( self.$before("workflows_gc").await; )?
            self.$inner.workflows_gc(params).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], schedule_lock) => {
        async fn schedule_lock(&mut self, name: &str, now_ms: i64) -> $crate::storage::StorageResult<::std::option::Option<$crate::storage::ScheduleState>> {
            $( self.$before("schedule_lock").await; )?
            self.$inner.schedule_lock(name, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], schedule_advance) => {
        async fn schedule_advance(&mut self, name: &str, cursor_ms: i64, last_tick_ms: ::std::option::Option<i64>, now_ms: i64) -> $crate::storage::StorageResult<()> {
            $( self.$before("schedule_advance").await; )?
            self.$inner.schedule_advance(name, cursor_ms, last_tick_ms, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], schedule_pause) => {
        async fn schedule_pause(&mut self, name: &str, paused: bool, now_ms: i64) -> $crate::storage::StorageResult<::std::option::Option<$crate::storage::ScheduleState>> {
            $( self.$before("schedule_pause").await; )?
            self.$inner.schedule_pause(name, paused, now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], schedules_list) => {
        async fn schedules_list(&mut self, now_ms: i64) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::ScheduleState>> {
            $( self.$before("schedules_list").await; )?
            self.$inner.schedules_list(now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_owned) => {
        async fn workflows_owned(&mut self, executor_id: &str) -> $crate::storage::StorageResult<::std::vec::Vec<(::std::string::String, i64)>> {
            $( self.$before("workflows_owned").await; )?
            self.$inner.workflows_owned(executor_id).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_list) => {
        async fn workflows_list(&mut self, filter: $crate::storage::WorkflowFilter) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::WorkflowInfo>> {
            $( self.$before("workflows_list").await; )?
            self.$inner.workflows_list(filter).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflow_info) => {
        async fn workflow_info(&mut self, id: &str) -> $crate::storage::StorageResult<::std::option::Option<$crate::storage::WorkflowInfo>> {
            $( self.$before("workflow_info").await; )?
            self.$inner.workflow_info(id).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], steps_info) => {
        async fn steps_info(&mut self, workflow_id: &str) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::StepInfo>> {
            $( self.$before("steps_info").await; )?
            self.$inner.steps_info(workflow_id).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], workflows_count) => {
        async fn workflows_count(&mut self, filter: $crate::storage::WorkflowFilter, cap: u64) -> $crate::storage::StorageResult<::std::vec::Vec<($crate::storage::Status, u64)>> {
            $( self.$before("workflows_count").await; )?
            self.$inner.workflows_count(filter, cap).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], queues_info) => {
        async fn queues_info(&mut self, now_ms: i64) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::QueueInfo>> {
            $( self.$before("queues_info").await; )?
            self.$inner.queues_info(now_ms).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], executors_info) => {
        async fn executors_info(&mut self) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::ExecutorInfo>> {
            $( self.$before("executors_info").await; )?
            self.$inner.executors_info().await
        }
    };
    (@one $inner:ident, [$($before:ident)?], messages_info) => {
        async fn messages_info(&mut self, workflow_id: &str) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::MessageInfo>> {
            $( self.$before("messages_info").await; )?
            self.$inner.messages_info(workflow_id).await
        }
    };
    (@one $inner:ident, [$($before:ident)?], events_info) => {
        async fn events_info(&mut self, workflow_id: &str) -> $crate::storage::StorageResult<::std::vec::Vec<$crate::storage::EventInfo>> {
            $( self.$before("events_info").await; )?
            self.$inner.events_info(workflow_id).await
        }
    };
}
