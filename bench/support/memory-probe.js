// Loaded into a bench's worker process with NODE_OPTIONS=--import: writes the main isolate's
// memory (process.memoryUsage) as a JSON line to RUNAS_MIGRATE_MEMORY_PROBE every 250 ms, so a
// bench can tell the JavaScript heap from the rest of the RSS (the SDK's core, the workflow
// thread's isolate, buffers). Bench-only: the product does not load it.
import { appendFileSync } from 'node:fs';
import process from 'node:process';
import { setInterval } from 'node:timers';
import { isMainThread } from 'node:worker_threads';

const file = process.env.RUNAS_MIGRATE_MEMORY_PROBE;
if (file && isMainThread) {
  setInterval(() => {
    appendFileSync(file, JSON.stringify({ t: Date.now(), ...process.memoryUsage() }) + '\n');
  }, 250).unref();
}
