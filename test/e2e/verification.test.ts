/**
 * The verification on real PostgreSQL: a relation file left unreadable (mode 000: the Job gives
 * it the new owner, but the server still cannot open it) lets the server start and answer
 * `SELECT 1`; the deep check, which reads every relation, finds it, and the run ends
 * VerificationFailed naming the replica, the check and PostgreSQL's own words.
 */
import { chmodSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { Kube } from '../../src/cluster/kube.js';
import { FailureType } from '../../src/core/failures.js';
import { abortSignal, type MigrationReport } from '../../src/workflows/messages.js';
import { waitFor } from '../../testbed/process.js';
import { hostRunnerRun, pvDirectory } from '../../testbed/fixture.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { failureOf } from '../support/failures.js';
import { processesRunning } from '../support/processes.js';
import { sql } from '../support/postgres.js';
import { readyFixture, removeFixtures } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const kube = new Kube(kc);
const taskQueue = uniqueName('verify');
const namespace = uniqueName('verify');
let worker: TestWorker;

beforeAll(async () => {
  await readyFixture(kc, namespace, bed().pvRoot);
  worker = await startTestWorker(taskQueue);
});

afterAll(async () => {
  await worker?.stop();
  await removeFixtures(kc, [namespace]);
});

describe('verification on real PostgreSQL', () => {
  it(
    'an unreadable relation file passes SELECT 1 and is caught by the deep check',
    { timeout: 240_000 },
    async () => {
      const relation = await sql(
        kube,
        namespace,
        'pgplatform-0',
        'postgres',
        "SELECT pg_relation_filepath('events')",
      );
      const file = join(pvDirectory(bed().pvRoot, namespace, 'data-pgplatform-0'), 'data', relation);
      expect(statSync(file).isFile()).toBe(true);
      chmodSync(file, 0o000);

      const { handle } = await startRun(worker.w.client, hostRunnerRun(namespace), { taskQueue });
      const failure = await failureOf(handle.result());
      expect(failure.type).toBe(FailureType.VerificationFailed);
      expect(failure.message).toMatch(/pgplatform-0: deep check failed: .*Permission denied/);
      expect(failure.message).toContain(relation.split('/').pop());

      const status = await queryStatus(worker.w.client, namespace);
      const pgplatform = Object.fromEntries(
        status.databaseChecks.filter((c) => c.pod === 'pgplatform-0').map((c) => [c.check, c.ok]),
      );
      expect(pgplatform).toMatchObject({ ownership: true, identity: true, sql: true, deep: false });
      // the other replicas pass every check
      expect(status.databaseChecks.filter((c) => c.pod !== 'pgplatform-0' && !c.ok)).toEqual([]);
      // the files and templates are new and the policies back: the data-path end state of a failure after the Jobs
      expect(status.endState).toBe('rolled-forward');
      expect(status.policies.state).toBe('restored');
      expect(statSync(file).uid).toBe(5000);
    },
  );

  it(
    "an abort while a check hangs in the database ends the run at once, not at the check's timeout",
    { timeout: 120_000 },
    async () => {
      const earlier = new Set(processesRunning(['sleep', '3600']));
      const hung = () => processesRunning(['sleep', '3600']).filter((pid) => !earlier.has(pid));
      const { handle } = await startRun(
        worker.w.client,
        {
          ...hostRunnerRun(namespace),
          uid: 6000,
          gid: 6000,
          verify: { checks: ['sql'], commands: { sql: ['sleep', '3600'] }, timeout: '2h' },
        },
        { taskQueue },
      );
      // The check's command runs in a database container on this host: abort while it does.
      await waitFor('the hanging check running', () => Promise.resolve(hung().length > 0), 90_000, 200);
      await handle.signal(abortSignal, { reason: 'change window closed', by: 'test' });
      const failure = await failureOf(handle.result());
      expect(failure.type).toBe(FailureType.Aborted);
      const status = await queryStatus(worker.w.client, namespace);
      expect(status.endState).toBe('rolled-forward');
      expect(status.policies.state).toBe('restored');
    },
  );

  it(
    'runs at most verify.checksAtOnce checks at a time over all replicas, and every check of every replica',
    { timeout: 180_000 },
    async () => {
      // Each check a real process in a database container on this host, long enough to be seen.
      const check = ['sleep', '1.517'];
      const seen = new Set<number>();
      let peak = 0;
      const sample = setInterval(() => {
        const running = processesRunning(check);
        peak = Math.max(peak, running.length);
        for (const pid of running) seen.add(pid);
      }, 50);
      try {
        const { handle } = await startRun(
          worker.w.client,
          {
            ...hostRunnerRun(namespace),
            uid: 7000,
            gid: 7000,
            verify: { checks: ['sql', 'deep'], commands: { sql: check, deep: check }, checksAtOnce: 2 },
          },
          { taskQueue },
        );
        const report = (await handle.result()) as MigrationReport;
        expect(report.endState).toBe('completed');
        expect(report.databaseChecks.map((c) => [c.pod, c.check, c.ok])).toEqual(
          ['pgplatform-0', 'timescale-0', 'timescale-1'].flatMap((pod) => [
            [pod, 'sql', true],
            [pod, 'deep', true],
          ]),
        );
      } finally {
        clearInterval(sample);
      }
      expect(seen.size).toBe(6);
      expect(peak).toBe(2);
    },
  );
});
