//! What a table store client agrees on with the store (PROTOCOL.md §15): names, reserved keys,
//! decimals, and the shapes of its answers (put, list, stats, watch events). The Node side keeps
//! the same in src/store/protocol.ts, the Python one in arrow_shm/store_protocol.py.

use arrow_array::{Array, Int64Array, StringArray, UInt32Array, UInt64Array};
use arrow_schema::DataType;

use crate::error::{err, Error, ErrorCode, Result};
use crate::frame::{kv_get, KeyValues};
use crate::ipc::{self, Table, WalkMode};

/// The capability both sides list in HELLO / WELCOME (§15.1).
pub const STORE_CAPABILITY: &str = "store";
/// Reserved TABLE metadata key of a put and of a get's answer: the name (§15.3).
pub const NAME_KEY: &str = "arrow-shm.name";
/// Reserved TABLE metadata key of a put: `1` makes a new version of an existing name.
pub const REPLACE_KEY: &str = "arrow-shm.replace";
/// Reserved TABLE metadata key of a get's answer: the version (decimal).
pub const VERSION_KEY: &str = "arrow-shm.version";
const RESERVED: &str = "arrow-shm.";
/// §15.6 `max_name_bytes` (a store may be configured otherwise; a client checks the default).
pub const MAX_NAME_BYTES: usize = 256;
/// Largest get `timeout_ms` a request may carry (a §15.1 decimal has at most 9 digits).
pub const MAX_TIMEOUT_MS: u64 = 999_999_999;
/// Rows of a listing this client converts (a listing is the store's word: bound it).
pub const DEFAULT_MAX_LIST_ENTRIES: usize = 1_048_576;
/// Bytes of a listing's IPC stream this client maps: 16,384 names (`max_entries`) with up to
/// 16 KiB of metadata each, JSON-escaped, fit.
pub const DEFAULT_MAX_LIST_BYTES: u64 = 1 << 30;

/// A name (§15.2): 1 to 256 bytes of `A-Z a-z 0-9 . _ - / : = @ +`. `ERR_INVALID_ARGUMENT` otherwise.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return err(ErrorCode::InvalidArgument, "a name must not be empty");
    }
    check_chars(name, "name")
}

/// A prefix (list, watch): empty, or like a name.
pub fn check_prefix(prefix: &str) -> Result<()> {
    check_chars(prefix, "prefix")
}

fn check_chars(text: &str, what: &str) -> Result<()> {
    if text.len() > MAX_NAME_BYTES {
        return err(ErrorCode::InvalidArgument, format!("{what} of {} bytes exceeds max_name_bytes {MAX_NAME_BYTES}", text.len()));
    }
    if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:=@+".contains(&b)) {
        let shown: String = text.chars().take(64).collect();
        return err(ErrorCode::InvalidArgument, format!("{what} {shown:?} has characters outside A-Z a-z 0-9 . _ - / : = @ +"));
    }
    Ok(())
}

/// The TABLE metadata of a put: the user's keys (none reserved), the name, replace.
pub fn put_metadata(name: &str, metadata: &KeyValues, replace: bool) -> Result<KeyValues> {
    check_name(name)?;
    let mut kv = KeyValues::with_capacity(metadata.len() + 2);
    for (key, value) in metadata {
        if key.starts_with(RESERVED) {
            return err(ErrorCode::InvalidArgument, format!("metadata key {key:?} is reserved ({RESERVED}*)"));
        }
        kv.push((key.clone(), value.clone()));
    }
    kv.push((NAME_KEY.into(), name.into()));
    if replace {
        kv.push((REPLACE_KEY.into(), "1".into()));
    }
    Ok(kv)
}

/// A number the store sent (§15.1: `0` or `[1-9][0-9]*`, at most 19 digits, below 2^63). A
/// missing or malformed one is the store's fault: `ERR_PROTOCOL`.
pub fn store_decimal(kv: &KeyValues, key: &str) -> Result<u64> {
    let text = kv_get(kv, key).unwrap_or("");
    let ok = (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    match text.parse::<u64>() {
        Ok(n) if ok && n < 1 << 63 => Ok(n),
        _ => {
            let shown: String = text.chars().take(32).collect();
            err(ErrorCode::Protocol, format!("the store sent {key}={shown:?}, not a decimal of at most 19 digits"))
        }
    }
}

/// What a put made (§15.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    /// The new version's number (one counter per store process).
    pub version: u64,
    /// What the store accounts for this version (the segment's size).
    pub bytes: u64,
    /// Rows of the table.
    pub rows: u64,
}

/// One row of [`crate::store::StoreClient::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    /// The name.
    pub name: String,
    /// Its current version.
    pub version: u64,
    /// The segment's size, what the store accounts.
    pub bytes: u64,
    /// The IPC stream's length.
    pub ipc_length: u64,
    /// Rows of the table.
    pub rows: u64,
    /// When the version was put, ms since the Unix epoch.
    pub created_ms: i64,
    /// Gets of this version not yet released, all clients.
    pub holds: u32,
    /// The user metadata of the put.
    pub metadata: KeyValues,
}

