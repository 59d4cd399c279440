//! Where a hand-off's time goes: each stage of a send or receive is reported to one
//! process-wide hook, only while one is set, so an untraced hand-off pays one atomic load per
//! stage. The Node peer publishes the same stages on its `arrow-shm:handoff` diagnostics channel.

use std::sync::atomic::{AtomicPtr, Ordering};

/// Stages in the order a hand-off goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffStage {
    /// Sender: the IPC bytes are in the segment and it is sealed.
    Copy,
    /// Sender: `sendmsg` returned.
    Send,
    /// Receiver: `recvmsg` returned the TABLE frame and its fd.
    Wake,
    /// Receiver: size and seals checked, the segment mapped.
    Map,
    /// Receiver: the IPC stream's framing and limits validated.
    Check,
    /// Receiver: the `ACK` was sent (this peer acknowledges before the application decodes).
    Ack,
    /// Receiver: the table is decoded (every buffer, offset and UTF-8 string checked).
    Decode,
}

impl HandoffStage {
    /// The stage's name as the benchmark prints it, e.g. `"map"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffStage::Copy => "copy",
            HandoffStage::Send => "send",
            HandoffStage::Wake => "wake",
            HandoffStage::Map => "map",
            HandoffStage::Check => "check",
            HandoffStage::Ack => "ack",
            HandoffStage::Decode => "decode",
        }
    }
}

/// One stage of one hand-off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandoffEvent {
    /// The stage that ended.
    pub stage: HandoffStage,
    /// The TABLE frame's `message_id` (the sender's numbering, on both sides).
    pub message_id: u64,
    /// When the stage ended: `CLOCK_MONOTONIC` in milliseconds (see [`monotonic_ms`]).
    pub at_ms: f64,
}

/// A function that receives every [`HandoffEvent`] of the process (from any thread).
pub type HandoffHook = fn(&HandoffEvent);

static HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Sets (or with `None`, removes) the process-wide hand-off hook.
pub fn set_handoff_hook(hook: Option<HandoffHook>) {
    HOOK.store(hook.map_or(std::ptr::null_mut(), |f| f as *mut ()), Ordering::Release);
}

/// `CLOCK_MONOTONIC` in milliseconds: the clock every peer's benchmark uses.
pub fn monotonic_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain syscall into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Reports `stage` of message `message_id` to the hook, if one is set.
pub(crate) fn trace_stage(stage: HandoffStage, message_id: u64) {
    let hook = HOOK.load(Ordering::Acquire);
    if !hook.is_null() {
        // SAFETY: only `set_handoff_hook` stores a non-null value, and it stores a `HandoffHook`.
        let hook: HandoffHook = unsafe { std::mem::transmute::<*mut (), HandoffHook>(hook) };
        hook(&HandoffEvent { stage, message_id, at_ms: monotonic_ms() });
    }
}
