//! Integration tests of the engine against a real PostgreSQL server (a
//! throw-away cluster unless `DATABASE_URL` is set).

mod bad_input;
mod cli;
mod crash;
mod executors;
mod faults;
mod outbox;
mod pg_restart;
mod steering;
mod support;
mod workflows;
