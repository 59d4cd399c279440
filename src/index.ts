// arrow-shm: hand Apache Arrow tables to another process through sealed shared memory.
export { ArrowShmError, ErrorCodes, isArrowShmError, type ErrorCode } from './errors.js';
export { Segment, Mapping, SEALS_SEALED, SEALS_LEASED, describeSeals, type SealPolicy } from './shm/segment.js';
export { layoutIpcStream, writeIpcLayout, ALIGNMENT, type IpcLayout, type IpcChunk, type TableLike } from './ipc/writer.js';
export { validateIpcStream, type IpcSummary } from './ipc/messages.js';
export { decodeTable, decodeBatches, tableFromIpcBytes } from './ipc/reader.js';
export { Channel } from './transport/channel.js';
export { Listener, type ListenerOptions } from './transport/listener.js';
export { ReceivedTable } from './transport/received.js';
export { PreparedTable, type Sendable } from './ipc/prepared.js';
export { TableBuilder, type TableBuilderOptions } from './ipc/builder.js';
export { type ChannelOptions, type PeerInfo, type SendOptions } from './transport/options.js';
export { HANDOFF_CHANNEL, type HandoffEvent, type HandoffStage } from './trace.js';
export { DEFAULT_IPC_LIMITS, type IpcLimits } from './ipc/limits.js';
export { FrameKind, FrameFlags, PROTOCOL_VERSION, type KeyValues } from './transport/frame.js';
export { seedSend, seedReceive, SEED_SOCKET_PATH } from './transport/seed.js';
export { StreamReader, StreamBatch, type StreamReaderOptions } from './stream/consumer.js';
export { StreamWriter, type StreamWriterOptions } from './stream/producer.js';
export { Publication, publish, subscribe, type PublicationOptions, type PublicationAt, type StreamReaderAt } from './stream/pubsub.js';
// Streams over Arrow Flight (docs/PROTOCOL.md §13.5): publish/subscribe on grpc:// choose these.
export { FlightPublication, FlightStreamListener, FlightStreamReader, FlightStreamWriter, subscribeFlight, type FlightPublicationOptions, type FlightStreamReaderOptions, type FlightStreamWriterOptions } from './stream/flight.js';
export { FlightClient, type CallOptions, type FlightClientOptions } from './transport/flight-client.js';
export { FlightServer, type FlightServerOptions } from './transport/flight-server.js';
export { FlightMessage } from './transport/flight-message.js';
export type { FlightInfo } from './transport/flight-info.js';
export { isFlightAddress } from './transport/flight-codec.js';
export { FlightChannel, FlightListener, type FlightChannelOptions, type FlightListenerOptions } from './transport/flight-channel.js';
// connect/listen choose the transport by address: a path or @name is shared memory, grpc:// is Flight.
export { connect, listen, type AnyChannel, type AnyListener, type ChannelAt, type ConnectOptions, type FlightAddress, type ListenerAt, type ListenOptions } from './transport/address.js';
// The table store (docs/PROTOCOL.md §15): named tables any local process can put and get, zero-copy.
export { openStore, StoreClient, StoreWatch, type GetOptions, type PutOptions, type PutResult, type StoreClientOptions, type StoreEntry, type StoreEvent } from './store/client.js';
export { serveStore, TableStore, type StoreOptions, type StoreStats } from './store/server.js';
export { DEFAULT_STORE_LIMITS, type EvictPolicy, type StoreLimits } from './store/protocol.js';
