/** CPU time of a bench's child processes, read from proc(5). */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

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
