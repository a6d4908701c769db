//! Integration tests of the engine, on a real PostgreSQL server (a
//! throw-away cluster unless `DATABASE_URL` is set) and on the memory model:
//! the behaviour tests run on both backends, and the conformance suite
//! compares the two directly.

mod bad_input;
mod cli;
mod concurrency_keys;
mod conformance;
mod crash;
mod crash_doc_example;
mod crash_harness;
mod dashboard;
mod debounce;
mod deploy_check;
mod executors;
mod faults;
mod outbox;
mod pg_restart;
mod plans;
mod pooler;
mod retention;
mod roles;
mod schedules;
mod small_pool;
mod steering;
mod support;
mod versions;
mod workflows;
