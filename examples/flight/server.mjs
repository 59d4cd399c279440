// A Flight server on another host: answers each request table with per-city totals.
// Same calls as over shared memory; only the address differs (grpc:// is Arrow Flight over gRPC).
//
//   node server.mjs grpc://127.0.0.1:8815           (loopback: plain gRPC is fine; port 0 = any free port)
// On a network address the server needs TLS and a token (or `insecure: true`):
//   listen('grpc+tls://0.0.0.0:8815', { token, tls: { key, certificate } })   (README "Other hosts")
import { Float64, Table, Utf8, vectorFromArray } from 'apache-arrow';
import { listen } from 'arrow-shm';

const address = /** @type {import('arrow-shm').FlightAddress} */ (process.argv[2] ?? 'grpc://127.0.0.1:8815');
const listener = await listen(address).ready();
console.log(`server: listening on ${listener.address}`);
process.once('SIGINT', () => listener.close()); // stop: the loop below ends
for await (const channel of listener) serve(channel).catch((e) => console.error(e.code, e.message));

/** @param {import('arrow-shm').AnyChannel} channel one per client, served side by side */
async function serve(channel) {
  for await (const message of channel) {
    try {
      if (!message.isRequest) continue;
      const totals = new Map();
      for (const { city, amount } of message.table) totals.set(city, (totals.get(city) ?? 0) + amount);
      const cities = [...totals.keys()].sort();
      console.log(`server: ${message.table.numRows} rows over ${channel.transport}`);
      await message.respond(new Table({
        city: vectorFromArray(cities, new Utf8()),
        total: vectorFromArray(cities.map((c) => totals.get(c)), new Float64()),
      }));
    } finally {
      message.close();
    }
  }
}
