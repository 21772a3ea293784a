/**
 * Process helpers for the test bed: free ports, detached services recorded by PID, and
 * stopping exactly those PIDs (never by process name; what a lost record no longer names, by the
 * bed's own folder in its command line).
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** Asks the kernel for a free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A process the test bed started, identified by PID and by what its command line must contain. */
export interface RecordedProcess {
  pid: number;
  /** A fragment of /proc/<pid>/cmdline that proves the PID was not reused by another program. */
  marker: string;
  logFile: string;
}

/** Starts a detached process (own process group) with output appended to a log file. */
export function startDetached(
  cmd: string,
  args: readonly string[],
  opts: { logFile: string; env?: NodeJS.ProcessEnv; cwd?: string; marker: string },
): RecordedProcess {
  const fd = openSync(opts.logFile, 'a');
  try {
    const child = spawn(cmd, args, {
      detached: true,
      stdio: ['ignore', fd, fd],
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    });
    if (!child.pid) throw new Error(`could not start ${cmd}`);
    child.unref();
    return { pid: child.pid, marker: opts.marker, logFile: opts.logFile };
  } finally {
    closeSync(fd);
  }
}

/** Whether the recorded process is alive and still the program we started. */
export function isAlive(p: RecordedProcess | undefined): boolean {
  if (!p) return false;
  const cmdline = `/proc/${p.pid}/cmdline`;
  if (!existsSync(cmdline)) return false;
  try {
    const stat = readFileSync(`/proc/${p.pid}/stat`, 'utf8');
    if (/\) Z /.test(stat)) return false;
    return readFileSync(cmdline, 'utf8').includes(p.marker);
  } catch {
    return false;
  }
}

/**
 * The running processes whose command line contains `marker` (a path inside one bed's own
 * folder): what a lost record no longer names.
 */
export function processesWith(marker: string): RecordedProcess[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d) && Number(d) !== process.pid)
    .map((d) => ({ pid: Number(d), marker, logFile: '' }))
    .filter((p) => isAlive(p));
}

/** Stops a recorded process and its process group: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopProcess(p: RecordedProcess | undefined, graceMs = 10_000): Promise<void> {
  if (!p || !isAlive(p)) return;
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(-p.pid, sig);
    } catch {
      try {
        process.kill(p.pid, sig);
      } catch {
        // gone
      }
    }
  };
  signal('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive(p) && Date.now() < deadline) await sleep(100);
  if (isAlive(p)) signal('SIGKILL');
  while (isAlive(p)) await sleep(50);
}

/** Sends SIGKILL to exactly one recorded process (fault tests). */
export function killProcess(p: RecordedProcess): void {
  if (isAlive(p)) process.kill(p.pid, 'SIGKILL');
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Thrown from a `waitFor` check to stop waiting at once. */
export class GiveUp extends Error {}

/** Polls `check` until it returns a value (not undefined/false) or the deadline passes. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  intervalMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      if (err instanceof GiveUp) throw err;
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last instanceof Error ? `: ${last.message}` : ''}`,
      );
    }
    await sleep(intervalMs);
  }
}
