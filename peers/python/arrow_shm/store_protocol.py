"""What a table store client agrees on with the store (PROTOCOL.md §15): names, reserved keys,
decimals, and the shapes of its answers (put, list, stats, watch events). The Node side keeps the
same in src/store/protocol.ts."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import pyarrow as pa

from .errors import ERR_INVALID_ARGUMENT, ERR_PROTOCOL, ERR_RESOURCE_LIMIT, ArrowShmError

#: The capability both sides list in HELLO / WELCOME (§15.1).
STORE_CAPABILITY = "store"
#: Reserved TABLE metadata keys of a put and of a get's answer (§15.3).
NAME_KEY = "arrow-shm.name"
REPLACE_KEY = "arrow-shm.replace"
VERSION_KEY = "arrow-shm.version"
_RESERVED = "arrow-shm."
#: §15.6 max_name_bytes (a store may be configured otherwise; a client checks the default).
MAX_NAME_BYTES = 256
#: Largest get timeout_ms a request may carry (a §15.1 decimal has at most 9 digits).
MAX_TIMEOUT_MS = 999_999_999
#: Rows of a listing this client converts (a listing is the store's word: bound it).
DEFAULT_MAX_LIST_ENTRIES = 1_048_576

_NAME_CHARS = re.compile(r"[A-Za-z0-9._\-/:=@+]*\Z")


def check_name(name: object, what: str = "name") -> str:
    """A name (§15.2): 1 to 256 bytes of ``A-Z a-z 0-9 . _ - / : = @ +``; a prefix may be empty.
    Else ``ERR_INVALID_ARGUMENT``."""
    if not isinstance(name, str) or (what == "name" and not name):
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"a {what} must be a non-empty str")
    # The alphabet is ASCII, so characters are bytes: the length first, then the pattern.
    if len(name) > MAX_NAME_BYTES:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{what} of {len(name)} bytes exceeds max_name_bytes {MAX_NAME_BYTES}")
    if not _NAME_CHARS.match(name):
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{what} {name[:64]!r} has characters outside A-Z a-z 0-9 . _ - / : = @ +")
    return name


def check_prefix(prefix: object) -> str:
    """A prefix (list, watch): empty, or like a name."""
    return check_name(prefix, "prefix")


def put_metadata(name: str, metadata: Optional[Mapping[str, str]], replace: bool) -> Dict[str, str]:
    """The TABLE metadata of a put: the user's keys (none reserved), the name, replace."""
    check_name(name)
    kv: Dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ArrowShmError(ERR_INVALID_ARGUMENT, "metadata keys and values must be str")
        if key.startswith(_RESERVED):
            raise ArrowShmError(ERR_INVALID_ARGUMENT, f"metadata key {key!r} is reserved ({_RESERVED}*)")
        kv[key] = value
    kv[NAME_KEY] = name
    if replace:
        kv[REPLACE_KEY] = "1"
    return kv


def store_decimal(kv: Mapping[str, str], key: str) -> int:
    """A number the store sent (§15.1: ``0`` or ``[1-9][0-9]*``, at most 19 digits, below 2^63).
    A missing or malformed one is the store's fault: ``ERR_PROTOCOL``."""
    text = kv.get(key)
    ok = text is not None and 0 < len(text) <= 19 and text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")
    if not ok or int(text) >= 2**63:  # type: ignore[arg-type]
        raise ArrowShmError(ERR_PROTOCOL, f"the store sent {key}={str(text)[:32]!r}, not a decimal of at most 19 digits")
    return int(text)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PutResult:
    version: int
    #: What the store accounts for this version (the segment's size).
    bytes: int
    rows: int


@dataclass(frozen=True)
class StoreEntry:
    """One row of :meth:`StoreClient.list`."""

    name: str
    version: int
    bytes: int
    ipc_length: int
    rows: int
    created_ms: int
    #: Gets of this version not yet released, all clients.
    holds: int
    metadata: Dict[str, str]


@dataclass(frozen=True)
class StoreStats:
    entries: int
    bytes: int
    held_bytes: int
    memory: int
    evict: str
    evictions: int


@dataclass(frozen=True)
class StoreEvent:
    """A watch event: ``event`` is ``put``, ``delete`` or ``evict``; ``bytes`` only for ``put``."""

    event: str
    name: str
    version: int
    bytes: Optional[int] = None


def put_result(kv: Mapping[str, str]) -> PutResult:
    return PutResult(store_decimal(kv, "version"), store_decimal(kv, "bytes"), store_decimal(kv, "rows"))


def store_stats(kv: Mapping[str, str]) -> StoreStats:
    evict = kv.get("evict")
    if evict not in ("lru", "none"):
        raise ArrowShmError(ERR_PROTOCOL, f"the store reported evict={str(evict)[:32]!r}")
    return StoreStats(
        store_decimal(kv, "entries"),
        store_decimal(kv, "bytes"),
        store_decimal(kv, "held_bytes"),
        store_decimal(kv, "memory"),
        evict,
        store_decimal(kv, "evictions"),
    )


def store_event(kv: Mapping[str, str]) -> StoreEvent:
    event, name = kv.get("event"), kv.get("name")
    if event not in ("put", "delete", "evict") or name is None:
        raise ArrowShmError(ERR_PROTOCOL, f"malformed store event {str(dict(kv))[:200]}")
    size = store_decimal(kv, "bytes") if "bytes" in kv else None
    return StoreEvent(event, name, store_decimal(kv, "version"), size)


_LIST_COLUMNS = {
    "name": pa.string(),
    "version": pa.uint64(),
    "bytes": pa.uint64(),
    "ipc_length": pa.uint64(),
    "rows": pa.uint64(),
    "created_ms": pa.int64(),
    "holds": pa.uint32(),
    "metadata": pa.string(),
}


def list_entries(table: pa.Table, max_entries: int) -> List[StoreEntry]:
    """The listing table of §15.3 (already validated, UTF-8 included) as :class:`StoreEntry` s;
    more than ``max_entries`` rows is ``ERR_RESOURCE_LIMIT``, another shape ``ERR_PROTOCOL``."""
    if table.num_rows > max_entries:
        raise ArrowShmError(ERR_RESOURCE_LIMIT, f"the store's listing has {table.num_rows} rows, over max_list_entries {max_entries}")
    columns = {}
    for name, type_ in _LIST_COLUMNS.items():
        index = table.schema.get_field_index(name)
        if index < 0 or table.schema.field(index).type != type_:
            raise ArrowShmError(ERR_PROTOCOL, f"the store's listing has no {type_} column {name}")
        columns[name] = table.column(index).to_pylist()
    out = []
    for i in range(table.num_rows):
        row = {name: values[i] for name, values in columns.items()}
        if any(v is None for v in row.values()):
            raise ArrowShmError(ERR_PROTOCOL, f"the store's listing has a null in row {i}")
        try:
            metadata = json.loads(row["metadata"])
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ArrowShmError(ERR_PROTOCOL, f"the store's listing row {i} has metadata that is not a JSON object of strings")
        row["metadata"] = metadata
        out.append(StoreEntry(**row))
    return out
