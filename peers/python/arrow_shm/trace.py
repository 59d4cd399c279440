"""Where a hand-off's time goes: each stage of a send or receive is reported to a hook, only while
one is set, so an untraced hand-off pays one check per stage. Mirrors src/trace.ts.

Stages in the order a hand-off goes through them. Sender: ``copy`` (the IPC bytes are in a segment
and sealed), ``send`` (sendmsg returned). Receiver: ``wake`` (recvmsg returned the frame), ``map``
(seals, size and mmap checked and done), ``check`` (the IPC stream validated), ``ack`` (the ACK
sent), then, when the application first asks for ``ReceivedTable.table``: ``decode`` (a pyarrow
Table exists) and ``validate`` (the ``validate`` policy's checks done).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

#: ``hook(stage, message_id, at)``: ``at`` is when the stage ended, CLOCK_MONOTONIC in
#: milliseconds (the clock of every peer's benchmark); ``message_id`` is the TABLE frame's id on
#: the side that reports it (0 for ``copy``: the frame has no id yet).
HandoffHook = Callable[[str, int, float], None]

_hook: Optional[HandoffHook] = None


def set_handoff_hook(hook: Optional[HandoffHook]) -> None:
    """Report every stage of this process's hand-offs to ``hook`` (``None``: stop)."""
    global _hook
    _hook = hook


def trace_stage(stage: str, message_id: int) -> None:
    hook = _hook
    if hook is not None:
        hook(stage, message_id, time.monotonic_ns() / 1e6)
