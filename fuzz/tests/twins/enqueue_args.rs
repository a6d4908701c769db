//! The stable twin of `enqueue_args` (to be written).
