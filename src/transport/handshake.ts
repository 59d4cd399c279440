// The handshake (docs/PROTOCOL.md §4) as pure functions: what HELLO and WELCOME say, and what each
// side concludes from the other's. The channel sends and receives them.
import { fail } from '../errors.js';
import { parseDecimal, PROTOCOL_VERSION, type KeyValues } from './frame.js';

export const IMPLEMENTATION = 'arrow-shm-node/0.1.0';

/** What both sides agreed on, and what the peer said of itself. */
export interface Agreement {
  version: number;
  implementation: string;
  /** What the peer accepts. */
  capabilities: string[];
}

/** The connector's HELLO: the versions it speaks and what it accepts. */
export function helloMetadata(capabilities: string[]): KeyValues {
  return {
    min_version: String(PROTOCOL_VERSION),
    max_version: String(PROTOCOL_VERSION),
    capabilities: capabilities.join(','),
    implementation: IMPLEMENTATION,
    pid: String(process.pid),
  };
}

/** The listener's reading of a HELLO: ERR_PROTOCOL if malformed, ERR_PROTOCOL_VERSION without a common version. */
export function checkHello(kv: KeyValues): Agreement {
  const min = parseDecimal(kv.min_version);
  const max = parseDecimal(kv.max_version);
  if (min === null || max === null) throw fail('ERR_PROTOCOL', `HELLO without decimal min_version/max_version (got ${JSON.stringify(kv.min_version)}, ${JSON.stringify(kv.max_version)})`);
  if (kv.pid !== undefined && parseDecimal(kv.pid) === null) throw fail('ERR_PROTOCOL', `HELLO with a pid that is not a decimal: ${JSON.stringify(kv.pid)}`);
  if (min > PROTOCOL_VERSION || max < PROTOCOL_VERSION) throw fail('ERR_PROTOCOL_VERSION', `peer speaks protocol versions ${min}..${max}, this side speaks ${PROTOCOL_VERSION}`);
  return agreement(PROTOCOL_VERSION, kv);
}

/** The listener's WELCOME: the chosen version, what it accepts, the largest table it takes. */
export function welcomeMetadata(version: number, capabilities: string[], maxMessageBytes: number): KeyValues {
  return {
    version: String(version),
    capabilities: capabilities.join(','),
    implementation: IMPLEMENTATION,
    pid: String(process.pid),
    max_message_bytes: String(maxMessageBytes),
  };
}

/** The connector's reading of a WELCOME. */
export function checkWelcome(kv: KeyValues): Agreement {
  const version = parseDecimal(kv.version);
  if (version === null) throw fail('ERR_PROTOCOL', `WELCOME without a decimal version (got ${JSON.stringify(kv.version)})`);
  if (version !== PROTOCOL_VERSION) throw fail('ERR_PROTOCOL_VERSION', `peer chose protocol version ${kv.version}, this side speaks ${PROTOCOL_VERSION}`);
  return agreement(version, kv);
}

function agreement(version: number, kv: KeyValues): Agreement {
  return { version, implementation: kv.implementation ?? '', capabilities: (kv.capabilities ?? '').split(',').filter(Boolean) };
}
