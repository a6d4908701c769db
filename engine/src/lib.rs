//! Tandem: durable workflows whose state lives in your own PostgreSQL database.

#[cfg(feature = "testing")]
pub mod testing;
