"""arrow-shm: Arrow tables between processes through sealed shared memory."""

__version__ = "0.1.0"

from .channel import Channel, Listener, connect, listen
from .errors import ArrowShmError
from .message import Message
from .seed import SeedListener, seed_receive

__all__ = [
    "ArrowShmError",
    "Channel",
    "Listener",
    "Message",
    "SeedListener",
    "connect",
    "listen",
    "seed_receive",
    "__version__",
]
