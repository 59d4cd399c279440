//! Serving every connection of a listener at once, with the resource limits of PROTOCOL.md §14.2
//! (what the CLI's `recv` and `engine` use; [`crate::Listener::accept`] stays one connection at
//! a time for applications that want their own threads).
//!
//! Each connection runs on its own thread, handshake included, so a silent or slow peer delays
//! nobody; a fatal frame closes only that connection. At most `max_connections` are open
//! (handshaking ones included): past it the connection idle longest is closed with `ERROR
//! ERR_TIMEOUT` if it has been idle at least 1 s, otherwise the new one gets `ERROR
//! ERR_RESOURCE_LIMIT`. A connection without a table for `idle_timeout_ms` gets `ERR_TIMEOUT`.
//! Tables reach the caller in arrival order; a connection with `max_inbox_messages` tables (or
//! `max_inbox_bytes`) not yet taken stops reading its socket until the caller takes one.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::channel::{self, Listener, ReceivedTable, Options};
use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{Frame, Kind};
use crate::ring::{eventfd, eventfd_drain, eventfd_signal, poll_readable};
use crate::sys;

/// How long the connection idle longest must have been idle to make room for a new one.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// One connection as the accepting side sees it.
struct Conn {
    /// The socket while the connection's thread uses it; `None` once it is closing, so the
    /// accepting side never touches an fd number that may have been reused.
    fd: Mutex<Option<RawFd>>,
    last_active: Mutex<Instant>,
    /// Tables handed to the caller and not yet taken: (count, ipc bytes).
    queued: Mutex<(usize, u64)>,
    taken: Condvar,
}

impl Conn {
    fn idle_for(&self) -> Duration {
        self.last_active.lock().unwrap().elapsed()
    }

    fn touch(&self) {
        *self.last_active.lock().unwrap() = Instant::now();
    }

    fn is_open(&self) -> bool {
        self.fd.lock().unwrap().is_some()
    }

