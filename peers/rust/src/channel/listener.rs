//! A listening socket for channels.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::error::Result;
use crate::sys::{self, Address};

use super::{answer_hello, deadline, Channel, Options};

/// A listening socket for channels. Removes its socket file when dropped.
pub struct Listener {
    fd: OwnedFd,
    inode: sys::SocketFile,
    opts: Options,
    address: String,
}

impl Listener {
    /// Binds and listens on `address` (a path or `@abstract`); a stale socket file is replaced, a live one is `ERR_ADDRESS_IN_USE`.
    pub fn bind(address: &str, opts: Options) -> Result<Listener> {
        let addr = Address::parse(address)?;
        let (fd, inode) = sys::bind_listen(&addr, libc::SOCK_SEQPACKET, 64)?;
        Ok(Listener { fd, inode, opts, address: address.to_string() })
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The address this listener was bound to, as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Accepts one connection, checks the peer's uid and answers its HELLO. `timeout` bounds
    /// the wait for a connection; the HELLO must come within 5 s (or `timeout`, if shorter).
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Channel> {
        let fd = sys::accept(self.fd.as_raw_fd(), deadline(timeout))?;
        answer_hello(fd, self.opts.clone(), timeout)
    }

    pub(crate) fn options(&self) -> &Options {
        &self.opts
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        sys::unlink_own(&self.inode);
    }
}
