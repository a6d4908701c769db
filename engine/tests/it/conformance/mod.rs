//! The conformance suite: the same storage-level scenarios on PostgreSQL and
//! on the memory model, hand-written (`scenarios`) and generated
//! (`differential`). The engine-level behaviour tests (workflows, faults,
//! bad input, crashes) run on both backends through `support::both!`.

mod differential;
mod harness;
mod scenarios;
