//! Streams of record batches through a shared ring (PROTOCOL.md §12).
//!
//! A [`StreamReader`] maps the producer's ring and decodes each batch in place (its column
//! buffers are slices of the ring mapping, which stays mapped while any of them lives); a
//! [`RingProducer`] owns a ring and writes batches into it for one ([`open_stream`]) or many
//! ([`Publication`]) consumers.
//!
//! Everything is single-threaded per side (`&mut self`), except [`StreamBatch::release`], which
//! may run on any thread: releases go through a small shared state.

mod consumer;
mod decoder;
mod encoder;
mod lease;
mod link;
mod open;
mod producer;
mod publication;

use std::time::{Duration, Instant};

pub use consumer::{subscribe, ReaderOptions, StreamReader};
pub use lease::StreamBatch;
pub use producer::{open_stream, RingProducer, StreamWriter, WriterOptions};
pub use publication::{publish, Publication};

/// Longest single sleep on an eventfd: a lost wake-up costs at most this much latency.
const SLEEP_BOUND: Duration = Duration::from_millis(50);

fn deadline_of(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

/// Milliseconds to sleep: at most [`SLEEP_BOUND`], at most until `deadline`.
fn sleep_ms(deadline: Option<Instant>) -> i32 {
    let bound = match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()).min(SLEEP_BOUND),
        None => SLEEP_BOUND,
    };
    bound.as_millis().max(1) as i32
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Busy-polls `ready` for up to `micros` µs (the optional spin before a sleep, §12.3).
fn spin_until(micros: u64, mut ready: impl FnMut() -> bool) -> bool {
    if micros == 0 {
        return false;
    }
    let until = Instant::now() + Duration::from_micros(micros);
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= until {
            return false;
        }
    }
}
