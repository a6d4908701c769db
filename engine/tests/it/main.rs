//! Integration tests of the engine, on a real PostgreSQL server (a
//! throw-away cluster unless `DATABASE_URL` is set) and on the memory model:
//! the behaviour tests run on both backends, and the conformance suite
//! compares the two directly.

mod bad_input;
mod conformance;
mod crash;
mod faults;
mod pg_restart;
mod support;
mod workflows;
