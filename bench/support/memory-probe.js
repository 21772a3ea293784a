// Loaded into a bench's worker process with NODE_OPTIONS=--import (so into each of its threads):
// writes the memory of this thread's isolate (process.memoryUsage: heap and external are the
// thread's own, RSS is the whole process's) as a JSON line to RUNAS_MIGRATE_MEMORY_PROBE every
// 250 ms, tagged with the thread's ID (0: the main thread; the SDK runs workflows in a thread of
// their own). A bench can so tell the JavaScript heaps from the rest of the RSS (the SDK's core,
// buffers). Bench-only: the product does not load it.
import { appendFileSync } from 'node:fs';
import process from 'node:process';
import { setInterval } from 'node:timers';
import { threadId } from 'node:worker_threads';

const file = process.env.RUNAS_MIGRATE_MEMORY_PROBE;
if (file) {
  setInterval(() => {
    appendFileSync(
      file,
      JSON.stringify({ t: Date.now(), thread: threadId, ...process.memoryUsage() }) + '\n',
    );
  }, 250).unref();
}
