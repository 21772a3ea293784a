/** CPU time of a bench's child processes, read from proc(5). */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';

const ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));

/** CPU time (user + system, ms) of this process's waited-for children so far. */
export function childrenCpuMs(): number {
  // cutime and cstime: fields 16 and 17 of proc(5), counted after the command name's ")"
  const fields = readFileSync('/proc/self/stat', 'utf8')
    .replace(/^.*\) /, '')
    .split(' ');
  return ((Number(fields[13]) + Number(fields[14])) * 1000) / ticksPerSecond;
}

/**
 * Wall and CPU time of one command run to completion; it must exit 0 unless `exitCode` names
 * the status it is expected to end with.
 */
export function measure(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  exitCode = 0,
): { ms: number; cpuMs: number } {
  const cpu = childrenCpuMs();
  const t = performance.now();
  try {
    execFileSync(cmd, args, { env, stdio: 'ignore' });
    if (exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')} exited 0, not ${exitCode}`);
  } catch (err) {
    if ((err as { status?: number }).status !== exitCode || exitCode === 0) throw err;
  }
  return { ms: performance.now() - t, cpuMs: childrenCpuMs() - cpu };
}

/** CPU seconds of every running process, by PID, with the program each runs. */
export type ProcessCpu = Map<number, { program: string; seconds: number }>;

/**
 * The CPU time (user + system, its reaped children's included) of every process on the machine
 * now. A process that ends between two snapshots is lost unless its parent reaped it, which is
 * why a breakdown also shows what it could not place.
 */
export function processCpu(): ProcessCpu {
  const found: ProcessCpu = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ticks = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
      found.set(Number(d), { program: programOf(Number(d), comm), seconds: ticks / ticksPerSecond });
    } catch {
      // ended while read
    }
  }
  return found;
}

/** A process's program: its command name, or for Node.js the script it runs. */
function programOf(pid: number, comm: string): string {
  if (pid === process.pid) return 'bench (Temporal client)';
  if (!/^(node|MainThread)$/.test(comm)) return comm;
  const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  if (args.some((a) => a.includes('host-runner'))) return 'host runner (node)';
  const script = args.slice(1).find((a) => /\.(ts|js|mjs)$/.test(a));
  return script ? `node ${basename(script)}` : 'node';
}

/**
 * CPU seconds by program between two snapshots, largest first, with what the machine spent that
 * no running process accounts for (processes that ended unreaped, the kernel). The programs can
 * add up to a little more than the machine: a child that started before the first snapshot and
 * was reaped before the second brings all its CPU to its parent.
 */
export function cpuByProgram(
  before: ProcessCpu,
  after: ProcessCpu,
  machineSeconds: number,
): [string, number][] {
  const by = new Map<string, number>();
  for (const [pid, now] of after) {
    const then = before.get(pid);
    const spent = now.seconds - (then && then.program === now.program ? then.seconds : 0);
    if (spent > 0) by.set(now.program, (by.get(now.program) ?? 0) + spent);
  }
  const placed = [...by.values()].reduce((a, b) => a + b, 0);
  return [...[...by].sort((a, b) => b[1] - a[1]), ['(not placed)', Math.max(0, machineSeconds - placed)]];
}
