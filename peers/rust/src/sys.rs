//! Thin wrappers over the socket system calls used by channels and seed mode.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::error::{err, Error, ErrorCode, Result};

/// A parsed socket address: a filesystem path or an abstract name (`@name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A filesystem path.
    Path(String),
    /// An abstract name (given as `@name`, stored without the `@`).
    Abstract(String),
}

impl Address {
    /// Parses `@name` (abstract) or a path; empty or too long is `ERR_INVALID_ARGUMENT`.
    pub fn parse(text: &str) -> Result<Address> {
        if text.is_empty() {
            return err(ErrorCode::InvalidArgument, "empty socket address");
        }
        let a = match text.strip_prefix('@') {
            Some(name) if !name.is_empty() => Address::Abstract(name.to_string()),
            Some(_) => return err(ErrorCode::InvalidArgument, "empty abstract socket name"),
            None => Address::Path(text.to_string()),
        };
        let n = match &a {
            Address::Path(p) => p.len() + 1,
            Address::Abstract(p) => p.len() + 1,
        };
        if n > 108 || text.as_bytes().contains(&0) {
            return err(ErrorCode::InvalidArgument, format!("socket address too long or invalid: {text:?}"));
        }
        Ok(a)
    }

    /// The `sockaddr_un` and its length (abstract names: exactly the name, no trailing NULs).
    pub fn sockaddr(&self) -> (libc::sockaddr_un, libc::socklen_t) {
        // SAFETY: zeroed sockaddr_un is valid.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let base = std::mem::size_of::<libc::sa_family_t>();
        let len = match self {
            Address::Path(p) => {
                for (i, b) in p.bytes().enumerate() {
                    sa.sun_path[i] = b as libc::c_char;
                }
                base + p.len() + 1
            }
            Address::Abstract(name) => {
                for (i, b) in name.bytes().enumerate() {
                    sa.sun_path[i + 1] = b as libc::c_char;
                }
                base + 1 + name.len()
            }
        };
        (sa, len as libc::socklen_t)
    }
}

/// A new `AF_UNIX` socket of type `ty`, close-on-exec.
pub fn socket(ty: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os("socket"));
    }
    // SAFETY: new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Milliseconds left until `deadline` for poll(2): -1 = forever, 0 = expired.
pub fn poll_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_millis();
            if ms == 0 && !left.is_zero() {
                1
            } else {
                ms.min(i32::MAX as u128) as i32
            }
        }
    }
}

/// Waits until `fd` is readable; `ERR_TIMEOUT` when the deadline passes.
pub fn wait_readable(fd: RawFd, deadline: Option<Instant>, what: &str) -> Result<()> {
    loop {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = poll_ms(deadline);
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::from_io("poll", &e));
        }
        if r == 0 {
            return err(ErrorCode::Timeout, format!("timed out waiting for {what}"));
        }
        return Ok(());
    }
}

/// The peer's (pid, uid, gid) from `SO_PEERCRED`.
pub fn peer_cred(fd: RawFd) -> Result<libc::ucred> {
    // SAFETY: getsockopt into a properly sized ucred.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    if r != 0 {
        return Err(Error::last_os("getsockopt(SO_PEERCRED)"));
    }
    Ok(cred)
}

/// Sends one datagram/message with optional fds (`SCM_RIGHTS`), `MSG_NOSIGNAL`.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: pure computation.
        unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize }
    };
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: zeroed msghdr, filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE for the fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        // SAFETY: msg points at live buffers.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                    return err(ErrorCode::PeerClosed, "the peer hung up");
                }
                _ => return Err(Error::from_io("sendmsg", &e)),
            }
        }
        if r as usize != data.len() {
            return err(ErrorCode::Syscall, format!("sendmsg sent {r} of {} bytes", data.len()));
        }
        return Ok(());
    }
}

/// One received datagram: its bytes, the fds that came with it, and the recvmsg flags.
pub struct Received {
    /// Bytes received.
    pub len: usize,
    /// The fds that came with them.
    pub fds: Vec<OwnedFd>,
    /// The `recvmsg` flags (`MSG_TRUNC`, `MSG_CTRUNC`).
    pub flags: i32,
}

/// Maximum number of fds accepted in one message's control data.
pub const MAX_FDS: usize = 8;

