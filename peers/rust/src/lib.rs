//! arrow-shm, the Rust peer: Apache Arrow tables between processes on one Linux machine through
//! sealed `memfd` segments passed over `SOCK_SEQPACKET` sockets (see docs/PROTOCOL.md).

pub mod channel;
pub mod cli;
pub mod engine;
pub mod error;
pub mod frame;
pub mod ipc;
pub mod ring;
pub mod seed;
pub mod segment;
pub mod server;
pub mod stream;
pub mod sys;

pub use channel::{connect, Channel, Listener, ReceivedTable, Options};
pub use error::{Error, ErrorCode, Result};
pub use ipc::Table;
pub use stream::{open_stream, publish, subscribe, Publication, ReaderOptions, StreamBatch, StreamReader, StreamWriter, WriterOptions};
