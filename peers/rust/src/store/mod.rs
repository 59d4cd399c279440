//! A client of a table store (PROTOCOL.md §15): put, get (zero copy, held until the table is
//! dropped), list, delete, watch, stats over one connection. The Node client is
//! src/store/client.ts, the Python one arrow_shm/store.py; names mirror them.
//!
//! The connection is a [`Channel`] that lists only `store`: its handshake, credentials, frame
//! reading and the §5.1 receive checks are the channel's (one home). This module adds the STORE
//! frame (kind 11), the requests and their answers.
//!
//! A [`StoreClient`] is `Send + Sync`: several threads may use it at once. One of them reads the
//! socket at a time, without holding the connection's lock, so a table dropped on another thread
//! meanwhile sends its `RELEASE` at once.
//!
//! ```no_run
//! use arrow_shm::store::{open_store, PutOptions, StoreOptions};
//! # fn main() -> arrow_shm::Result<()> {
//! let store = open_store("@my-store", StoreOptions::default())?;
//! let ipc = std::fs::read("table.arrows").unwrap();
//! store.put("prices/today", &ipc[..], &PutOptions::default())?;
//! let table = store.get("prices/today", None)?; // mapped read-only, held until dropped
//! println!("{} rows", table.decode()?.num_rows());
//! # Ok(())
//! # }
//! ```

mod protocol;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::Schema;

use crate::channel::{self, remote_error, Channel, Options, ReceivedTable};
use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{Frame, KeyValues, Kind, FLAG_INLINE, FLAG_LEASED, FLAG_REQUEST, FLAG_RESPONSE};
use crate::ipc;
use crate::sys;

pub use protocol::*;

/// A store answers a waiting get with `ERR_TIMEOUT` itself; the client gives it this much longer.
pub const GRACE: Duration = Duration::from_secs(5);
/// Events a watch keeps for a reader that does not take them (past it: `ERR_RESOURCE_LIMIT`).
pub const DEFAULT_MAX_QUEUED_EVENTS: usize = 4096;

/// Options of [`open_store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The connection's options, as a channel's: `timeout` (connect, retrying a store that is not
    /// listening yet, and the handshake), `allowed_uids`, `max_message_bytes` (the largest table a
    /// get maps), `limits` (what a received table may decode to, §14.1).
    pub options: Options,
    /// Events a watch keeps for a reader that does not take them. Default 4096.
    pub max_queued_events: usize,
    /// Rows of a listing this client converts. Default 1,048,576.
    pub max_list_entries: usize,
    /// Bytes of a listing's IPC stream this client maps. Default 1 GiB.
    pub max_list_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            options: Options::default(),
            max_queued_events: DEFAULT_MAX_QUEUED_EVENTS,
            max_list_entries: DEFAULT_MAX_LIST_ENTRIES,
            max_list_bytes: DEFAULT_MAX_LIST_BYTES,
        }
    }
}

/// What to put: the bytes of an IPC stream (copied once into the segment), or record batches
/// (written once into the segment with `pwritev`, straight from their buffers).
#[derive(Debug, Clone, Copy)]
pub enum PutData<'a> {
    /// An Arrow IPC stream.
    Ipc(&'a [u8]),
    /// A schema and its record batches.
    Batches(&'a Schema, &'a [RecordBatch]),
}

impl<'a> From<&'a [u8]> for PutData<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        PutData::Ipc(bytes)
    }
}

impl<'a> From<&'a Vec<u8>> for PutData<'a> {
    fn from(bytes: &'a Vec<u8>) -> Self {
        PutData::Ipc(bytes)
    }
}

impl<'a> From<&'a RecordBatch> for PutData<'a> {
    fn from(batch: &'a RecordBatch) -> Self {
        PutData::Batches(batch.schema_ref(), std::slice::from_ref(batch))
    }
}

/// Options of a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// User metadata, returned with every get (keys starting with `arrow-shm.` are reserved).
    pub metadata: KeyValues,
    /// Make a new version if the name exists (default: fail with `ERR_EXISTS`).
    pub replace: bool,
}

/// A request's answer, once it came.
enum Answer {
    /// Not yet; a TABLE answer may be at most `max_bytes` long.
    Waiting { max_bytes: u64 },
    Kv(KeyValues),
    Table(ReceivedTable),
    Failed(Error),
}

/// The events of one watch not taken yet, and how it ended.
struct Events {
    queue: VecDeque<StoreEvent>,
    ended: Option<Option<Error>>,
}

