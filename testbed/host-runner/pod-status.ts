/**
 * The status the host runner reports for a pod: its phase and conditions, and per container
 * waiting, running or terminated (with exit code and termination message), as a kubelet does.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { V1ContainerStatus, V1Pod } from '@kubernetes/client-node';
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

/** What the runner knows of a pod's containers: the ones it started, and the exit codes of those done. */
export interface PodContainersState {
  containers?: ReadonlyMap<string, RunningContainer>;
  exits?: ReadonlyMap<string, number>;
}

/** The pod status (the body of a merge patch of `status`) for a change of phase. */
export function podStatus(pod: V1Pod, change: PodStatusChange, state: PodContainersState) {
  const now = new Date();
  const ready = change.phase === 'Running' ? 'True' : 'False';
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
    containerStatuses: containerStatuses(pod, change.phase, state, change.waiting),
  };
}

function containerStatuses(
  pod: V1Pod,
  phase: string,
  { containers, exits }: PodContainersState,
  waiting?: ContainerWaiting,
): V1ContainerStatus[] {
  return (pod.spec?.containers ?? []).map((c) => {
    const run = containers?.get(c.name);
    const base = {
      name: c.name,
      image: c.image ?? '',
      imageID: '',
      containerID: `host://${pod.metadata!.uid}/${c.name}`,
      restartCount: 0,
    };
    const exitCode = exits?.get(c.name);
    if (waiting?.container === c.name || !run) {
      return {
        ...base,
        ready: false,
        started: false,
        state: { waiting: { reason: waiting?.reason ?? 'ContainerCreating', message: waiting?.message } },
      };
    }
    if (exitCode !== undefined) {
      const message = existsSync(run.terminationFile)
        ? readFileSync(run.terminationFile, 'utf8').slice(0, 4096)
        : '';
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
      ready: phase === 'Running',
      started: true,
      state: { running: { startedAt: run.startedAt } },
    };
  });
}
