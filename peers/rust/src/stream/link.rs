//! The connection a stream end talks through. A connection carries at most one stream each way
//! (§12): a reply stream shares it with the stream it answers, so both ends hold one [`Link`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::channel::Channel;

/// A channel owned alone or shared by the two directions of one connection.
#[derive(Clone)]
pub(super) struct Link(Arc<Mutex<Channel>>);

impl Link {
    pub(super) fn new(channel: Channel) -> Link {
        Link(Arc::new(Mutex::new(channel)))
    }

    /// The channel, for one call (each end is single-threaded; the lock is uncontended).
    pub(super) fn get(&self) -> MutexGuard<'_, Channel> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Done with the connection: hangs up unless the other direction still uses it (it then
    /// closes when that end is done, or when both are dropped).
    pub(super) fn leave(&self) {
        if Arc::strong_count(&self.0) == 1 {
            self.get().hang_up();
        }
    }

    /// Hangs up even if the other direction uses the connection (a consumer leaving early).
    pub(super) fn hang_up(&self) {
        self.get().hang_up();
    }
}
