//! The enqueue target (to be written).

/// Runs one input.
pub fn run(_data: &[u8]) {}
