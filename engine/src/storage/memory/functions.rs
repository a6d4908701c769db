//! Models of the SQL functions `tandem.enqueue_workflow` and `tandem.send`:
//! their validation, messages and SQLSTATEs, statement by statement.

use super::*;
use crate::storage::{CONCURRENCY_KEY_MAX_CHARS, check_trace_parent};

impl MemConn {
    /// `tandem.enqueue_workflow`, statement by statement.
    pub(super) async fn workflow_enqueue(
        &mut self,
        p: WorkflowEnqueue,
    ) -> Result<String, MemError> {
        let snap = self.start("workflow_enqueue")?;
        let (id, row, notify) = {
            let mut db = self.storage.db();
            match enqueue_checked(&mut db, &snap, &p) {
                Ok(checked) => checked,
                Err(e) => return Err(self.s.fail(&mut db, e)),
            }
        };
        if row.debounce_key.is_some() {
            return self.debounce(p, id, row, notify).await;
        }
        // INSERT ... ON CONFLICT DO NOTHING with no target: both the
        // primary key and the partial unique index workflows_dedup are
        // arbiters; a concurrent inserter of either makes this one wait.
        let unfinished =
            |w: &WorkflowRecord| matches!(w.status, Status::Enqueued | Status::Running);
        let inserted = loop {
            let wake = {
                let mut db = self.storage.db();
                let (t, txs) = Workflows.split(&mut db);
                let mut check = t.unique(txs, self.s.xid, &id);
                if check == Unique::Free
                    && let Some(key) = &row.dedup_key
                    && !crate::bugs::active(crate::bugs::Bug::EnqueueIgnoresDedup)
                {
                    check = t.unique_where(txs, self.s.xid, |w| {
                        w.queue == row.queue && w.dedup_key.as_ref() == Some(key) && unfinished(w)
                    });
                }
                match check {
                    Unique::Free => {
                        t.insert(&snap, id.clone(), row.clone());
                        break true;
                    }
                    Unique::Conflict => break false,
                    Unique::WaitFor(x) => self.s.wait(&mut db, WaitTarget::Tx(x), vec![x])?,
                }
            };
            self.s.block(wake).await?;
        };
        if inserted {
            self.s.notify |= notify;
            return Ok(id);
        }
        let mut db = self.storage.db();
        // Idempotent on the workflow ID (a statement of its own).
        let snap = self.s.substatement(&db);
        if let Some(existing) = read(&Workflows, &mut db, &snap, &id) {
            if existing.name != p.name {
                let e = raise(
                    "23505",
                    "tandem.enqueue_workflow",
                    format!(
                        "workflow ID \"{id}\" belongs to workflow \"{}\", not \"{}\"",
                        existing.name, p.name
                    ),
                );
                return Err(self.s.fail(&mut db, e));
            }
            return Ok(id);
        }
        // A deduplication conflict: the unfinished workflow holding the key.
        let snap = self.s.substatement(&db);
        let holder = {
            let (t, txs) = Workflows.split(&mut db);
            t.scan(txs, &snap, ..)
                .map(|(k, i)| t.data(k, i))
                .find(|w| w.queue == row.queue && w.dedup_key == row.dedup_key && unfinished(w))
                .map(|w| w.id.clone())
        };
        if let Some(holder) = holder {
            if p.dedup_error {
                let e = raise(
                    "23505",
                    "tandem.enqueue_workflow",
                    format!(
                        "queue \"{}\" already has an unfinished workflow with dedup_key \"{}\": \"{holder}\"",
                        row.queue,
                        row.dedup_key.as_deref().unwrap_or_default()
                    ),
                );
                return Err(self.s.fail(&mut db, e));
            }
            return Ok(holder);
        }
        let e = raise(
            "40001",
            "tandem.enqueue_workflow",
            format!("concurrent conflict on workflow \"{id}\", retry"),
        );
        Err(self.s.fail(&mut db, e))
    }

