/**
 * The process groups the host runner starts its containers in: how a container's launch script
 * is started in its own group (output to its log file, the group recorded on disk), who is still
 * in a group (from `/proc`), and how a group is stopped as a kubelet stops a container — SIGTERM,
 * then SIGKILL after the grace period — until not one of its processes is left, children included.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

/** Parses `/proc/<pid>/stat`: the process state and its process group (the command may hold spaces and parentheses). */
export function parseProcStat(stat: string): { state: string; pgid: number; startTicks: number } | undefined {
  const end = stat.lastIndexOf(')');
  if (end < 0) return undefined;
  // After the command: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
  // utime stime cutime cstime priority nice num_threads itrealvalue starttime …
  const fields = stat.slice(end + 2).split(' ');
  const pgid = Number(fields[2]);
  const startTicks = Number(fields[19]);
  if (!fields[0] || !Number.isInteger(pgid)) return undefined;
  return { state: fields[0], pgid, startTicks };
}

/** The start time of a process (clock ticks since boot), or undefined when it is gone. */
export function processStartTicks(pid: number): number | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.startTicks;
  } catch {
    return undefined;
  }
}

/** The live processes (zombies excluded: they run nothing) of a process group. */
export function processGroupMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    const s = parseProcStat(stat);
    if (s && s.pgid === pgid && s.state !== 'Z' && s.state !== 'X') members.push(Number(entry));
  }
  return members;
}

/** Sends a signal to every process of a group, if any is left. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // no process left in the group
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Stops every process of a group: SIGTERM, SIGKILL once `graceMs` has passed, and returns only
 * when none is left (a process that leaves the group by itself is not followed).
 *
 * @returns whether SIGKILL was needed.
 */
export async function stopProcessGroup(pgid: number, graceMs: number, pollMs = 50): Promise<boolean> {
  if (processGroupMembers(pgid).length === 0) return false;
  signalGroup(pgid, 'SIGTERM');
  const killAt = Date.now() + graceMs;
  let killed = false;
  for (;;) {
    if (processGroupMembers(pgid).length === 0) return killed;
    if (!killed && Date.now() >= killAt) {
      signalGroup(pgid, 'SIGKILL');
      killed = true;
    } else if (killed) {
      // a process forked between the scan and the signal
      signalGroup(pgid, 'SIGKILL');
    }
    await sleep(pollMs);
  }
}

/** A container's process group the host runner started, and its files. */
export interface RunningContainer {
  /** The launch script's process; undefined once it has exited. */
  child?: ChildProcess;
  /** The container's process group (its first process is the leader). */
  pgid: number;
  logFile: string;
  terminationFile: string;
  startedAt: Date;
  /** Settles once the process has exited and `onExit` is done with it. */
  done: Promise<void>;
  /** The argv prefix that runs a command inside the container (see launch.ts `execArgv`). */
  execPrefix?: string[];
}

/** How to start one container's process group. */
export interface ContainerProcessSpec {
  /** The container's folder: its launch script, log file and process group record go there. */
  dir: string;
  /** The bash script (see launch.ts) that runs the container. */
  script: string;
  terminationFile: string;
  startedAt: Date;
  /** Called with the exit code once the launch script's process has exited. */
  onExit: (exitCode: number) => Promise<void>;
}

/**
 * Starts a container's launch script under `unshare` in a process group of its own, records the
 * group in the container's folder and writes its output, as CRI log records, to its log file.
 */
export function startContainerProcess(spec: ContainerProcessSpec): RunningContainer {
  const launchFile = join(spec.dir, 'launch.sh');
  writeFileSync(launchFile, spec.script);
  const logFile = join(spec.dir, 'container.log');
  const child = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'bash', launchFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  // detached: the container is its own process group, so a stop reaches every process it forks.
  const pgid = child.pid!;
  // The runner's record of the group, for a runner restarted while the container runs.
  writeFileSync(join(spec.dir, 'pid'), `${pgid} ${processStartTicks(pgid) ?? ''}\n`);
  const out = createWriteStream(logFile, { flags: 'a' });
  const pipe = (stream: NodeJS.ReadableStream, name: string) =>
    createInterface({ input: stream }).on('line', (line) =>
      out.write(`${new Date().toISOString()} ${name} F ${line}\n`),
    );
  pipe(child.stdout, 'stdout');
  pipe(child.stderr, 'stderr');
  const running: RunningContainer = {
    child,
    pgid,
    logFile,
    terminationFile: spec.terminationFile,
    startedAt: spec.startedAt,
    done: Promise.resolve(),
  };
  running.done = new Promise<void>((resolve) => {
    child.on('close', (code, signal) => {
      running.child = undefined;
      const exitCode = code ?? (signal ? 128 + (signal === 'SIGKILL' ? 9 : 15) : 1);
      // The last lines may still sit in the write stream: a termination message taken from the
      // log (FallbackToLogsOnError) reads the file, so only once they are written to it.
      out.end(() => void spec.onExit(exitCode).finally(resolve));
    });
  });
  return running;
}

/**
 * The process groups a previous runner process recorded in a pod's folder and that still run:
 * the leader with the recorded start time, or, the leader gone, members of its group (a process
 * group ID is not reused while any member lives).
 */
export function recordedGroups(podDir: string): number[] {
  if (!existsSync(podDir)) return [];
  const groups: number[] = [];
  for (const container of readdirSync(podDir)) {
    const file = join(podDir, container, 'pid');
    if (!existsSync(file)) continue;
    const [pid, ticks] = readFileSync(file, 'utf8').trim().split(' ').map(Number);
    if (!pid) continue;
    const now = processStartTicks(pid);
    if (now === undefined ? processGroupMembers(pid).length > 0 : now === ticks) groups.push(pid);
  }
  return groups;
}
