// A Flight client: sends a table of sales to the server's address and prints its answer.
//
//   node client.mjs grpc://127.0.0.1:8815            (grpc+tls://server:8815 with { token, rootCertificate } across a network)
import { Float64, Table, Utf8, vectorFromArray } from 'apache-arrow';
import { connect } from 'arrow-shm';

const sales = new Table({
  city: vectorFromArray(['Lyon', 'Oslo', 'Lyon', 'Kyoto', 'Oslo', 'Lyon'], new Utf8()),
  amount: vectorFromArray([10, 20, 30, 40, 50, 60], new Float64()),
});

// connect() offers the same-host upgrade to shared memory; this server has none to offer (no `shm`
// option), so the table travels as Flight data: 'grpc'.
const channel = await connect(process.argv[2] ?? 'grpc://127.0.0.1:8815');
try {
  console.log(`client: connected over ${channel.transport}`);
  const answer = await channel.request(sales); // a Flight DoExchange
  try {
    for (const row of answer.table) console.log(`client: ${row.city} ${row.total}`);
  } finally {
    answer.close();
  }
} finally {
  channel.close();
}
