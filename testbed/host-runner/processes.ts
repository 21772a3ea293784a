/**
 * The process groups the host runner starts its containers in: who is still in one (from
 * `/proc`), and how a group is stopped as a kubelet stops a container — SIGTERM, then SIGKILL
 * after the grace period — until not one of its processes is left, children included.
 */
import { readdirSync, readFileSync } from 'node:fs';

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

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
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
