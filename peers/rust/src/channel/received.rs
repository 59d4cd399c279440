//! A received table: the read-only mapping of its segment and the checked IPC range in it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use arrow_buffer::Buffer;

use crate::error::Result;
use crate::frame::{Frame, KeyValues, FLAG_REQUEST};
use crate::ipc::{self, StreamInfo, Table};
use crate::segment::{self, Mapping};

/// A received table: a read-only mapping of its segment and the IPC range inside it.
#[derive(Debug, Clone)]
pub struct ReceivedTable {
    map: Arc<Mapping>,
    ipc_offset: usize,
    ipc_length: usize,
    info: StreamInfo,
    /// The TABLE frame's `message_id` (the sender's numbering).
    pub message_id: u64,
    /// The TABLE frame's `correlation_id` (non-zero for a response).
    pub correlation_id: u64,
    /// The TABLE frame's flags (`FLAG_REQUEST`, `FLAG_RESPONSE`).
    pub flags: u8,
    /// User metadata of the TABLE frame.
    pub metadata: KeyValues,
    /// A table store's hold on this version (§15.5): its drop, with the last clone, sends RELEASE.
    pub(crate) hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl ReceivedTable {
    /// Builds a message from a mapping and a validated range.
    pub(crate) fn new(map: Mapping, ipc_offset: usize, ipc_length: usize, frame: Option<&Frame>, limits: &ipc::Limits) -> Result<ReceivedTable> {
        let info = ipc::validate_stream(&map.as_slice()[ipc_offset..ipc_offset + ipc_length], limits)?;
        Ok(ReceivedTable {
            map: Arc::new(map),
            ipc_offset,
            ipc_length,
            info,
            message_id: frame.map_or(0, |f| f.message_id),
            correlation_id: frame.map_or(0, |f| f.correlation_id),
            flags: frame.map_or(0, |f| f.flags),
            metadata: frame.map(|f| f.metadata.clone()).unwrap_or_default(),
            hold: None,
        })
    }

    /// Opens a seed-compat segment (whole file, unsealed allowed): the stream ends at its EOS.
    pub fn from_seed_fd(fd: &OwnedFd, max_message_bytes: u64) -> Result<ReceivedTable> {
        let (map, len) = segment::open_segment(fd.as_raw_fd(), 0, None, max_message_bytes, true)?;
        let mut m = ReceivedTable::new(map, 0, len as usize, None, &ipc::Limits::default())?;
        m.ipc_length = m.info.end;
        Ok(m)
    }

    /// Whether the sender asked for a response (flag `REQUEST`): answer with [`crate::Channel::respond`].
    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }

    /// The IPC stream bytes as received (the whole `ipc_length` range; for seed mode, up to and
    /// including the end-of-stream marker).
    pub fn ipc_bytes(&self) -> &[u8] {
        &self.map.as_slice()[self.ipc_offset..self.ipc_offset + self.ipc_length]
    }

    /// Length of the IPC range in the segment, in bytes.
    pub fn ipc_length(&self) -> usize {
        self.ipc_length
    }

    /// What the framing check found: messages, batches, where the stream ends.
    pub fn stream_info(&self) -> StreamInfo {
        self.info
    }

    /// The mapping (to check that decoded buffers lie inside it).
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// The IPC range as an Arrow `Buffer` over the mapping (no copy; keeps the mapping alive).
    pub fn buffer(&self) -> Buffer {
        ipc::mapping_buffer(&self.map, self.ipc_offset, self.ipc_length).expect("validated range")
    }

    /// Decodes the table in place (zero-copy; see [`ipc::decode_validated`]).
    pub fn decode(&self) -> Result<Table> {
        let table = ipc::decode_validated(&self.buffer().slice_with_length(0, self.info.end))?;
        crate::trace::trace_stage(crate::trace::HandoffStage::Decode, self.message_id);
        Ok(table)
    }
}
