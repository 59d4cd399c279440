//! The stable error codes of PROTOCOL.md §9 and the crate's error type.

use std::fmt;

/// A stable error code, shared by every arrow-shm peer (PROTOCOL.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `ERR_PROTOCOL`: malformed frame (magic, header length, kind, flags, key/values, fd count).
    Protocol,
    /// `ERR_PROTOCOL_VERSION`: no common protocol version, or a frame of another version.
    ProtocolVersion,
    /// `ERR_PEER_CREDENTIALS`: the peer's uid is not allowed.
    PeerCredentials,
    /// `ERR_PEER_CLOSED`: the peer hung up (or said GOODBYE).
    PeerClosed,
    /// `ERR_SEGMENT_INVALID`: the fd is not a memfd/shmem regular file.
    SegmentInvalid,
    /// `ERR_SEGMENT_UNSEALED`: the segment lacks the required seals.
    SegmentUnsealed,
    /// `ERR_SEGMENT_BOUNDS`: the IPC range lies outside the segment, is misaligned or empty.
    SegmentBounds,
    /// `ERR_TOO_LARGE`: over the receiver's `max_message_bytes`.
    TooLarge,
    /// `ERR_IPC_TRUNCATED`: the IPC stream ends inside a message.
    IpcTruncated,
    /// `ERR_IPC_INVALID`: the IPC stream is malformed (flatbuffer, lengths, buffers, values).
    IpcInvalid,
    /// `ERR_IPC_UNSUPPORTED`: valid IPC this peer cannot decode.
    IpcUnsupported,
    /// `ERR_TIMEOUT`: a request, handshake or wait timed out.
    Timeout,
    /// `ERR_CLOSED`: use of a closed channel, message or segment.
    Closed,
    /// `ERR_INVALID_ARGUMENT`: the caller passed a bad argument.
    InvalidArgument,
    /// `ERR_SYSCALL`: a system call failed (`errno` and `syscall` are set).
    Syscall,
    /// `ERR_REMOTE`: the peer reported a failure without a code of PROTOCOL.md §9.
    Remote,
    /// `ERR_RING_FULL`: a stream's ring has no room and the producer asked to fail fast.
    RingFull,
    /// `ERR_NO_READER_SLOT`: every reader slot of a stream's ring is taken.
    NoReaderSlot,
    /// `ERR_RING_INVALID`: a malformed ring header or record.
    RingInvalid,
    /// `ERR_IPC_LIMIT`: decoding would exceed a decoding limit (PROTOCOL.md §14.1).
    IpcLimit,
    /// `ERR_RESOURCE_LIMIT`: a resource limit of the receiver was reached (§14.2).
    ResourceLimit,
    /// `ERR_ADDRESS_IN_USE`: another live listener answers on the socket path.
    AddressInUse,
    /// `ERR_NOT_FOUND`: a table store has no such name (PROTOCOL.md §15.7).
    NotFound,
    /// `ERR_EXISTS`: a table store already has the name, and the put did not ask to replace it (§15.7).
    Exists,
}