    /// Tells the peer why (an `ERROR` with correlation 0) and shuts the socket down; its thread
    /// then sees the hang-up and ends.
    fn close_with(&self, code: ErrorCode, message: &str) {
        if let Some(fd) = self.fd.lock().unwrap().take() {
            let _ = send_error(fd, code, message);
            discard_pending(fd);
            // SAFETY: `fd` is open: its thread closes it only after taking it from `self.fd`.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

/// An `ERROR` frame with correlation 0 written straight to a socket (not through a channel).
fn send_error(fd: RawFd, code: ErrorCode, message: &str) -> Result<()> {
    let mut f = Frame::new(Kind::Error);
    f.metadata = vec![("code".into(), code.as_str().into()), ("message".into(), message.into())];
    sys::send_with_fds(fd, &f.encode()?, &[])
}

/// Reads (and drops) the frames already waiting on a socket about to be closed: closing a UNIX
/// socket with unread data makes the peer's next read fail with `ECONNRESET` instead of
/// returning the `ERROR` just sent.
fn discard_pending(fd: RawFd) {
    let mut buf = [0u8; 256];
    for _ in 0..16 {
        match poll_readable(&[fd], 0) {
            Ok(r) if r[0] => {}
            _ => return,
        }
        match sys::recv_with_fds(fd, &mut buf) {
            Ok(r) if r.len > 0 || !r.fds.is_empty() => {}
            _ => return,
        }
    }
}

/// A received table (or the error of a refused table or a failed connection), and its
/// connection.
type Item = (Result<ReceivedTable>, Arc<Conn>);

/// A listener whose connections are served at once; see the module documentation.
pub struct Server {
    listener: Listener,
    opts: Options,
    /// Written by a connection's thread after it queued an item (wakes [`Server::next`]).
    wake: Arc<OwnedFd>,
    tx: Sender<Item>,
    rx: Receiver<Item>,
    conns: Vec<Arc<Conn>>,
}

impl Server {
    /// A server for `listener`'s connections, with its options' limits.
    pub fn new(listener: Listener) -> Result<Server> {
        let (tx, rx) = mpsc::channel();
        let opts = listener.options().clone();
        Ok(Server { listener, opts, wake: Arc::new(eventfd()?), tx, rx, conns: Vec::new() })
    }

    /// The listener's address.
    pub fn address(&self) -> &str {
        self.listener.address()
    }

    /// Connections open now (handshaking ones included).
    pub fn connections(&mut self) -> usize {
        self.conns.retain(|c| c.is_open());
        self.conns.len()
    }

    /// The next table received on any connection, in arrival order. A table refused by the §5.1
    /// checks (its sender was told) or a connection that failed comes as the inner error;
    /// `ERR_TIMEOUT` once `deadline` passes.
    pub fn next(&mut self, deadline: Option<Instant>) -> Result<Result<ReceivedTable>> {
        let (lst, wake) = (self.listener.raw_fd(), self.wake.as_raw_fd());
        loop {
            match self.rx.try_recv() {
                Ok((item, conn)) => {
                    let mut q = conn.queued.lock().unwrap();
                    q.0 -= 1;
                    q.1 -= item.as_ref().map_or(0, |m| m.ipc_length() as u64);
                    conn.taken.notify_all();
                    return Ok(item);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => unreachable!("the server holds a sender"),
            }
            let ready = poll_readable(&[lst, wake], sys::poll_ms(deadline))?;
            if !ready.contains(&true) && deadline.is_some_and(|d| Instant::now() >= d) {
                let what = if self.conns.is_empty() { "timed out waiting for a connection" } else { "no table arrived" };
                return err(ErrorCode::Timeout, what);
            }
            if ready[1] {
                eventfd_drain(wake);
            }
            if ready[0] {
                self.accept_one()?;
            }
        }
    }

    fn accept_one(&mut self) -> Result<()> {
        let fd = match sys::accept(self.listener.raw_fd(), Some(Instant::now())) {
            Ok(fd) => fd,
            Err(e) if e.code == ErrorCode::Timeout => return Ok(()), // it went away meanwhile
            Err(e) if matches!(e.errno, Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                // Out of fds or memory: the connection waits in the backlog; try again soon.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if self.connections() >= self.opts.max_connections {
            let idlest = self.conns.iter().max_by_key(|c| c.idle_for()).filter(|c| c.idle_for() >= EVICTABLE_AFTER);
            match idlest {
                Some(c) => c.close_with(ErrorCode::Timeout, "closed to make room for a new connection (max_connections)"),
                None => {
                    let msg = format!("{} connections are open (max_connections)", self.opts.max_connections);
                    let _ = send_error(fd.as_raw_fd(), ErrorCode::ResourceLimit, &msg);
                    discard_pending(fd.as_raw_fd());
                    return Ok(());
                }
            }
            self.conns.retain(|c| c.is_open());
        }
        let conn = Arc::new(Conn {
            fd: Mutex::new(Some(fd.as_raw_fd())),
            last_active: Mutex::new(Instant::now()),
            queued: Mutex::new((0, 0)),
            taken: Condvar::new(),
        });
        self.conns.push(conn.clone());
        let (opts, tx, wake) = (self.opts.clone(), self.tx.clone(), self.wake.clone());
        let spawned = std::thread::Builder::new()
            .name("arrow-shm-conn".into())
            .spawn({
                let conn = conn.clone();
                move || serve_connection(fd, opts, conn, tx, wake)
            });
        if spawned.is_err() {
            // The closure (and the fd) is gone with the failed spawn.
            conn.fd.lock().unwrap().take();
        }
        Ok(())
    }
}

impl Drop for Server {
    /// Hangs up every connection (their threads end), then the listener removes its file.
    fn drop(&mut self) {
        for c in &self.conns {
            if let Some(fd) = c.fd.lock().unwrap().take() {
                // SAFETY: as in `close_with`.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            c.taken.notify_all();
        }
    }
}

/// A connection's thread: handshake, then every table to the caller until the peer leaves, a
/// fatal error, the idle timeout, or the server closes it.
fn serve_connection(fd: OwnedFd, opts: Options, conn: Arc<Conn>, tx: Sender<Item>, wake: Arc<OwnedFd>) {
    let idle = (opts.idle_timeout_ms > 0).then(|| Duration::from_millis(opts.idle_timeout_ms));
    let (max_messages, max_bytes) = (opts.max_inbox_messages.max(1), opts.max_inbox_bytes);
    // Hands an item over; waits (not reading the socket) while this connection's share is full.
    let hand_over = |item: Result<ReceivedTable>| -> bool {
        let bytes = item.as_ref().map_or(0, |m| m.ipc_length() as u64);
        let mut q = conn.queued.lock().unwrap();
        while (q.0 >= max_messages || q.1 >= max_bytes) && conn.is_open() {
            q = conn.taken.wait_timeout(q, Duration::from_millis(200)).unwrap().0;
        }
        if !conn.is_open() {
            return false;
        }
        *q = (q.0 + 1, q.1 + bytes);
        drop(q);
        let sent = tx.send((item, conn.clone())).is_ok();
        eventfd_signal(wake.as_raw_fd());
        sent
    };
    let quiet = |e: &Error| e.code == ErrorCode::PeerClosed || !conn.is_open();
    let mut ch = match channel::answer_hello(fd, opts, None) {
        Ok(ch) => ch,
        Err(e) => {
            if !quiet(&e) {
                hand_over(Err(e));
            }
            conn.fd.lock().unwrap().take();
            return;
        }
    };
    loop {
        let r = ch.receive(idle);
        conn.touch();
        match r {
            Ok(m) => {
                if !hand_over(Ok(m)) {
                    break;
                }
            }
            Err(e) if e.code == ErrorCode::Timeout => {
                let msg = format!("no table for idle_timeout_ms {}", idle.unwrap_or_default().as_millis());
                conn.close_with(ErrorCode::Timeout, &msg);
                break;
            }
            Err(e) if ch.is_closed() => {
                if !quiet(&e) {
                    hand_over(Err(e));
                }
                break;
            }
            Err(e) => {
                if !hand_over(Err(e)) {
                    break;
                }
            }
        }
    }
    // Only after this may the fd be closed (by dropping the channel).
    conn.fd.lock().unwrap().take();
}