/// A store's usage (`stats`, §15.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    /// Names in the store.
    pub entries: u64,
    /// Accounted bytes (§15.4).
    pub bytes: u64,
    /// Bytes of versions some client holds.
    pub held_bytes: u64,
    /// The memory budget.
    pub memory: u64,
    /// The eviction policy: `lru` or `none`.
    pub evict: String,
    /// Names evicted so far.
    pub evictions: u64,
}

/// What a watch saw happen to a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEventKind {
    /// A put (a replace included).
    Put,
    /// A delete.
    Delete,
    /// An eviction (§15.4).
    Evict,
}

/// A watch event (§15.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEvent {
    /// What happened.
    pub event: StoreEventKind,
    /// To which name.
    pub name: String,
    /// The version put, deleted or evicted.
    pub version: u64,
    /// For a put: the new version's accounted bytes.
    pub bytes: Option<u64>,
}

/// A put's answer.
pub fn put_result(kv: &KeyValues) -> Result<PutResult> {
    Ok(PutResult { version: store_decimal(kv, "version")?, bytes: store_decimal(kv, "bytes")?, rows: store_decimal(kv, "rows")? })
}

/// A stats answer.
pub fn store_stats(kv: &KeyValues) -> Result<StoreStats> {
    let evict = kv_get(kv, "evict").unwrap_or("");
    if evict != "lru" && evict != "none" {
        let shown: String = evict.chars().take(32).collect();
        return err(ErrorCode::Protocol, format!("the store reported evict={shown:?}"));
    }
    Ok(StoreStats {
        entries: store_decimal(kv, "entries")?,
        bytes: store_decimal(kv, "bytes")?,
        held_bytes: store_decimal(kv, "held_bytes")?,
        memory: store_decimal(kv, "memory")?,
        evict: evict.to_string(),
        evictions: store_decimal(kv, "evictions")?,
    })
}

/// A watch event frame's key/values.
pub fn store_event(kv: &KeyValues) -> Result<StoreEvent> {
    let event = match kv_get(kv, "event") {
        Some("put") => StoreEventKind::Put,
        Some("delete") => StoreEventKind::Delete,
        Some("evict") => StoreEventKind::Evict,
        _ => return err(ErrorCode::Protocol, format!("malformed store event {:.200}", format!("{kv:?}"))),
    };
    let Some(name) = kv_get(kv, "name") else { return err(ErrorCode::Protocol, "a store event without a name") };
    let bytes = if kv_get(kv, "bytes").is_some() { Some(store_decimal(kv, "bytes")?) } else { None };
    Ok(StoreEvent { event, name: name.to_string(), version: store_decimal(kv, "version")?, bytes })
}

/// The rows a listing's IPC stream declares (the sum of its record batches' `length`), read from
/// the already verified message headers: bounded before anything is decoded.
pub fn listing_rows(stream: &[u8], max_entries: usize) -> Result<usize> {
    let spans = ipc::walk_messages(stream, WalkMode::Stream, &ipc::Limits::default(), &mut None)?;
    let mut rows = 0u64;
    for span in spans.iter().filter(|s| s.header == arrow_ipc::MessageHeader::RecordBatch) {
        // The prefix: continuation + size, or the pre-0.15 bare size; walk_messages checked both.
        let at = span.start;
        let prefix = if stream[at..at + 4] == [0xFF; 4] { 8 } else { 4 };
        let size = i32::from_le_bytes(stream[at + prefix - 4..at + prefix].try_into().expect("4 bytes")) as usize;
        let message = arrow_ipc::root_as_message(&stream[at + prefix..at + prefix + size])
            .map_err(|e| Error::new(ErrorCode::IpcInvalid, format!("listing: {e}")))?;
        let length = message.header_as_record_batch().map_or(0, |rb| rb.length());
        rows = rows.saturating_add(u64::try_from(length).map_err(|_| Error::new(ErrorCode::IpcInvalid, format!("listing: a batch of {length} rows")))?);
    }
    if rows > max_entries as u64 {
        return err(ErrorCode::ResourceLimit, format!("the store's listing has {rows} rows, over max_list_entries {max_entries}"));
    }
    Ok(rows as usize)
}