/// The connection and what waits on it (under [`Shared::link`]).
struct Link {
    ch: Channel,
    /// How a held table's drop reaches this link.
    me: Weak<Shared>,
    max_message_bytes: u64,
    limits: ipc::Limits,
    max_queued_events: usize,
    answers: HashMap<u64, Answer>,
    watches: HashMap<u64, Events>,
    /// A thread is reading the socket (without the lock).
    pumping: bool,
    closed_by_user: bool,
}

struct Shared {
    link: Mutex<Link>,
    /// Woken when the reading thread dispatched what came.
    wake: Condvar,
}

/// The hold of a get's answer (§15.5): its drop sends `RELEASE`.
struct Hold {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().send_release(self.id);
        }
    }
}

impl Link {
    /// The error a request fails with once the connection is gone.
    fn check_open(&self) -> Result<()> {
        match self.ch.close_error() {
            None => Ok(()),
            Some(_) if self.closed_by_user => err(ErrorCode::Closed, "the store client is closed"),
            Some(e) if matches!(e.code, ErrorCode::Closed | ErrorCode::PeerClosed) => {
                err(ErrorCode::PeerClosed, "the store connection closed before the store answered")
            }
            Some(e) => Err(e.clone()),
        }
    }

    fn send_release(&mut self, id: u64) {
        if !self.ch.is_closed() {
            let mut release = Frame::new(Kind::Release);
            release.correlation_id = id;
            let _ = self.ch.send_frame_fds(release, &[]);
        }
    }

    /// Sends a REQUEST and registers its answer (under the lock: nothing can answer it before).
    fn request(&mut self, mut frame: Frame, fds: &[i32], max_bytes: u64) -> Result<u64> {
        self.check_open()?;
        frame.flags = FLAG_REQUEST;
        let id = self.ch.send_frame_fds(frame, fds)?;
        self.answers.insert(id, Answer::Waiting { max_bytes });
        Ok(id)
    }

    /// Reads and dispatches every frame already waiting.
    fn pump_ready(&mut self) {
        while let Ok(true) = self.ch.pump_ready() {
            while let Some((frame, fds)) = self.ch.store_frames.as_mut().and_then(|q| q.pop_front()) {
                self.dispatch(frame, fds);
            }
        }
    }

    fn waiting(&self, frame: &Frame) -> Option<u64> {
        match self.answers.get(&frame.correlation_id) {
            Some(Answer::Waiting { max_bytes }) if frame.flags & FLAG_RESPONSE != 0 => Some(*max_bytes),
            _ => None,
        }
    }

    fn dispatch(&mut self, frame: Frame, fds: Vec<OwnedFd>) {
        let id = frame.correlation_id;
        match frame.kind {
            Kind::Table => self.on_table(frame, fds),
            Kind::Error if self.waiting(&frame).is_some() => {
                self.answers.insert(id, Answer::Failed(remote_error(&frame)));
            }
            Kind::Store if frame.flags & FLAG_RESPONSE != 0 && self.waiting(&frame).is_some() => {
                self.answers.insert(id, Answer::Kv(frame.metadata));
            }
            Kind::Store if frame.flags == 0 => self.on_event(id, &frame.metadata),
            _ => {} // a late or unknown answer; a store never sends a REQUEST
        }
    }

    fn on_event(&mut self, watch: u64, kv: &KeyValues) {
        let max = self.max_queued_events;
        let Some(events) = self.watches.get_mut(&watch).filter(|w| w.ended.is_none()) else { return };
        let event = if events.queue.len() >= max {
            err(ErrorCode::ResourceLimit, format!("{} store events not taken (max_queued_events {max})", events.queue.len()))
        } else {
            store_event(kv)
        };
        match event {
            Ok(e) => events.queue.push_back(e),
            Err(e) => {
                events.ended = Some(Some(e));
                self.unwatch(watch);
            }
        }
    }

    /// Ends a watch at the store (its answer is not waited for).
    fn unwatch(&mut self, watch: u64) {
        if !self.ch.is_closed() {
            let mut frame = Frame::new(Kind::Store);
            frame.flags = FLAG_REQUEST;
            frame.metadata = vec![("op".into(), "unwatch".into()), ("watch".into(), watch.to_string())];
            let _ = self.ch.send_frame_fds(frame, &[]);
        }
    }

