//! The stable twin of `replay_history` (to be written).
