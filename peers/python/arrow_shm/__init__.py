"""arrow-shm: Arrow tables between processes through sealed shared memory."""

__version__ = "0.1.0"

from .channel import Channel, connect
from .errors import ArrowShmError
from .limits import IpcLimits
from .listener import Listener, listen
from .message import ReceivedTable
from .seed import SeedListener, seed_receive
from .store import StoreClient, StoreWatch, open_store
from .store_protocol import PutResult, StoreEntry, StoreEvent, StoreStats

__all__ = [
    "ArrowShmError",
    "Channel",
    "IpcLimits",
    "Listener",
    "ReceivedTable",
    "PutResult",
    "SeedListener",
    "StoreClient",
    "StoreEntry",
    "StoreEvent",
    "StoreStats",
    "StoreWatch",
    "connect",
    "listen",
    "open_store",
    "seed_receive",
    "__version__",
]