    /// A get's or list's answer: the §5.1 checks with the sealed policy (a held answer is still
    /// fully sealed, §15.3). An unasked or refused held table is handed back at once.
    fn on_table(&mut self, frame: Frame, fds: Vec<OwnedFd>) {
        let held = frame.flags & FLAG_LEASED != 0;
        let Some(max_bytes) = self.waiting(&frame) else {
            drop(fds);
            if held {
                self.send_release(frame.message_id);
            }
            return;
        };
        let result = if frame.flags & FLAG_INLINE != 0 {
            err(ErrorCode::Protocol, "an INLINE table to a side that did not list `inline`")
        } else {
            channel::open_frame_segment("TABLE", &frame, &fds, max_bytes, false)
                .and_then(|(map, len)| ReceivedTable::new(map, frame.ipc_offset as usize, len as usize, Some(&frame), &self.limits))
        };
        drop(fds); // the mapping keeps the memory
        let answer = match result {
            Ok(mut table) => {
                if held {
                    table.hold = Some(Arc::new(Hold { shared: self.me.clone(), id: frame.message_id }));
                }
                Answer::Table(table)
            }
            Err(e) => {
                // Ends the hold too (§15.3).
                let _ = self.ch.send_error(frame.message_id, 0, e.code, &e.message);
                Answer::Failed(e)
            }
        };
        self.answers.insert(frame.correlation_id, answer);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads frames until `take` yields, the deadline passes (`ERR_TIMEOUT`) or the connection
    /// fails. One thread reads the socket at a time, without the lock; the others wait for it to
    /// dispatch what came.
    fn wait<T>(&self, deadline: Option<Instant>, what: &str, mut take: impl FnMut(&mut Link) -> Option<T>) -> Result<T> {
        let mut link = self.lock();
        loop {
            if let Some(v) = take(&mut link) {
                return Ok(v);
            }
            link.check_open()?;
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return err(ErrorCode::Timeout, format!("timed out waiting for {what}"));
            }
            if link.pumping {
                link = match deadline {
                    None => self.wake.wait(link).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => self.wake.wait_timeout(link, d - now).unwrap_or_else(|e| e.into_inner()).0,
                };
                continue;
            }
            link.pumping = true;
            let fd = link.ch.raw_fd();
            drop(link);
            let ready = sys::wait_readable(fd, deadline, what);
            link = self.lock();
            link.pumping = false;
            if ready.is_ok() {
                link.pump_ready();
            }
            self.wake.notify_all();
            match ready {
                Err(e) if e.code != ErrorCode::Timeout => return Err(e),
                _ => {}
            }
        }
    }

    /// Waits for the answer of request `id`; on failure (a timeout included) it is forgotten,
    /// and a late answer is handed back when it comes.
    fn answer(&self, id: u64, deadline: Option<Instant>, what: &str) -> Result<Answer> {
        let taken = self.wait(deadline, what, |link| match link.answers.get(&id) {
            Some(Answer::Waiting { .. }) => None,
            _ => link.answers.remove(&id),
        });
        match taken {
            Ok(Answer::Failed(e)) => Err(e),
            Ok(answer) => Ok(answer),
            Err(e) => {
                let late = self.lock().answers.remove(&id);
                drop(late); // outside the lock: a held table's drop takes it
                Err(e)
            }
        }
    }
}

fn kv_only(answer: Answer, what: &str) -> Result<KeyValues> {
    match answer {
        Answer::Kv(kv) => Ok(kv),
        _ => err(ErrorCode::Protocol, format!("the store answered {what} with a table")),
    }
}

fn table_only(answer: Answer, what: &str) -> Result<ReceivedTable> {
    match answer {
        Answer::Table(t) => Ok(t),
        _ => err(ErrorCode::Protocol, format!("the store answered {what} without a table")),
    }
}

fn store_frame(kv: KeyValues) -> Frame {
    let mut frame = Frame::new(Kind::Store);
    frame.metadata = kv;
    frame
}

/// One connection to a table store. Create with [`open_store`]. Tables received stay readable
/// after [`StoreClient::close`] and after the store goes away (their segments are sealed).
pub struct StoreClient {
    shared: Arc<Shared>,
    max_list_entries: usize,
    max_list_bytes: u64,
}

/// Connects to the table store at `address` (a path or `@name`) and does the handshake.
pub fn open_store(address: &str, options: StoreOptions) -> Result<StoreClient> {
    StoreClient::open(address, options)
}

