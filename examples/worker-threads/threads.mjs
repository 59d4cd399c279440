// Node worker_threads exchanging tables with arrow-shm: the main thread listens, each worker
// thread connects like another process would, and the tables go through shared memory both ways.
// A worker reads the table in place (its column buffers are views of the shared mapping).
//
//   node threads.mjs
import { isMainThread, Worker, workerData } from 'node:worker_threads';
import { makeVector, Table } from 'apache-arrow';
import { connect, listen } from 'arrow-shm';

if (isMainThread) {
  const name = `arrow-shm-example-${process.pid}`;
  const listener = listen(`@${name}`); // an abstract socket: no file to clean up
  const workers = [0, 1].map(() => new Worker(new URL(import.meta.url), { workerData: { name } }));
  try {
    // Each worker gets its own table and answers with a one-row table: the sum it computed.
    const answers = await Promise.all(workers.map(async (_, id) => {
      const channel = await listener.accept(); // whichever worker connects first; the sums tell them apart
      try {
        const values = Float64Array.from({ length: 100_000 }, (_, i) => (id + 1) * i);
        const response = await channel.request(new Table({ x: makeVector(values) }));
        try {
          return Number(response.table.getChild('sum')?.get(0));
        } finally {
          response.close();
        }
      } finally {
        channel.close(); // the worker's loop ends: it exits
      }
    }));
    for (const sum of answers.sort((a, b) => a - b)) console.log(`main: a worker summed ${sum}`);
  } finally {
    listener.close();
  }
} else {
  const channel = await connect(`@${workerData.name}`);
  try {
    for await (const message of channel) {
      try {
        const x = message.table.getChild('x');
        if (!x) throw new Error('no column x');
        const inPlace = x.data.every((d) => d.values.buffer === message.sharedBuffer);
        let sum = 0;
        for (const v of x) sum += v;
        console.log(`worker: ${x.length} values, in place: ${inPlace ? 'yes' : 'NO'}`);
        await message.respond(new Table({ sum: makeVector(Float64Array.of(sum)) }));
      } finally {
        message.close();
      }
    }
  } finally {
    channel.close();
  }
}
