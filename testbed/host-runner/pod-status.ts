/**
 * The status the host runner reports for a pod: its phase and conditions, and per container
 * waiting, running or terminated (with exit code and termination message), as a kubelet does.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { V1ContainerStatus, V1Pod } from '@kubernetes/client-node';
import { renderLogRecords } from './logs.js';
import type { RunningContainer } from './processes.js';

/** A container held back before it started, and why. */
export interface ContainerWaiting {
  container: string;
  reason: string;
  message: string;
}

/** The change of a pod's status to report. */
export interface PodStatusChange {
  phase: string;
  reason?: string;
  message?: string;
  waiting?: ContainerWaiting;
}

/** How a container that is restarted last ended. */
export interface LastTermination {
  exitCode: number;
  message: string;
  startedAt: Date;
  finishedAt: Date;
}

/** A restarted container's past: how often it was restarted, how it last ended, and the back-off it waits in. */
export interface ContainerHistory {
  restartCount: number;
  last?: LastTermination;
  /** Set while the container waits to be restarted (CrashLoopBackOff). */
  backOff?: string;
}

/** What the runner knows of a pod's containers: the ones it started, and the exit codes of those done. */
export interface PodContainersState {
  containers?: ReadonlyMap<string, RunningContainer>;
  exits?: ReadonlyMap<string, number>;
  history?: ReadonlyMap<string, ContainerHistory>;
  /** The readiness probes' verdicts; a running container without a probe is ready. */
  ready?: ReadonlyMap<string, boolean>;
}

/**
 * The termination message of a container that has exited: the file at its
 * terminationMessagePath, or with `FallbackToLogsOnError` and a failure, the end of its log
 * (at most 80 lines and 2048 bytes, as a kubelet takes).
 */
export function terminationMessage(
  container: { terminationMessagePolicy?: string },
  run: RunningContainer,
  exitCode: number,
): string {
  const message = existsSync(run.terminationFile)
    ? readFileSync(run.terminationFile, 'utf8').slice(0, 4096)
    : '';
  if (message || exitCode === 0 || container.terminationMessagePolicy !== 'FallbackToLogsOnError')
    return message;
  if (!existsSync(run.logFile)) return '';
  const tail = renderLogRecords(readFileSync(run.logFile, 'utf8'), {
    timestamps: false,
    tailLines: 80,
    sinceTime: run.startedAt,
  });
  return Buffer.from(tail).subarray(-2048).toString();
}

/** The pod status (the body of a merge patch of `status`) for a change of phase. */
export function podStatus(pod: V1Pod, change: PodStatusChange, state: PodContainersState) {
  const now = new Date();
  const statuses = containerStatuses(pod, change.phase, state, change.waiting);
  const ready = change.phase === 'Running' && statuses.every((c) => c.ready) ? 'True' : 'False';
  const cond = (type: string, status: string) => ({
    type,
    status,
    lastProbeTime: null,
    lastTransitionTime: now,
  });
  return {
    phase: change.phase,
    ...(change.reason ? { reason: change.reason, message: change.message } : {}),
    hostIP: '127.0.0.1',
    hostIPs: [{ ip: '127.0.0.1' }],
    podIP: '127.0.0.1',
    podIPs: [{ ip: '127.0.0.1' }],
    startTime: pod.status?.startTime ?? now,
    conditions: [
      cond('PodReadyToStartContainers', change.phase === 'Pending' ? 'False' : 'True'),
      cond('Initialized', 'True'),
      cond('ContainersReady', ready),
      cond('Ready', ready),
      cond('PodScheduled', 'True'),
    ],
    containerStatuses: statuses,
  };
}

function containerStatuses(
  pod: V1Pod,
  phase: string,
  { containers, exits, history, ready }: PodContainersState,
  waiting?: ContainerWaiting,
): V1ContainerStatus[] {
  return (pod.spec?.containers ?? []).map((c) => {
    const run = containers?.get(c.name);
    const past = history?.get(c.name);
    const base = {
      name: c.name,
      image: c.image ?? '',
      imageID: '',
      containerID: `host://${pod.metadata!.uid}/${c.name}`,
      restartCount: past?.restartCount ?? 0,
      ...(past?.last
        ? {
            lastState: {
              terminated: {
                exitCode: past.last.exitCode,
                reason: past.last.exitCode === 0 ? 'Completed' : 'Error',
                ...(past.last.message ? { message: past.last.message } : {}),
                startedAt: past.last.startedAt,
                finishedAt: past.last.finishedAt,
              },
            },
          }
        : {}),
    };
    const exitCode = exits?.get(c.name);
    if (past?.backOff) {
      return {
        ...base,
        ready: false,
        started: false,
        state: { waiting: { reason: 'CrashLoopBackOff', message: past.backOff } },
      };
    }
    if (waiting?.container === c.name || !run) {
      return {
        ...base,
        ready: false,
        started: false,
        state: { waiting: { reason: waiting?.reason ?? 'ContainerCreating', message: waiting?.message } },
      };
    }
    if (exitCode !== undefined) {
      const message = terminationMessage(c, run, exitCode);
      return {
        ...base,
        ready: false,
        started: false,
        state: {
          terminated: {
            exitCode,
            reason: exitCode === 0 ? 'Completed' : 'Error',
            ...(message ? { message } : {}),
            startedAt: run.startedAt,
            finishedAt: new Date(),
            containerID: base.containerID,
          },
        },
      };
    }
    return {
      ...base,
      ready: phase === 'Running' && (ready?.get(c.name) ?? !c.readinessProbe),
      started: true,
      state: { running: { startedAt: run.startedAt } },
    };
  });
}
