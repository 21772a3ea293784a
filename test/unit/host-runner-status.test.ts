import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { podStatus, terminationMessage } from '../../testbed/host-runner/pod-status.js';
import type { RunningContainer } from '../../testbed/host-runner/processes.js';

const pod: V1Pod = {
  metadata: { name: 'pgplatform-0', namespace: 'itrs', uid: 'u1' },
  spec: {
    containers: [
      {
        name: 'postgres',
        image: 'postgres',
        readinessProbe: { exec: { command: ['pg_isready'] } },
        terminationMessagePolicy: 'FallbackToLogsOnError',
      },
    ],
  },
};

function running(logLines: [Date, string][]): RunningContainer {
  const dir = mkdtempSync(join(tmpdir(), 'status-'));
  const logFile = join(dir, 'container.log');
  writeFileSync(logFile, logLines.map(([t, l]) => `${t.toISOString()} stderr F ${l}\n`).join(''));
  const terminationFile = join(dir, 'termination-log');
  writeFileSync(terminationFile, '');
  return {
    pgid: 1,
    logFile,
    terminationFile,
    startedAt: new Date('2026-12-01T10:00:10Z'),
    done: Promise.resolve(),
  };
}

describe('the pod status the host runner reports', () => {
  it('is Ready only once the readiness probe says so', () => {
    const containers = new Map([['postgres', { ...running([]), child: {} as never }]]);
    const notYet = podStatus(
      pod,
      { phase: 'Running' },
      { containers, ready: new Map([['postgres', false]]) },
    );
    expect(notYet.conditions.find((c) => c.type === 'Ready')?.status).toBe('False');
    expect(notYet.containerStatuses[0]).toMatchObject({ ready: false, started: true });
    const ready = podStatus(pod, { phase: 'Running' }, { containers, ready: new Map([['postgres', true]]) });
    expect(ready.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
  });

  it('shows a crashing container as CrashLoopBackOff with its restarts and how it last ended', () => {
    const last = {
      exitCode: 1,
      message: 'FATAL:  data directory "/var/lib/postgresql/data" has wrong ownership',
      startedAt: new Date('2026-12-01T10:00:00Z'),
      finishedAt: new Date('2026-12-01T10:00:01Z'),
    };
    const status = podStatus(
      pod,
      { phase: 'Running' },
      {
        containers: new Map([['postgres', running([])]]),
        history: new Map([
          ['postgres', { restartCount: 2, last, backOff: 'back-off 20s restarting failed container' }],
        ]),
      },
    );
    expect(status.containerStatuses[0]).toMatchObject({
      ready: false,
      restartCount: 2,
      state: { waiting: { reason: 'CrashLoopBackOff', message: 'back-off 20s restarting failed container' } },
      lastState: { terminated: { exitCode: 1, reason: 'Error', message: last.message } },
    });
    expect(status.conditions.find((c) => c.type === 'Ready')?.status).toBe('False');
  });

  it("takes the end of this start's log as the message of a failure, with FallbackToLogsOnError", () => {
    const run = running([
      [new Date('2026-12-01T10:00:00Z'), 'FATAL:  an earlier start'],
      [new Date('2026-12-01T10:00:11Z'), 'LOG:  starting PostgreSQL 15'],
      [
        new Date('2026-12-01T10:00:12Z'),
        'FATAL:  could not open file "global/pg_control": Permission denied',
      ],
    ]);
    const container = pod.spec!.containers[0]!;
    expect(terminationMessage(container, run, 1)).toBe(
      'LOG:  starting PostgreSQL 15\nFATAL:  could not open file "global/pg_control": Permission denied\n',
    );
    expect(terminationMessage(container, run, 0)).toBe('');
    expect(terminationMessage({}, run, 1)).toBe('');
    writeFileSync(run.terminationFile, 'written by the container');
    expect(terminationMessage(container, run, 1)).toBe('written by the container');
  });
});
