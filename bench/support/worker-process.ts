/**
 * A `runas-migrate worker` as its own process, for the benches that measure the worker itself:
 * started as installed (the command's node flags), its CPU time and memory read from /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitFor } from '../../testbed/process.js';

const cli = fileURLToPath(new URL('../../bin/runas-migrate.js', import.meta.url));

/** The median of `xs`. */
export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** The node flags of the command's `#!/usr/bin/env -S node …` line: the worker runs as installed. */
function nodeFlagsOf(script: string): string[] {
  return (readFileSync(script, 'utf8').split('\n')[0] ?? '').split(/\s+/).slice(3);
}

/** Reads one `Vm…:` line of /proc/<pid>/status, in kB. */
export function procStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** A process's CPU time (user + system), in seconds. */
export function cpuSeconds(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    // utime and stime are fields 14 and 15 of stat(5), in clock ticks of 1/100 s on Linux.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** Samples a process's VmRSS; `lap` returns the highest sample since the previous lap. */
export function rssSampler(pid: number) {
  let peak = 0;
  const sample = () => (peak = Math.max(peak, procStatusKb(pid, 'VmRSS') ?? 0));
  const timer = setInterval(sample, 200);
  return {
    lap: () => {
      sample();
      const p = peak;
      peak = 0;
      return p;
    },
    stop: () => clearInterval(timer),
  };
}

/** A worker process, polling once `start` returned. */
export interface WorkerProcess {
  pid: number;
  /** Seconds from spawn until it said it polls. */
  startupSeconds: number;
  stop(): Promise<void>;
}

/**
 * Starts `runas-migrate worker …args` (Node given its launcher's flags, then `nodeFlags`) and waits
 * until it polls. `checkout` runs another checkout's build instead of this one's (a baseline).
 */
export async function startWorkerProcess(
  args: string[],
  env: NodeJS.ProcessEnv,
  nodeFlags: readonly string[] = [],
  checkout?: string,
): Promise<WorkerProcess> {
  const launcher = checkout ? resolve(checkout, 'bin/runas-migrate.js') : cli;
  const spawnedAt = performance.now();
  let stderrTail = '';
  const worker: ChildProcess = spawn(
    process.execPath,
    [...nodeFlagsOf(launcher), ...nodeFlags, launcher, 'worker', ...args],
    {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true,
    },
  );
  worker.stderr!.on('data', (d: Buffer) => (stderrTail = (stderrTail + d.toString()).slice(-4000)));
  const stop = async () => {
    if (!worker.pid || worker.exitCode !== null) return;
    const exited = new Promise((r) => worker.once('exit', r));
    process.kill(-worker.pid, 'SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000).unref())]);
    try {
      process.kill(-worker.pid, 'SIGKILL');
    } catch {
      // exited
    }
  };
  try {
    await waitFor(
      'worker polling',
      () => {
        if (worker.exitCode !== null) throw new Error(`worker exited: ${stderrTail}`);
        return stderrTail.includes('worker polling');
      },
      120_000,
      100,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { pid: worker.pid!, startupSeconds: (performance.now() - spawnedAt) / 1000, stop };
}

/** Peaks of a worker's memory (MB) over a stretch of a bench. */
export interface MemoryPeaks {
  rss: number;
  /** The main thread's isolate. */
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  /** The other threads' isolates (the SDK's workflow thread), summed at each sample time. */
  threadsHeapTotal: number;
  threadsHeapUsed: number;
  samples: number;
}

/**
 * The memory probe (memory-probe.js) for a worker process: `env` loads it into every thread,
 * `lap` returns the peaks since the previous lap. What the RSS holds beyond the heaps and
 * `external` is native: the SDK's core, code, buffers.
 */
export function memoryProbe() {
  const file = join(mkdtempSync(join(tmpdir(), 'runas-migrate-memory-')), 'samples.jsonl');
  writeFileSync(file, '');
  const probe = fileURLToPath(new URL('./memory-probe.js', import.meta.url));
  let read = 0;
  const mb = (b: number) => b / 1024 / 1024;
  type Sample = {
    t: number;
    thread: number;
    rss: number;
    heapTotal: number;
    heapUsed: number;
    external: number;
    arrayBuffers: number;
  };
  return {
    env: { NODE_OPTIONS: `--import ${probe}`, RUNAS_MIGRATE_MEMORY_PROBE: file },
    lap(): MemoryPeaks {
      const lines = readFileSync(file, 'utf8').split('\n').slice(read).filter(Boolean);
      read += lines.length;
      const peaks: MemoryPeaks = {
        rss: 0,
        heapTotal: 0,
        heapUsed: 0,
        external: 0,
        arrayBuffers: 0,
        threadsHeapTotal: 0,
        threadsHeapUsed: 0,
        samples: 0,
      };
      // Other threads' latest sample each, summed whenever one of them reports.
      const threads = new Map<number, Sample>();
      for (const line of lines) {
        const m = JSON.parse(line) as Sample;
        if (m.thread === 0) {
          for (const k of ['rss', 'heapTotal', 'heapUsed', 'external', 'arrayBuffers'] as const)
            peaks[k] = Math.max(peaks[k], mb(m[k]));
          peaks.samples++;
          continue;
        }
        threads.set(m.thread, m);
        const sum = (k: 'heapTotal' | 'heapUsed') => mb([...threads.values()].reduce((n, x) => n + x[k], 0));
        peaks.threadsHeapTotal = Math.max(peaks.threadsHeapTotal, sum('heapTotal'));
        peaks.threadsHeapUsed = Math.max(peaks.threadsHeapUsed, sum('heapUsed'));
        peaks.rss = Math.max(peaks.rss, mb(m.rss));
      }
      return peaks;
    },
    remove: () => rmSync(dirname(file), { recursive: true, force: true }),
  };
}

/** One line of memory peaks for a report. */
export const renderPeaks = (p: MemoryPeaks) =>
  `RSS ${p.rss.toFixed(0)} MB; main thread's heap ${p.heapUsed.toFixed(0)} used of ${p.heapTotal.toFixed(0)} MB, external ${p.external.toFixed(0)} MB; workflow thread's heap ${p.threadsHeapUsed.toFixed(0)} used of ${p.threadsHeapTotal.toFixed(0)} MB`;

/**
 * The whole machine's busy CPU time so far (user, nice, system, irq, softirq, steal), in seconds,
 * from /proc/stat: every process of the bed counted, not just the worker.
 */
export function machineBusySeconds(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = fields;
  return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / 100;
}