impl StoreClient {
    /// Connects to the table store at `address` (a path or `@name`) and does the handshake.
    pub fn open(address: &str, options: StoreOptions) -> Result<StoreClient> {
        if options.max_queued_events == 0 || options.max_list_entries == 0 || options.max_list_bytes == 0 {
            return err(ErrorCode::InvalidArgument, "max_queued_events, max_list_entries and max_list_bytes must be positive");
        }
        let opts = Options { spare_segments: false, ..options.options.clone() };
        // Listing only `store` implies accepting its held (LEASED) answers (§15.1).
        let mut ch = channel::connect_with(address, opts, STORE_CAPABILITY)?;
        if !ch.peer_capabilities().iter().any(|c| c == STORE_CAPABILITY) {
            let msg = "the listener is not a table store (its WELCOME does not list 'store')";
            let _ = ch.send_error(0, 0, ErrorCode::Protocol, msg);
            ch.close();
            return err(ErrorCode::Protocol, msg);
        }
        ch.store_frames = Some(VecDeque::new());
        let shared = Arc::new_cyclic(|me| Shared {
            link: Mutex::new(Link {
                ch,
                me: me.clone(),
                max_message_bytes: options.options.max_message_bytes,
                limits: options.options.limits,
                max_queued_events: options.max_queued_events,
                answers: HashMap::new(),
                watches: HashMap::new(),
                pumping: false,
                closed_by_user: false,
            }),
            wake: Condvar::new(),
        });
        Ok(StoreClient { shared, max_list_entries: options.max_list_entries, max_list_bytes: options.max_list_bytes })
    }

    /// Whether the connection is closed (by [`StoreClient::close`], the store or a fatal error).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().ch.is_closed()
    }

    /// The store's `implementation` string from the handshake.
    pub fn peer_implementation(&self) -> String {
        self.shared.lock().ch.peer_implementation().to_string()
    }

    fn request(&self, frame: Frame, fds: &[i32], max_bytes: u64) -> Result<u64> {
        self.shared.lock().request(frame, fds, max_bytes)
    }

    fn store_request(&self, kv: KeyValues, deadline: Option<Instant>, what: &str) -> Result<Answer> {
        let id = self.request(store_frame(kv), &[], 0)?;
        self.shared.answer(id, deadline, what)
    }

    /// Puts an IPC stream or record batches under `name`, written once into a new sealed segment
    /// whose fd the store keeps. `ERR_EXISTS` if the name has a version and `replace` is false.
    pub fn put<'a>(&self, name: &str, data: impl Into<PutData<'a>>, options: &PutOptions) -> Result<PutResult> {
        let kv = put_metadata(name, &options.metadata, options.replace)?;
        let (seg, length) = match data.into() {
            PutData::Ipc([]) => return err(ErrorCode::InvalidArgument, "empty IPC stream"),
            PutData::Ipc(bytes) => ipc::write_bytes_segment(bytes, 0)?,
            PutData::Batches(schema, batches) => ipc::write_batches_segment(schema, batches, 0)?,
        };
        let limit = self.shared.lock().ch.peer_max_message_bytes();
        if length as u64 > limit {
            return err(ErrorCode::TooLarge, format!("{length}-byte table exceeds the store's max_message_bytes {limit}"));
        }
        let fd = seg.finish(true)?;
        let mut frame = Frame::new(Kind::Table);
        frame.ipc_length = length as u64;
        frame.metadata = kv;
        let id = self.request(frame, &[fd.as_raw_fd()], 0)?;
        drop(fd); // the store has its own now
        put_result(&kv_only(self.shared.answer(id, None, &format!("the put of {name}"))?, "a put")?)
    }

    /// The table under `name`, mapped read-only (zero copy; its metadata holds the user's keys
    /// and `arrow-shm.name`, `arrow-shm.version`). The store holds that version until the table
    /// (with every clone) is dropped. `timeout`: wait that long for a put of the name
    /// (`ERR_TIMEOUT`); without it a missing name is `ERR_NOT_FOUND`.
    pub fn get(&self, name: &str, timeout: Option<Duration>) -> Result<ReceivedTable> {
        check_name(name)?;
        let wait_ms = timeout.map_or(0, |t| t.as_millis());
        if wait_ms > MAX_TIMEOUT_MS as u128 {
            return err(ErrorCode::InvalidArgument, format!("a get waits at most {MAX_TIMEOUT_MS} ms, not {wait_ms}"));
        }
        let mut kv: KeyValues = vec![("op".into(), "get".into()), ("name".into(), name.into())];
        if wait_ms > 0 {
            kv.push(("timeout_ms".into(), wait_ms.to_string()));
        }
        let max_bytes = self.shared.lock().max_message_bytes;
        let id = self.request(store_frame(kv), &[], max_bytes)?;
        let deadline = (wait_ms > 0).then(|| Instant::now() + Duration::from_millis(wait_ms as u64) + GRACE);
        table_only(self.shared.answer(id, deadline, &format!("the get of {name}"))?, "a get")
    }

    /// Every name starting with `prefix`, in byte order. The listing's bytes and rows are
    /// bounded (`max_list_bytes`, `max_list_entries`) before it is decoded.
    pub fn list(&self, prefix: &str) -> Result<Vec<StoreEntry>> {
        check_prefix(prefix)?;
        let mut kv: KeyValues = vec![("op".into(), "list".into())];
        if !prefix.is_empty() {
            kv.push(("prefix".into(), prefix.into()));
        }
        let max_bytes = self.shared.lock().max_message_bytes.min(self.max_list_bytes);
        let id = self.request(store_frame(kv), &[], max_bytes)?;
        let message = table_only(self.shared.answer(id, None, "a listing")?, "a list")?;
        listing_rows(message.ipc_bytes(), self.max_list_entries)?;
        list_entries(&message.decode()?)
    }

    /// Removes `name` (holders keep their version); returns the version removed.
    pub fn delete(&self, name: &str) -> Result<u64> {
        check_name(name)?;
        let kv = vec![("op".into(), "delete".into()), ("name".into(), name.into())];
        store_decimal(&kv_only(self.store_request(kv, None, &format!("the delete of {name}"))?, "a delete")?, "version")
    }

    /// Names, accounted and held bytes, the memory budget, the eviction policy, evictions.
    pub fn stats(&self) -> Result<StoreStats> {
        store_stats(&kv_only(self.store_request(vec![("op".into(), "stats".into())], None, "stats")?, "stats")?)
    }

    /// Events for every later put, delete and eviction of a name starting with `prefix`; the
    /// store has the watch when this returns. Iterate it; drop it or [`StoreWatch::close`] to end it.
    pub fn watch(&self, prefix: &str) -> Result<StoreWatch> {
        check_prefix(prefix)?;
        let mut kv: KeyValues = vec![("op".into(), "watch".into())];
        if !prefix.is_empty() {
            kv.push(("prefix".into(), prefix.into()));
        }
        let id = {
            let mut link = self.shared.lock();
            let id = link.request(store_frame(kv), &[], 0)?;
            link.watches.insert(id, Events { queue: VecDeque::new(), ended: None }); // before any event of it
            id
        };
        let answer = self.shared.answer(id, None, "a watch").and_then(|a| kv_only(a, "a watch"));
        if let Err(e) = answer {
            self.shared.lock().watches.remove(&id); // refused: nothing to unwatch
            return Err(e);
        }
        Ok(StoreWatch { shared: self.shared.clone(), id, done: false })
    }

    /// Closes the connection (GOODBYE): pending requests fail, watches end; received tables stay
    /// readable. Idempotent.
    pub fn close(&self) {
        let (answers, watches) = {
            let mut link = self.shared.lock();
            if !link.ch.is_closed() {
                link.closed_by_user = true;
            }
            link.ch.hang_up();
            (std::mem::take(&mut link.answers), std::mem::take(&mut link.watches))
        };
        self.shared.wake.notify_all();
        drop((answers, watches)); // outside the lock: a held table's drop takes it
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreClient").field("closed", &self.is_closed()).finish()
    }
}

