//! A `watch` channel whose wake-ups come in a fixed order.
//!
//! `tokio::sync::watch` spreads its waiters over eight `Notify`s picked by a
//! thread-local generator seeded from a process-wide counter, and wakes them
//! shard by shard: two runs of one simulated seed in one process woke the
//! same waiters in different orders, and diverged (docs/simulation.md,
//! "Determinism"). This one keeps its waiters in one `Notify`, whose list
//! wakes them in the order they began to wait.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct State<T> {
    value: T,
    /// Whether the sender is gone: waiters stop waiting.
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    changed: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half: sets the value and wakes every waiter.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A receiving half: waits for the value to satisfy a condition.
#[derive(Clone)]
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// The sender was dropped before the value satisfied the condition.
#[derive(Debug)]
pub(crate) struct Closed;

/// A channel holding `value`.
pub(crate) fn channel<T>(value: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value,
            closed: false,
        }),
        changed: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl<T: Clone> Sender<T> {
    /// Replaces the value, wakes the waiters, returns the old value.
    pub(crate) fn send_replace(&self, value: T) -> T {
        let old = std::mem::replace(&mut self.shared.lock().value, value);
        self.shared.changed.notify_waiters();
        old
    }

    /// Changes the value in place and wakes the waiters.
    pub(crate) fn send_modify(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.shared.lock().value);
        self.shared.changed.notify_waiters();
    }

    /// The current value.
    pub(crate) fn get(&self) -> T {
        self.shared.lock().value.clone()
    }

    /// A new receiver.
    pub(crate) fn subscribe(&self) -> Receiver<T> {
        Receiver {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_waiters();
    }
}

impl<T: Clone> Receiver<T> {
    /// The current value.
    pub(crate) fn get(&self) -> T {
        self.shared.lock().value.clone()
    }

    /// Waits until the value satisfies `f` (at once if it does) and returns
    /// it; fails if the sender is dropped first.
    pub(crate) async fn wait_for(&mut self, mut f: impl FnMut(&T) -> bool) -> Result<T, Closed> {
        loop {
            // Registered before the check, so a change in between still
            // wakes this wait.
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.shared.lock();
                if f(&state.value) {
                    return Ok(state.value.clone());
                }
                if state.closed {
                    return Err(Closed);
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_sees_the_value_it_waits_for_and_stops_when_the_sender_goes() {
        let (tx, mut rx) = channel(0);
        let (seen, ()) = tokio::join!(rx.wait_for(|n| *n >= 2), async {
            tx.send_replace(1);
            tokio::task::yield_now().await;
            tx.send_modify(|n| *n += 1);
        });
        assert_eq!(seen.unwrap(), 2);
        let mut rx = tx.subscribe();
        drop(tx);
        assert!(rx.wait_for(|n| *n > 5).await.is_err());
    }
}