impl ErrorCode {
    /// All codes, in the order of the table in PROTOCOL.md §9.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::Protocol,
        ErrorCode::ProtocolVersion,
        ErrorCode::PeerCredentials,
        ErrorCode::PeerClosed,
        ErrorCode::SegmentInvalid,
        ErrorCode::SegmentUnsealed,
        ErrorCode::SegmentBounds,
        ErrorCode::TooLarge,
        ErrorCode::IpcTruncated,
        ErrorCode::IpcInvalid,
        ErrorCode::IpcUnsupported,
        ErrorCode::Timeout,
        ErrorCode::Closed,
        ErrorCode::InvalidArgument,
        ErrorCode::Syscall,
        ErrorCode::Remote,
        ErrorCode::RingFull,
        ErrorCode::NoReaderSlot,
        ErrorCode::RingInvalid,
        ErrorCode::IpcLimit,
        ErrorCode::ResourceLimit,
        ErrorCode::AddressInUse,
        ErrorCode::NotFound,
        ErrorCode::Exists,
    ];

    /// The code as it travels in `ERROR` frames, e.g. `"ERR_PROTOCOL"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "ERR_PROTOCOL",
            ErrorCode::ProtocolVersion => "ERR_PROTOCOL_VERSION",
            ErrorCode::PeerCredentials => "ERR_PEER_CREDENTIALS",
            ErrorCode::PeerClosed => "ERR_PEER_CLOSED",
            ErrorCode::SegmentInvalid => "ERR_SEGMENT_INVALID",
            ErrorCode::SegmentUnsealed => "ERR_SEGMENT_UNSEALED",
            ErrorCode::SegmentBounds => "ERR_SEGMENT_BOUNDS",
            ErrorCode::TooLarge => "ERR_TOO_LARGE",
            ErrorCode::IpcTruncated => "ERR_IPC_TRUNCATED",
            ErrorCode::IpcInvalid => "ERR_IPC_INVALID",
            ErrorCode::IpcUnsupported => "ERR_IPC_UNSUPPORTED",
            ErrorCode::Timeout => "ERR_TIMEOUT",
            ErrorCode::Closed => "ERR_CLOSED",
            ErrorCode::InvalidArgument => "ERR_INVALID_ARGUMENT",
            ErrorCode::Syscall => "ERR_SYSCALL",
            ErrorCode::Remote => "ERR_REMOTE",
            ErrorCode::RingFull => "ERR_RING_FULL",
            ErrorCode::NoReaderSlot => "ERR_NO_READER_SLOT",
            ErrorCode::RingInvalid => "ERR_RING_INVALID",
            ErrorCode::IpcLimit => "ERR_IPC_LIMIT",
            ErrorCode::ResourceLimit => "ERR_RESOURCE_LIMIT",
            ErrorCode::AddressInUse => "ERR_ADDRESS_IN_USE",
            ErrorCode::NotFound => "ERR_NOT_FOUND",
            ErrorCode::Exists => "ERR_EXISTS",
        }
    }

    /// Parses a code received in an `ERROR` frame; `None` for a code outside the table.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == text)
    }

    /// Frame-level errors close the connection (PROTOCOL.md §9).
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::Protocol | ErrorCode::ProtocolVersion | ErrorCode::PeerCredentials
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of every fallible operation of this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The stable code (the same in every peer).
    pub code: ErrorCode,
    /// A one-line description.
    pub message: String,
    /// Set for `ERR_SYSCALL`.
    pub errno: Option<i32>,
    /// Set for `ERR_SYSCALL`: the failing system call.
    pub syscall: Option<&'static str>,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), errno: None, syscall: None }
    }

    /// An `ERR_SYSCALL` from `errno` (read right away, before anything else can change it).
    pub fn last_os(syscall: &'static str) -> Error {
        let err = std::io::Error::last_os_error();
        Error::from_errno(syscall, err.raw_os_error().unwrap_or(0))
    }

    /// An `ERR_SYSCALL` for `syscall` failing with `errno`.
    pub fn from_errno(syscall: &'static str, errno: i32) -> Error {
        let text = std::io::Error::from_raw_os_error(errno);
        Error {
            code: ErrorCode::Syscall,
            message: format!("{syscall} failed: {text}"),
            errno: Some(errno),
            syscall: Some(syscall),
        }
    }

    /// An `ERR_SYSCALL` for `syscall` from an `io::Error` (its errno when it has one).
    pub fn from_io(syscall: &'static str, err: &std::io::Error) -> Error {
        match err.raw_os_error() {
            Some(errno) => Error::from_errno(syscall, errno),
            None => Error::new(ErrorCode::Syscall, format!("{syscall} failed: {err}")),
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The same error, its message prefixed with the file it is about.
    pub fn with_context(mut self, path: &std::path::Path) -> Error {
        self.message = format!("{}: {}", path.display(), self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn err<T>(code: ErrorCode, message: impl Into<String>) -> Result<T> {
    Err(Error::new(code, message))
}