/// The events of one watch: an `Iterator` of `Result<StoreEvent>` that blocks for the next one,
/// ends when the watch or its client is closed, and yields the error once if the store went away.
pub struct StoreWatch {
    shared: Arc<Shared>,
    id: u64,
    done: bool,
}

impl StoreWatch {
    /// The next event, waiting at most `timeout` (`ERR_TIMEOUT`); `Ok(None)` once the watch has
    /// ended cleanly; the error that ended it once its queued events are taken.
    pub fn next_timeout(&mut self, timeout: Option<Duration>) -> Result<Option<StoreEvent>> {
        if self.done {
            return Ok(None);
        }
        let id = self.id;
        let taken = self.shared.wait(timeout.map(|t| Instant::now() + t), "a store event", |link| {
            let events = link.watches.get_mut(&id)?;
            if let Some(e) = events.queue.pop_front() {
                return Some(Ok(Some(e)));
            }
            let ended = events.ended.clone()?;
            link.watches.remove(&id);
            Some(ended.map_or(Ok(None), Err))
        });
        let result = match taken {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::Timeout => return Err(e),
            Err(e) if e.code == ErrorCode::Closed => Ok(None), // the client was closed: a clean end
            Err(e) => Err(e),
        };
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    /// Ends the watch (the store stops sending its events).
    pub fn close(&mut self) {
        self.done = true;
        let mut link = self.shared.lock();
        if link.watches.remove(&self.id).is_some() {
            link.unwatch(self.id);
        }
    }
}

impl Iterator for StoreWatch {
    type Item = Result<StoreEvent>;

    fn next(&mut self) -> Option<Result<StoreEvent>> {
        self.next_timeout(None).transpose()
    }
}

impl Drop for StoreWatch {
    fn drop(&mut self) {
        self.close();
    }
}