/// The listing table of §15.3 (its rows already bounded by [`listing_rows`]) as [`StoreEntry`]s;
/// another shape, a null or metadata that is not a JSON object of strings is `ERR_PROTOCOL`.
pub fn list_entries(table: &Table) -> Result<Vec<StoreEntry>> {
    let mut out = Vec::with_capacity(table.num_rows());
    for batch in &table.batches {
        let column = |name: &str, ty: DataType| -> Result<&dyn Array> {
            match batch.column_by_name(name) {
                Some(c) if *c.data_type() == ty => {
                    if c.null_count() > 0 {
                        return err(ErrorCode::Protocol, format!("the store's listing has a null {name}"));
                    }
                    Ok(c.as_ref())
                }
                _ => err(ErrorCode::Protocol, format!("the store's listing has no {ty} column {name}")),
            }
        };
        fn cast<T: 'static>(a: &dyn Array) -> &T {
            a.as_any().downcast_ref::<T>().expect("type checked")
        }
        let names = cast::<StringArray>(column("name", DataType::Utf8)?);
        let versions = cast::<UInt64Array>(column("version", DataType::UInt64)?);
        let bytes = cast::<UInt64Array>(column("bytes", DataType::UInt64)?);
        let ipc_lengths = cast::<UInt64Array>(column("ipc_length", DataType::UInt64)?);
        let rows = cast::<UInt64Array>(column("rows", DataType::UInt64)?);
        let created = cast::<Int64Array>(column("created_ms", DataType::Int64)?);
        let holds = cast::<UInt32Array>(column("holds", DataType::UInt32)?);
        let metadata = cast::<StringArray>(column("metadata", DataType::Utf8)?);
        for i in 0..batch.num_rows() {
            let Some(kv) = json_strings(metadata.value(i)) else {
                return err(ErrorCode::Protocol, format!("the store's listing row {i} has metadata that is not a JSON object of strings"));
            };
            out.push(StoreEntry {
                name: names.value(i).to_string(),
                version: versions.value(i),
                bytes: bytes.value(i),
                ipc_length: ipc_lengths.value(i),
                rows: rows.value(i),
                created_ms: created.value(i),
                holds: holds.value(i),
                metadata: kv,
            });
        }
    }
    Ok(out)
}

/// A JSON object whose values are all strings (a listing's `metadata`), strictly: `None` for
/// anything else. (No JSON crate for this one shape.)
pub fn json_strings(text: &str) -> Option<KeyValues> {
    let mut p = Json { s: text.as_bytes(), at: 0 };
    let mut out = KeyValues::new();
    p.skip_ws();
    p.eat(b'{')?;
    p.skip_ws();
    if p.peek() == Some(b'}') {
        p.at += 1;
    } else {
        loop {
            p.skip_ws();
            let key = p.string()?;
            p.skip_ws();
            p.eat(b':')?;
            p.skip_ws();
            let value = p.string()?;
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(e) => e.1 = value, // JSON.parse keeps the last
                None => out.push((key, value)),
            }
            p.skip_ws();
            match p.peek()? {
                b',' => p.at += 1,
                b'}' => {
                    p.at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    p.skip_ws();
    (p.at == p.s.len()).then_some(out)
}

struct Json<'a> {
    s: &'a [u8],
    at: usize,
}

impl Json<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }
    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.s.get(self.at..self.at + 4)?).ok()?;
        self.at += 4;
        u32::from_str_radix(digits, 16).ok().filter(|_| digits.bytes().all(|b| b.is_ascii_hexdigit()))
    }
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let b = self.peek()?;
            self.at += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.at += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) && self.s.get(self.at..self.at + 2) == Some(b"\\u") {
                                self.at += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            // A lone surrogate: JSON.stringify escapes it, Rust strings cannot hold it.
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return None,
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                0..=0x1F => return None,
                _ => out.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_decimals() {
        assert!(check_name("a/b:c=d@e+f.g_h-1").is_ok());
        assert_eq!(check_name("").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_name("a b").unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(check_name(&"a".repeat(257)).unwrap_err().code, ErrorCode::InvalidArgument);
        assert!(check_prefix("").is_ok());
        let kv = |v: &str| vec![("n".to_string(), v.to_string())];
        assert_eq!(store_decimal(&kv("0"), "n").unwrap(), 0);
        assert_eq!(store_decimal(&kv("9223372036854775807"), "n").unwrap(), i64::MAX as u64);
        for bad in ["", "01", "-1", "+1", "1e3", " 1", "9223372036854775808", "12345678901234567890"] {
            assert_eq!(store_decimal(&kv(bad), "n").unwrap_err().code, ErrorCode::Protocol, "{bad}");
        }
        assert_eq!(put_metadata("x", &vec![("arrow-shm.x".into(), "1".into())], false).unwrap_err().code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn json_objects_of_strings() {
        assert_eq!(json_strings("{}"), Some(vec![]));
        assert_eq!(
            json_strings(r#" {"a":"x\"y","b\u00e9":"\ud83d\ude00\n"} "#),
            Some(vec![("a".into(), "x\"y".into()), ("bé".into(), "😀\n".into())])
        );
        for bad in ["", "[]", "{\"a\":1}", "{\"a\":\"b\",}", "{\"a\":\"b\"} x", "{\"a\":\"\u{1}\"}", "{\"a\":\"\\q\"}", "null"] {
            assert_eq!(json_strings(bad), None, "{bad}");
        }
    }
}