    /// The debounce branch of `tandem.enqueue_workflow`: up to three rounds
    /// of an UPDATE of the pending workflow of the queue, name and key (it
    /// waits for a row's holder and re-checks the newest version), then an
    /// INSERT ... ON CONFLICT DO NOTHING whose arbiter is the partial unique
    /// index workflows_debounce (a concurrent inserter makes it wait; one
    /// that committed sends it back to the UPDATE).
    async fn debounce(
        &mut self,
        p: WorkflowEnqueue,
        id: String,
        row: WorkflowRecord,
        notify: bool,
    ) -> Result<String, MemError> {
        let key = row.debounce_key.clone().unwrap_or_default();
        let delay = p.delay_ms.unwrap_or(0);
        let max_wait = p.debounce_max_wait_ms.unwrap_or(0);
        let now_ms = row.created_ms;
        let pending = |w: &WorkflowRecord| {
            let unstarted = (w.status == Status::Enqueued && w.owner_epoch == EPOCH_NEVER_RAN)
                || (crate::bugs::active(crate::bugs::Bug::DebounceUpdatesStarted)
                    && w.status == Status::Running);
            w.queue == row.queue
                && w.name == row.name
                && w.debounce_key.as_deref() == Some(key.as_str())
                && unstarted
        };
        let indexed = |w: &WorkflowRecord| {
            w.queue == row.queue
                && w.name == row.name
                && w.debounce_key.as_deref() == Some(key.as_str())
                && w.status == Status::Enqueued
                && w.owner_epoch == EPOCH_NEVER_RAN
        };
        for _ in 0..3 {
            let snap = {
                let db = self.storage.db();
                self.s.substatement(&db)
            };
            let updated = self
                .update_all(&Workflows, &snap, |w| {
                    pending(w).then(|| WorkflowRecord {
                        input: row.input.clone(),
                        trace_parent: row.trace_parent.clone(),
                        run_after_ms: Some(
                            now_ms
                                .saturating_add(delay)
                                .min(w.created_ms.saturating_add(max_wait)),
                        ),
                        updated_ms: now_ms,
                        ..w.clone()
                    })
                })
                .await?;
            if let Some(w) = updated.first() {
                return Ok(w.id.clone());
            }
            let snap = {
                let db = self.storage.db();
                self.s.substatement(&db)
            };
            loop {
                let wake = {
                    let mut db = self.storage.db();
                    let (t, txs) = Workflows.split(&mut db);
                    let mut check = t.unique(txs, self.s.xid, &id);
                    if check == Unique::Free {
                        check = t.unique_where(txs, self.s.xid, indexed);
                    }
                    match check {
                        Unique::Free => {
                            t.insert(&snap, id.clone(), row.clone());
                            self.s.notify |= notify;
                            return Ok(id);
                        }
                        Unique::Conflict => break,
                        Unique::WaitFor(x) => self.s.wait(&mut db, WaitTarget::Tx(x), vec![x])?,
                    }
                };
                self.s.block(wake).await?;
            }
        }
        let mut db = self.storage.db();
        let e = raise(
            "40001",
            "tandem.enqueue_workflow",
            format!("concurrent conflict on debounce_key \"{key}\", retry"),
        );
        Err(self.s.fail(&mut db, e))
    }

    /// `tandem.send`.
    pub(super) async fn message_send(
        &mut self,
        workflow_id: &str,
        topic: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<(), MemError> {
        let snap = self.start("message_send")?;
        let mut db = self.storage.db();
        db.tick(now_ms);
        let checked = (|| {
            text_args([&workflow_id.to_owned(), &topic.to_owned()])?;
            let payload = jsonb_text(payload)?;
            if read(&Workflows, &mut db, &snap, &workflow_id.to_owned()).is_none() {
                return Err(raise(
                    "22023",
                    "tandem.send",
                    format!("unknown workflow \"{workflow_id}\""),
                ));
            }
            let max = payload_max_bytes(&mut db, &snap);
            if payload.len() as i64 > max {
                return Err(raise(
                    "54000",
                    "tandem.send",
                    format!(
                        "message is {} bytes, over the limit of {max} bytes",
                        payload.len()
                    ),
                ));
            }
            Ok(payload)
        })();
        let payload = match checked {
            Ok(payload) => payload,
            Err(e) => return Err(self.s.fail(&mut db, e)),
        };
        // The identity column: a sequence, so ids order messages by send.
        db.message_seq += 1;
        let id = db.message_seq;
        let notify = notify_on_enqueue(&mut db, &snap);
        let (t, _) = Messages.split(&mut db);
        t.insert(
            &snap,
            id,
            MessageRecord {
                workflow_id: workflow_id.to_owned(),
                topic: topic.to_owned(),
                payload,
                created_ms: now_ms,
            },
        );
        self.s.notify |= notify;
        Ok(())
    }
}

pub(super) fn payload_max_bytes(db: &mut Db, snap: &Snapshot) -> i64 {
    read(&Settings, db, snap, &"payload_max_bytes".to_owned())
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MAX)
}

