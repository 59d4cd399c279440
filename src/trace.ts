// Where a hand-off's time goes: each stage of a send or receive is published on the
// `arrow-shm:handoff` diagnostics channel (node:diagnostics_channel), only while someone
// subscribes, so an untraced hand-off pays one boolean check per stage.
import diagnosticsChannel from 'node:diagnostics_channel';

/**
 * Stages in the order a hand-off goes through them. Sender: `copy` (the IPC bytes are in a
 * segment and sealed), `send` (sendmsg returned). Receiver: `wake` (recvmsg returned the frame),
 * `map` (seals, size and mmap checked and done), `check` (the IPC stream validated), `decode`
 * (an apache-arrow Table exists).
 */
export type HandoffStage = 'copy' | 'send' | 'wake' | 'map' | 'check' | 'decode';

export interface HandoffEvent {
  stage: HandoffStage;
  /** The TABLE frame's message_id on the side that publishes the event. */
  messageId: bigint;
  /** When the stage ended: CLOCK_MONOTONIC in milliseconds, the clock of every peer's benchmark. */
  at: number;
}

/** Subscribe with `diagnostics_channel.subscribe('arrow-shm:handoff', (event) => ...)`. */
export const HANDOFF_CHANNEL = 'arrow-shm:handoff';
const handoff = diagnosticsChannel.channel(HANDOFF_CHANNEL);

export function traceStage(stage: HandoffStage, messageId: bigint): void {
  if (handoff.hasSubscribers) handoff.publish({ stage, messageId, at: Number(process.hrtime.bigint()) / 1e6 } satisfies HandoffEvent);
}
