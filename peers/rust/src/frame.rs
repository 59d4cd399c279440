//! The 64-byte frame header and the key/value block (PROTOCOL.md §3).

use crate::error::{err, ErrorCode, Result};

/// The first 4 bytes of every frame.
pub const MAGIC: [u8; 4] = *b"ASHM";
/// The protocol version this peer speaks.
pub const VERSION: u16 = 1;
/// Bytes of the fixed frame header.
pub const HEADER_LENGTH: usize = 64;
/// Largest frame (header + key/values), and the receive buffer size.
pub const MAX_FRAME: usize = 65_536;

/// TABLE flag: a leased (reusable, not write-sealed) segment (§6.2).
pub const FLAG_LEASED: u8 = 0x01;
/// TABLE flag: a request; the receiver answers with a RESPONSE.
pub const FLAG_REQUEST: u8 = 0x02;
/// TABLE/ERROR flag: the answer to the request `correlation_id`.
pub const FLAG_RESPONSE: u8 = 0x04;
/// TABLE flag: the IPC stream is inside the frame, after the key/values (§5.3).
pub const FLAG_INLINE: u8 = 0x08;
/// Every flag this peer knows; others are `ERR_PROTOCOL`.
pub const KNOWN_FLAGS: u8 = FLAG_LEASED | FLAG_REQUEST | FLAG_RESPONSE | FLAG_INLINE;

/// Frame kinds (PROTOCOL.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Connector's greeting (versions, capabilities).
    Hello = 1,
    /// Listener's answer to HELLO (the chosen version).
    Welcome = 2,
    /// A table in the attached segment.
    Table = 3,
    /// A TABLE (or STREAM_OPEN) was accepted.
    Ack = 4,
    /// A leased segment is handed back.
    Release = 5,
    /// A failure, with `code` and `message`.
    Error = 6,
    /// Orderly close.
    Goodbye = 7,
    /// Stream frames (PROTOCOL.md §12.1), only with the `stream` capability.
    StreamOpen = 8,
    /// A stream record too big for the ring, in its own segment.
    StreamSegment = 9,
    /// Asks a publication for its stream.
    Subscribe = 10,
    /// Table store requests, answers and events (PROTOCOL.md §15), only between a store and its clients.
    Store = 11,
}

impl Kind {
    /// The kind of a header's kind byte, if known.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Table,
            4 => Kind::Ack,
            5 => Kind::Release,
            6 => Kind::Error,
            7 => Kind::Goodbye,
            8 => Kind::StreamOpen,
            9 => Kind::StreamSegment,
            10 => Kind::Subscribe,
            11 => Kind::Store,
            _ => return None,
        })
    }
}

/// An ordered key/value map (keys unique).
pub type KeyValues = Vec<(String, String)>;

/// Looks a key up in a key/value list.
pub fn kv_get<'a>(kv: &'a KeyValues, key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A handshake decimal (PROTOCOL.md §4): `0` or `[1-9][0-9]*`, at most 9 digits; no sign, no
/// `0x`, no exponent, no spaces, not empty.
pub fn strict_decimal(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    let ok = !b.is_empty() && b.len() <= 9 && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1);
    ok.then(|| text.parse().expect("nine digits fit a u32"))
}

/// A decoded frame header plus its key/value block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version of the frame.
    pub version: u16,
    /// What the frame is.
    pub kind: Kind,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// The sender's number for this frame (from 1).
    pub message_id: u64,
    /// The `message_id` this frame answers (0 if none).
    pub correlation_id: u64,
    /// Where the IPC stream starts in the attached segment.
    pub ipc_offset: u64,
    /// Length of the IPC stream in the attached segment.
    pub ipc_length: u64,
    /// Number of fds attached.
    pub fd_count: u32,
    /// The key/value block.
    pub metadata: KeyValues,
}

impl Frame {
    /// A frame of `kind` with every other field zero or empty (ids are set when sent).
    pub fn new(kind: Kind) -> Frame {
        Frame {
            version: VERSION,
            kind,
            flags: 0,
            message_id: 0,
            correlation_id: 0,
            ipc_offset: 0,
            ipc_length: 0,
            fd_count: 0,
            metadata: Vec::new(),
        }
    }

