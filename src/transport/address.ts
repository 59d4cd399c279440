// The transport is chosen by the address: a path or @name is shared memory on this machine,
// grpc://host:port (or grpc+tls://) is Arrow Flight to any host. The same calls work on both.
import { connect as connectShm, type Channel } from './channel.js';
import { listen as listenShm, type Listener, type ListenerOptions } from './listener.js';
import { type ChannelOptions } from './options.js';
import { FlightChannel, FlightListener, type FlightChannelOptions, type FlightListenerOptions } from './flight-channel.js';
import { isFlightAddress } from './flight-codec.js';

export type FlightAddress = `grpc://${string}` | `grpc+tls://${string}`;

/** Either transport's channel: switch on `transport` ('shm' | 'grpc') for what only one has (streams are shared-memory only today). */
export type AnyChannel = Channel | FlightChannel;
export type AnyListener = Listener | FlightListener;

/**
 * What `connect(address)` resolves to: a local address gives a Channel; a Flight address a
 * FlightChannel, or a Channel when the server is on this host and the connection was upgraded;
 * an address known only at run time, either.
 */
export type ChannelAt<A extends string> = A extends FlightAddress ? AnyChannel : string extends A ? AnyChannel : Channel;
export type ListenerAt<A extends string> = A extends FlightAddress ? FlightListener : string extends A ? AnyListener : Listener;

export interface ConnectOptions extends ChannelOptions, Omit<FlightChannelOptions, 'timeoutMs'> {
  /** Give up connecting after this many ms (Flight: also the default deadline of each call). */
  timeoutMs?: number;
}

export type ListenOptions = ListenerOptions & FlightListenerOptions;

/**
 * Connects to `address`: a socket path or @abstract name (shared memory) or grpc://host:port
 * (Arrow Flight; offers the same-host upgrade to shared memory unless `upgrade: false`).
 */
export async function connect<A extends string>(address: A, options: ConnectOptions = {}): Promise<ChannelAt<A>> {
  if (isFlightAddress(address)) return (await FlightChannel.connect(address, { upgrade: true, ...options })) as ChannelAt<A>;
  return (await connectShm(address, options)) as ChannelAt<A>;
}

/**
 * Listens on `address`: shared memory for a path or @name, Arrow Flight for grpc://host:port
 * (port 0: any free one). A FlightListener binds in the background: `await listener.ready()`
 * for its final address and any failure to bind.
 */
export function listen<A extends string>(address: A, options: ListenOptions = {}): ListenerAt<A> {
  if (isFlightAddress(address)) return FlightListener.listen(address, options) as ListenerAt<A>;
  return listenShm(address, options) as ListenerAt<A>;
}