/// `recvmsg` into `buf` with room for [`MAX_FDS`] fds (`MSG_CMSG_CLOEXEC`). Every fd received is
/// owned by the result (closed when dropped), even when the control data was truncated.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> Result<Received> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize };
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: zeroed msghdr, filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let r = loop {
        // SAFETY: msg points at live buffers.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECONNRESET) => return err(ErrorCode::PeerClosed, "the peer hung up"),
                _ => return Err(Error::from_io("recvmsg", &e)),
            }
        }
        break r as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received { len: r, fds, flags: msg.msg_flags })
}

/// A listener's socket file: its path, device and inode (to remove only that file later).
pub type SocketFile = Option<(String, u64, u64)>;

fn address_in_use(addr: &Address) -> Error {
    let what = match addr {
        Address::Path(p) => p.clone(),
        Address::Abstract(n) => format!("@{n}"),
    };
    Error::new(ErrorCode::AddressInUse, format!("another listener answers on {what}"))
}

/// Binds a listening socket of type `ty` at `addr`, chmods it to 0600 and listens (§14.2): a
/// socket file nobody answers on (left by a dead process) is replaced; one a live listener
/// answers on is `ERR_ADDRESS_IN_USE`. Returns the fd and (for a path) its file, to remove later.
pub fn bind_listen(addr: &Address, ty: i32, backlog: i32) -> Result<(OwnedFd, SocketFile)> {
    let fd = socket(ty)?;
    if let Address::Path(p) = addr {
        if let Ok(md) = std::fs::symlink_metadata(p) {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return err(ErrorCode::InvalidArgument, format!("{p} exists and is not a socket"));
            }
            let probe = socket(ty)?;
            let (sa, len) = addr.sockaddr();
            // SAFETY: valid sockaddr of `len` bytes.
            let r = unsafe { libc::connect(probe.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            // A live listener of another socket type still owns the path (EPROTOTYPE).
            if r == 0 || errno == Some(libc::EPROTOTYPE) || errno == Some(libc::EAGAIN) {
                return Err(address_in_use(addr));
            }
            let _ = std::fs::remove_file(p);
        }
    }
    let (sa, len) = addr.sockaddr();
    // SAFETY: valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) } != 0 {
        let e = Error::last_os("bind");
        // An abstract name (or a path bound meanwhile) is taken.
        return Err(if e.errno == Some(libc::EADDRINUSE) { address_in_use(addr) } else { e });
    }
    let mut inode = None;
    if let Address::Path(p) = addr {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(p);
            return Err(Error::from_io("chmod", &e));
        }
        inode = std::fs::symlink_metadata(p).ok().map(|m| (p.clone(), m.dev(), m.ino()));
    }
    // SAFETY: plain syscall.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        let e = Error::last_os("listen");
        if let Some((p, _, _)) = &inode {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok((fd, inode))
}

/// Removes a listener's socket file if it is still the one it created (same device and inode).
pub fn unlink_own(file: &SocketFile) {
    use std::os::unix::fs::MetadataExt;
    if let Some((p, dev, ino)) = file {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Accepts one connection (waiting until the deadline).
pub fn accept(listener: RawFd, deadline: Option<Instant>) -> Result<OwnedFd> {
    loop {
        wait_readable(listener, deadline, "a connection")?;
        // SAFETY: plain syscall.
        let fd = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ECONNABORTED) => continue,
                _ => return Err(Error::from_io("accept4", &e)),
            }
        }
        // SAFETY: new fd we own.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Connects a socket of type `ty` to `addr`. With a deadline, a missing or not-yet-listening
/// socket is retried until then; without one, the first failure is returned.
pub fn connect(addr: &Address, ty: i32, deadline: Option<Instant>) -> Result<OwnedFd> {
    let (sa, len) = addr.sockaddr();
    loop {
        let fd = socket(ty)?;
        // SAFETY: valid sockaddr.
        let r = unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) };
        if r == 0 {
            return Ok(fd);
        }
        let e = std::io::Error::last_os_error();
        let retry = matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::EAGAIN));
        match deadline {
            Some(d) if retry => {
                if Instant::now() >= d {
                    return err(ErrorCode::Timeout, "timed out connecting to the peer");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ if e.raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(Error::from_io("connect", &e)),
        }
    }
}