pub(super) fn notify_on_enqueue(db: &mut Db, snap: &Snapshot) -> bool {
    read(&Settings, db, snap, &"notify_on_enqueue".to_owned()).as_deref() == Some("true")
}

/// An error raised by the SQL function `function`.
pub(super) fn raise(sqlstate: &'static str, function: &str, message: String) -> MemError {
    MemError::Raised {
        sqlstate,
        message: format!("{function}: {message}"),
    }
}

/// The validation of `tandem.enqueue_workflow`, in its order and with its
/// messages; then the row to insert, and whether to notify.
pub(super) fn enqueue_checked(
    db: &mut Db,
    snap: &Snapshot,
    p: &WorkflowEnqueue,
) -> Result<(String, WorkflowRecord, bool), MemError> {
    pub(super) const F: &str = "tandem.enqueue_workflow";
    // PostgreSQL refuses the arguments before the function runs.
    text_args(
        [&p.name, &p.queue]
            .into_iter()
            .chain(p.workflow_id.as_ref())
            .chain(p.dedup_key.as_ref())
            .chain(p.concurrency_key.as_ref())
            .chain(p.debounce_key.as_ref())
            .chain(p.trace_parent.as_ref()),
    )?;
    // The `$2::jsonb` cast happens before the function runs.
    let input = jsonb_text(&p.input)?;
    let id = match &p.workflow_id {
        Some(id) => id.clone(),
        None => {
            // gen_random_uuid(); a counter keeps simulations replayable.
            db.uuid_seq += 1;
            format!("00000000-0000-4000-8000-{:012x}", db.uuid_seq)
        }
    };
    let Some(types) = read(&WorkflowNames, db, snap, &p.name) else {
        return Err(raise(
            "22023",
            F,
            format!("unknown workflow name \"{}\"", p.name),
        ));
    };
    let kind = jsonb_typeof(&input);
    if !types.iter().any(|t| t == kind) {
        return Err(raise(
            "22023",
            F,
            format!(
                "workflow \"{}\" takes JSON {}, not {kind}",
                p.name,
                types.join(" or ")
            ),
        ));
    }
    if read(&Queues, db, snap, &p.queue).is_none() {
        return Err(raise("22023", F, format!("unknown queue \"{}\"", p.queue)));
    }
    let max = payload_max_bytes(db, snap);
    if input.len() as i64 > max {
        return Err(raise(
            "54000",
            F,
            format!(
                "input is {} bytes, over the limit of {max} bytes",
                input.len()
            ),
        ));
    }
    if !(-1_000_000..=1_000_000).contains(&p.priority) {
        return Err(raise(
            "22023",
            F,
            "priority must be between -1000000 and 1000000".to_owned(),
        ));
    }
    if p.delay_ms.is_some_and(|d| d < 0) {
        return Err(raise("22023", F, "delay must not be negative".to_owned()));
    }
    if !(1..=WORKFLOW_ID_MAX_CHARS).contains(&id.chars().count()) {
        return Err(raise(
            "22023",
            F,
            format!("workflow_id must be 1 to {WORKFLOW_ID_MAX_CHARS} characters"),
        ));
    }
    if p.concurrency_key
        .as_ref()
        .is_some_and(|k| !(1..=CONCURRENCY_KEY_MAX_CHARS).contains(&k.chars().count()))
    {
        return Err(raise(
            "22023",
            F,
            format!("concurrency_key must be 1 to {CONCURRENCY_KEY_MAX_CHARS} characters"),
        ));
    }
    if p.debounce_key.is_none() && p.debounce_max_wait_ms.is_some() {
        return Err(raise(
            "22023",
            F,
            "debounce_max_wait needs debounce_key".to_owned(),
        ));
    }
    if p.debounce_key
        .as_ref()
        .is_some_and(|k| !(1..=CONCURRENCY_KEY_MAX_CHARS).contains(&k.chars().count()))
    {
        return Err(raise(
            "22023",
            F,
            format!("debounce_key must be 1 to {CONCURRENCY_KEY_MAX_CHARS} characters"),
        ));
    }
    if p.debounce_key.is_some() && (p.workflow_id.is_some() || p.dedup_key.is_some()) {
        return Err(raise(
            "22023",
            F,
            "debounce_key cannot be combined with workflow_id or dedup_key".to_owned(),
        ));
    }
    if p.debounce_key.is_some() && (p.delay_ms.is_none() || p.debounce_max_wait_ms.is_none()) {
        return Err(raise(
            "22023",
            F,
            "debounce_key needs delay and debounce_max_wait".to_owned(),
        ));
    }
    if p.debounce_max_wait_ms.is_some_and(|m| m < 0) {
        return Err(raise(
            "22023",
            F,
            "debounce_max_wait must not be negative".to_owned(),
        ));
    }
    if let Some(reason) = p.trace_parent.as_deref().and_then(check_trace_parent) {
        return Err(raise("22023", F, reason.to_owned()));
    }
    // now(): the database clock.
    let now_ms = db.clock_ms;
    let row = WorkflowRecord {
        id: id.clone(),
        name: p.name.clone(),
        status: Status::Enqueued,
        input,
        output: None,
        error: None,
        executor_id: None,
        owner_epoch: EPOCH_NEVER_RAN,
        created_ms: now_ms,
        updated_ms: now_ms,
        completed_ms: None,
        queue: p.queue.clone(),
        priority: p.priority,
        dedup_key: p.dedup_key.clone(),
        concurrency_key: p.concurrency_key.clone(),
        debounce_key: p.debounce_key.clone(),
        // A debounced one starts `delay` from now, or at its maximum wait.
        run_after_ms: p.delay_ms.map(|d| {
            now_ms.saturating_add(match (&p.debounce_key, p.debounce_max_wait_ms) {
                (Some(_), Some(max_wait)) => d.min(max_wait),
                _ => d,
            })
        }),
        started_ms: None,
        parent_id: None,
        deadline_ms: None,
        wait_step: None,
        wait_until_ms: None,
        version: None,
        trace_parent: p.trace_parent.clone(),
    };
    Ok((id, row, notify_on_enqueue(db, snap)))
}