    /// Encodes header + key/value block. Fails with `ERR_INVALID_ARGUMENT` if the frame would
    /// exceed 65,536 bytes or the metadata has duplicate keys.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.encode_with(None)
    }

    /// Encodes an INLINE TABLE (§5.3): header, key/value block, zero bytes up to the next multiple
    /// of 8, then the IPC stream `parts` copied straight into the frame (a send's one copy). Sets
    /// flag `INLINE`, `ipc_offset` and `ipc_length`; `ERR_INVALID_ARGUMENT` if the stream is empty
    /// or does not fit ([`inline_room`]).
    pub fn encode_inline(&self, parts: &[&[u8]]) -> Result<Vec<u8>> {
        if self.kind != Kind::Table {
            return err(ErrorCode::InvalidArgument, format!("an inline stream in a {:?} frame", self.kind));
        }
        self.encode_with(Some(parts))
    }

    fn encode_with(&self, inline: Option<&[&[u8]]>) -> Result<Vec<u8>> {
        let kv = encode_kv(&self.metadata)?;
        let (flags, ipc_offset, ipc_length, total) = match inline {
            None => (self.flags, self.ipc_offset, self.ipc_length, HEADER_LENGTH + kv.len()),
            Some(parts) => {
                let (start, len) = (inline_offset(kv.len()), parts.iter().map(|p| p.len()).sum::<usize>());
                if len == 0 {
                    return err(ErrorCode::InvalidArgument, "an empty inline IPC stream");
                }
                (self.flags | FLAG_INLINE, start as u64, len as u64, start.saturating_add(len))
            }
        };
        if total > MAX_FRAME {
            return err(
                ErrorCode::InvalidArgument,
                format!("frame of {total} bytes exceeds {MAX_FRAME} (metadata or inline stream too large)"),
            );
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.kind as u8);
        out.push(flags);
        out.extend_from_slice(&(HEADER_LENGTH as u32).to_le_bytes());
        out.extend_from_slice(&(kv.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.message_id.to_le_bytes());
        out.extend_from_slice(&self.correlation_id.to_le_bytes());
        out.extend_from_slice(&ipc_offset.to_le_bytes());
        out.extend_from_slice(&ipc_length.to_le_bytes());
        out.extend_from_slice(&self.fd_count.to_le_bytes());
        out.extend_from_slice(&[0u8; 12]);
        debug_assert_eq!(out.len(), HEADER_LENGTH);
        out.extend_from_slice(&kv);
        if let Some(parts) = inline {
            out.resize(ipc_offset as usize, 0);
            for p in parts {
                out.extend_from_slice(p);
            }
        }
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }

    /// Decodes one datagram strictly; every failure is `ERR_PROTOCOL`.
    pub fn decode(buf: &[u8]) -> Result<Frame> {
        if buf.len() < HEADER_LENGTH {
            return err(
                ErrorCode::Protocol,
                format!("frame of {} bytes is shorter than the {HEADER_LENGTH}-byte header", buf.len()),
            );
        }
        if buf.len() > MAX_FRAME {
            return err(ErrorCode::Protocol, format!("frame of {} bytes exceeds {MAX_FRAME}", buf.len()));
        }
        if buf[0..4] != MAGIC {
            return err(ErrorCode::Protocol, format!("bad frame magic {:02x?}", &buf[0..4]));
        }
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        let version = u16_at(4);
        let kind = Kind::from_u8(buf[6])
            .ok_or_else(|| crate::Error::new(ErrorCode::Protocol, format!("unknown frame kind {}", buf[6])))?;
        let flags = buf[7];
        if flags & !KNOWN_FLAGS != 0 {
            return err(ErrorCode::Protocol, format!("unknown frame flags 0x{flags:02x}"));
        }
        let header_length = u32_at(8);
        if header_length as usize != HEADER_LENGTH {
            return err(ErrorCode::Protocol, format!("header_length {header_length}, expected {HEADER_LENGTH}"));
        }
        let metadata_length = u32_at(12) as usize;
        let (ipc_offset, ipc_length) = (u64_at(32), u64_at(40));
        // §5.3: an INLINE TABLE's stream starts at align8(64 + metadata_length) and ends the frame.
        if flags & FLAG_INLINE != 0 {
            let start = inline_offset(metadata_length) as u64;
            if kind != Kind::Table || ipc_offset != start || ipc_length == 0 || start.checked_add(ipc_length) != Some(buf.len() as u64) {
                return err(
                    ErrorCode::Protocol,
                    format!("INLINE {kind:?} frame of {} bytes with ipc_offset {ipc_offset}, ipc_length {ipc_length} and metadata_length {metadata_length} (the stream must start at {start} and end the frame)", buf.len()),
                );
            }
        } else if HEADER_LENGTH.checked_add(metadata_length) != Some(buf.len()) {
            return err(
                ErrorCode::Protocol,
                format!(
                    "metadata_length {metadata_length} does not match the frame's {} bytes after the header",
                    buf.len() - HEADER_LENGTH
                ),
            );
        }
        let metadata = decode_kv(&buf[HEADER_LENGTH..HEADER_LENGTH + metadata_length])?;
        Ok(Frame {
            version,
            kind,
            flags,
            message_id: u64_at(16),
            correlation_id: u64_at(24),
            ipc_offset,
            ipc_length,
            fd_count: u32_at(48),
            metadata,
        })
    }
}

