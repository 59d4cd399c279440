//! One producer, many subscribers joining over a listening socket (§12.4).

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::channel::{Listener, Options};
use crate::error::{err, ErrorCode, Result};
use crate::ring::poll_readable;

use super::{deadline_of, RingProducer, WriterOptions};

/// ring once. Subscribers are admitted between writes and while waiting for subscribers.
pub struct Publication {
    listener: Option<Listener>,
    producer: RingProducer,
    subscribe_timeout: Duration,
}

/// Publishes a stream of `schema` at `address` (a listening socket).
pub fn publish(address: &str, schema: SchemaRef, options: WriterOptions) -> Result<Publication> {
    let producer = RingProducer::new(schema, options)?;
    let listener = Listener::bind(address, Options::default())?;
    Ok(Publication { listener: Some(listener), producer, subscribe_timeout: Duration::from_secs(5) })
}

impl Publication {
    /// The address the publication listens on (`None` once closed).
    pub fn address(&self) -> Option<&str> {
        self.listener.as_ref().map(|l| l.address())
    }

    /// Subscribers attached right now.
    pub fn subscribers(&mut self) -> usize {
        self.producer.readers()
    }

    /// Accepts one connection waiting (up to `timeout`) and attaches it on its SUBSCRIBE.
    /// Returns whether a connection came; a bad subscriber only costs its own connection.
    fn admit(&mut self, timeout: Duration) -> Result<bool> {
        let Some(listener) = &self.listener else { return Ok(false) };
        if !poll_readable(&[listener.raw_fd()], timeout.as_millis().min(i32::MAX as u128) as i32)?[0] {
            return Ok(false);
        }
        let Ok(mut ch) = listener.accept(Some(self.subscribe_timeout)) else { return Ok(true) };
        ch.accept_subscribe = true;
        let deadline = Some(Instant::now() + self.subscribe_timeout);
        if ch.pump_until(deadline, |c| !c.subscribes.is_empty()).is_err() {
            return Ok(true);
        }
        let frame = ch.subscribes.pop_front().expect("a SUBSCRIBE");
        // One SUBSCRIBE per connection: later ones are refused, never queued.
        ch.accept_subscribe = false;
        ch.subscribes.clear();
        let _ = self.producer.attach(ch, frame.message_id);
        Ok(true)
    }

    /// Returns once at least `count` subscribers are attached (`ERR_TIMEOUT` after `timeout`).
    pub fn wait_for_subscribers(&mut self, count: usize, timeout: Option<Duration>) -> Result<()> {
        let deadline = deadline_of(timeout);
        while self.subscribers() < count {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(100),
            };
            if left.is_zero() {
                return err(ErrorCode::Timeout, format!("fewer than {count} subscribers within the timeout"));
            }
            self.admit(left.min(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// Publishes a batch to every subscriber (waiting for slow ones per the options).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        while self.admit(Duration::ZERO)? {}
        self.producer.write(batch)
    }

    /// Ends the publication: the END record, then waits until every subscriber released
    /// everything or left; then closes every connection.
    pub fn finish(mut self, timeout: Option<Duration>) -> Result<()> {
        self.listener = None;
        let r = self.producer.end(timeout);
        self.producer.close();
        r
    }
}

