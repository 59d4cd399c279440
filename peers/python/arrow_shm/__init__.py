"""arrow-shm: Arrow tables between processes through sealed shared memory."""

__version__ = "0.1.0"

from .channel import Channel, connect
from .errors import ArrowShmError
from .limits import IpcLimits
from .listener import Listener, listen
from .message import ReceivedTable
from .seed import SeedListener, seed_receive

__all__ = [
    "ArrowShmError",
    "Channel",
    "IpcLimits",
    "Listener",
    "ReceivedTable",
    "SeedListener",
    "connect",
    "listen",
    "seed_receive",
    "__version__",
]