/// Where an INLINE TABLE's IPC stream starts: after the header and key/values, 8-aligned (§5.3).
pub fn inline_offset(metadata_length: usize) -> usize {
    (HEADER_LENGTH + metadata_length).next_multiple_of(8)
}

/// The largest IPC stream an INLINE TABLE frame with `metadata` can carry (0: none fits).
pub fn inline_room(metadata: &KeyValues) -> Result<usize> {
    Ok(MAX_FRAME.saturating_sub(inline_offset(encode_kv(metadata)?.len())))
}

/// Encodes a key/value block; an empty map encodes as zero bytes.
pub fn encode_kv(kv: &KeyValues) -> Result<Vec<u8>> {
    if kv.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let count = u32::try_from(kv.len())
        .map_err(|_| crate::Error::new(ErrorCode::InvalidArgument, "too many metadata keys"))?;
    out.extend_from_slice(&count.to_le_bytes());
    for (i, (k, v)) in kv.iter().enumerate() {
        if kv[..i].iter().any(|(k2, _)| k2 == k) {
            return err(ErrorCode::InvalidArgument, format!("duplicate metadata key {k:?}"));
        }
        for s in [k, v] {
            let len = u32::try_from(s.len())
                .map_err(|_| crate::Error::new(ErrorCode::InvalidArgument, "metadata entry too long"))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(out)
}

/// Decodes a key/value block that must fill `buf` exactly; failures are `ERR_PROTOCOL`.
pub fn decode_kv(buf: &[u8]) -> Result<KeyValues> {
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let mut pos = 0usize;
    let read_u32 = |pos: &mut usize| -> Result<u32> {
        let end = pos.checked_add(4).filter(|&e| e <= buf.len());
        match end {
            Some(e) => {
                let v = u32::from_le_bytes(buf[*pos..e].try_into().unwrap());
                *pos = e;
                Ok(v)
            }
            None => err(ErrorCode::Protocol, format!("key/value block overrun at byte {pos}")),
        }
    };
    let read_str = |pos: &mut usize| -> Result<String> {
        let len = read_u32(pos)? as usize;
        let end = pos.checked_add(len).filter(|&e| e <= buf.len());
        let Some(e) = end else {
            return err(ErrorCode::Protocol, format!("key/value string of {len} bytes overruns the block"));
        };
        let s = std::str::from_utf8(&buf[*pos..e])
            .map_err(|_| crate::Error::new(ErrorCode::Protocol, "key/value string is not valid UTF-8"))?;
        *pos = e;
        Ok(s.to_owned())
    };
    let count = read_u32(&mut pos)? as usize;
    // Each entry takes at least 8 bytes: a count larger than that cannot fit.
    if count > (buf.len() - 4) / 8 {
        return err(ErrorCode::Protocol, format!("key/value count {count} cannot fit in {} bytes", buf.len()));
    }
    let mut out: KeyValues = Vec::with_capacity(count);
    for _ in 0..count {
        let k = read_str(&mut pos)?;
        let v = read_str(&mut pos)?;
        if out.iter().any(|(k2, _)| *k2 == k) {
            return err(ErrorCode::Protocol, format!("duplicate key {k:?} in key/value block"));
        }
        out.push((k, v));
    }
    if pos != buf.len() {
        return err(ErrorCode::Protocol, format!("{} trailing bytes after the key/value block", buf.len() - pos));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_decimals_are_strict() {
        for (text, want) in [("0", Some(0)), ("1", Some(1)), ("123456789", Some(123_456_789)), ("4294967", Some(4_294_967))] {
            assert_eq!(strict_decimal(text), want, "{text:?}");
        }
        for bad in ["", "01", "00", "+1", "-0", "0x1", "1e0", " 1", "1 ", "1234567890", "١"] {
            assert_eq!(strict_decimal(bad), None, "{bad:?}");
        }
    }

    fn sample() -> Frame {
        let mut f = Frame::new(Kind::Table);
        f.flags = FLAG_REQUEST;
        f.message_id = 7;
        f.correlation_id = 3;
        f.ipc_offset = 0;
        f.ipc_length = 1234;
        f.fd_count = 1;
        f.metadata = vec![("name".into(), "symbols".into()), ("é".into(), "".into())];
        f
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let bytes = f.encode().unwrap();
        assert_eq!(&bytes[0..4], b"ASHM");
        assert_eq!(Frame::decode(&bytes).unwrap(), f);
        let empty = Frame::new(Kind::Ack).encode().unwrap();
        assert_eq!(empty.len(), 64);
        assert!(Frame::decode(&empty).unwrap().metadata.is_empty());
    }

    #[test]
    fn header_validation() {
        let good = sample().encode().unwrap();
        let bad = |mutate: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            mutate(&mut b);
            Frame::decode(&b).unwrap_err().code
        };
        assert_eq!(bad(&|b| b[0] = b'X'), ErrorCode::Protocol);
        assert_eq!(bad(&|b| b[6] = 0), ErrorCode::Protocol);
        assert_eq!(bad(&|b| b[6] = 12), ErrorCode::Protocol);
        assert_eq!(bad(&|b| b[7] = 0x08), ErrorCode::Protocol);
        assert_eq!(bad(&|b| b[8] = 65), ErrorCode::Protocol);
        assert_eq!(bad(&|b| b[12] = b[12].wrapping_add(1)), ErrorCode::Protocol);
        assert_eq!(bad(&|b| b.truncate(63)), ErrorCode::Protocol);
        assert_eq!(bad(&|b| b.push(0)), ErrorCode::Protocol);
        // reserved bytes are ignored
        let mut b = good.clone();
        b[52..64].fill(0xAB);
        assert!(Frame::decode(&b).is_ok());
        let mut big = vec![0u8; MAX_FRAME + 1];
        big[..64].copy_from_slice(&good[..64]);
        assert_eq!(Frame::decode(&big).unwrap_err().code, ErrorCode::Protocol);
    }

    #[test]
    fn inline_frames_round_trip_and_fill_the_room() {
        let mut f = Frame::new(Kind::Table);
        f.flags = FLAG_RESPONSE;
        f.correlation_id = 9;
        f.metadata = vec![("k".into(), "v".into())]; // 14 bytes: the stream starts at align8(78) = 80
        let bytes = f.encode_inline(&[b"abc", b"defgh"]).unwrap();
        assert_eq!(bytes.len(), 88);
        assert_eq!(&bytes[78..80], &[0, 0]);
        let back = Frame::decode(&bytes).unwrap();
        assert_eq!((back.flags, back.ipc_offset, back.ipc_length, back.fd_count), (FLAG_RESPONSE | FLAG_INLINE, 80, 8, 0));
        assert_eq!(&bytes[80..], b"abcdefgh");
        // exactly the room fits; one byte more, an empty stream or another kind does not
        let room = inline_room(&f.metadata).unwrap();
        assert_eq!(room, MAX_FRAME - 80);
        assert_eq!(f.encode_inline(&[&vec![1u8; room]]).unwrap().len(), MAX_FRAME);
        assert_eq!(f.encode_inline(&[&vec![1u8; room], b"x"]).unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(f.encode_inline(&[]).unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(Frame::new(Kind::Ack).encode_inline(&[b"x"]).unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(inline_room(&vec![]).unwrap(), MAX_FRAME - HEADER_LENGTH);
        assert_eq!(inline_room(&vec![("k".into(), "x".repeat(MAX_FRAME))]).unwrap(), 0);
    }

    #[test]
    fn kv_validation() {
        let kv = |parts: &[&[u8]]| parts.concat();
        let le = |v: u32| v.to_le_bytes().to_vec();
        // good
        let ok = kv(&[&le(1), &le(1), b"a", &le(2), b"bc"]);
        assert_eq!(decode_kv(&ok).unwrap(), vec![("a".to_string(), "bc".to_string())]);
        assert_eq!(decode_kv(&le(0)).unwrap(), vec![]);
        assert_eq!(decode_kv(&[]).unwrap(), vec![]);
        let cases: Vec<Vec<u8>> = vec![
            kv(&[&le(1), &le(1), b"a", &le(3), b"bc"]),            // overrun
            kv(&[&le(1), &le(1), b"a", &le(2), b"bc", b"x"]),      // trailing
            kv(&[&le(1), &le(1), &[0xff], &le(0)]),                // invalid utf-8
            kv(&[&le(2), &le(1), b"a", &le(0), &le(1), b"a", &le(0)]), // duplicate
            kv(&[&le(u32::MAX)]),                                   // huge count
            kv(&[&le(1), &le(u32::MAX), b"a"]),                     // huge length
            vec![1, 0],                                             // short count
        ];
        for c in cases {
            assert_eq!(decode_kv(&c).unwrap_err().code, ErrorCode::Protocol, "{c:?}");
        }
        let dup = vec![("a".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())];
        assert_eq!(encode_kv(&dup).unwrap_err().code, ErrorCode::InvalidArgument);
        let mut f = Frame::new(Kind::Table);
        f.metadata = vec![("k".into(), "x".repeat(MAX_FRAME))];
        assert_eq!(f.encode().unwrap_err().code, ErrorCode::InvalidArgument);
    }
}