/// JSON text as a `jsonb` value prints it (`value::text`): keys sorted by
/// length then bytes, the last of duplicate keys kept, `": "` and `", "` as
/// separators. Numbers print as serde_json prints them, which differs from
/// PostgreSQL's `numeric` for some floats (out of scope). Invalid JSON fails
/// like the cast (22P02).
pub(super) fn jsonb_text(json: &str) -> Result<String, MemError> {
    let value: Value = serde_json::from_str(json).map_err(|e| MemError::Raised {
        sqlstate: "22P02",
        message: format!("invalid input syntax for type json: {e}"),
    })?;
    if jsonb_refuses(json) {
        // jsonb keeps strings as text, which cannot hold NUL; its lexer
        // refuses `\u0000` anywhere, even in a duplicate key's value.
        return Err(MemError::Raised {
            sqlstate: "22P05",
            message: "unsupported Unicode escape sequence".to_owned(),
        });
    }
    let mut out = String::new();
    write_jsonb(&value, &mut out);
    Ok(out)
}

/// PostgreSQL's `text` cannot hold NUL: a parameter with one is refused
/// before the statement runs.
pub(super) fn text_args<'a>(args: impl IntoIterator<Item = &'a String>) -> Result<(), MemError> {
    if args.into_iter().any(|a| a.contains('\0')) {
        return Err(MemError::Raised {
            sqlstate: "22021",
            message: "invalid byte sequence for encoding \"UTF8\": 0x00".to_owned(),
        });
    }
    Ok(())
}

pub(super) fn write_jsonb(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then(a.0.cmp(b.0)));
            out.push('{');
            for (n, (k, v)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_jsonb(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, v) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_jsonb(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `jsonb_typeof` of JSON text the model produced.
pub(super) fn jsonb_typeof(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}
