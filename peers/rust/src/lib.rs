//! arrow-shm, the Rust peer: Apache Arrow tables between processes on one Linux machine through
//! sealed `memfd` segments passed over `SOCK_SEQPACKET` sockets (see docs/PROTOCOL.md). It speaks
//! the same protocol as the Node and Python peers of the project.
//!
//! A sender writes the table once into a fresh memory file, seals it and passes its descriptor;
//! the receiver checks the seals and bounds, maps the file read-only and decodes the table in
//! place (every column buffer points into the mapping), checking every offset and string.
//!
//! # Example
//!
//! One side listens, the other connects and sends; here both in one process:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
//! use arrow_shm::{connect, Listener, Options};
//!
//! # fn main() -> arrow_shm::Result<()> {
//! let address = format!("@arrow-shm-doc-{}", std::process::id()); // abstract socket name
//! let listener = Listener::bind(&address, Options::default())?;
//!
//! let sender = std::thread::spawn(move || -> arrow_shm::Result<()> {
//!     let ids: ArrayRef = Arc::new(UInt32Array::from(vec![1, 2, 3]));
//!     let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
//!     let batch = RecordBatch::try_from_iter([("id", ids), ("name", names)]).unwrap();
//!     let mut channel = connect(&address, Options::default())?;
//!     let metadata = vec![("name".to_string(), "symbols".to_string())];
//!     channel.send_batches(&batch.schema(), &[batch], &metadata, Some(Duration::from_secs(5)))?; // waits for the ACK
//!     channel.close();
//!     Ok(())
//! });
//!
//! let mut channel = listener.accept(Some(Duration::from_secs(5)))?; // SO_PEERCRED check + handshake
//! let received = channel.receive(Some(Duration::from_secs(5)))?; // seals, bounds, framing checked
//! let table = received.decode()?; // zero-copy: the columns point into the mapping
//! assert_eq!(table.num_rows(), 3);
//! assert_eq!(received.metadata, vec![("name".to_string(), "symbols".to_string())]);
//! sender.join().unwrap()?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod channel;
pub mod cli;
pub mod engine;
pub mod error;
pub mod frame;
pub mod ipc;
pub mod pool;
pub mod ring;
pub mod seed;
pub mod segment;
pub mod server;
pub mod store;
pub mod stream;
pub mod sys;
pub mod trace;

pub use channel::{connect, Channel, Listener, ReceivedTable, Options};
pub use error::{Error, ErrorCode, Result};
pub use ipc::Table;
pub use store::{open_store, PutOptions, PutResult, StoreClient, StoreEntry, StoreEvent, StoreOptions, StoreWatch};
pub use stream::{open_stream, publish, subscribe, Publication, ReaderOptions, StreamBatch, StreamReader, StreamWriter, WriterOptions};
