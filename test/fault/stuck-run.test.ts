/**
 * A window is bounded even when its run is stuck. The run's only worker is SIGKILLed with the
 * policies relaxed (the fleet is gone): `runas-migrate status` says the run cannot answer and,
 * soon, why it is stuck; once the record's notAfter (window.max + window.grace) has passed, a
 * sweep restores the policies although the run is still open; when a worker comes back, the run
 * learns its window was closed by the sweeper (an alarm), and an abort ends it with nothing changed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInputRaw } from '../../src/core/input.js';
import { queryStatus, runProgress, startRun } from '../../src/app/runs.js';
import { connectClient } from '../../src/app/worker.js';
import { hostRunnerRun } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { abortSignal } from '../../src/workflows/messages.js';
import type { SweepReport } from '../../src/workflows/sweeper.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { runasMigrate } from '../support/cli.js';
import { failureOf } from '../support/failures.js';
import { namespacePolicies } from '../support/policy-state.js';
import { protectedRecord } from '../support/records.js';
import { namespaceSnapshot, readyFixture, removeFixtures } from '../support/snapshot.js';
import { cleanUpAfterProcessWorker, startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const cli = fileURLToPath(new URL('../../bin/runas-migrate.js', import.meta.url));
const namespace = uniqueName('stuck');
const taskQueue = uniqueName('stuck');
const workers: TestWorker[] = [];
let fleet: ChildProcess | undefined;
let client: Awaited<ReturnType<typeof connectClient>>;

beforeAll(async () => {
  client = await connectClient({ address: bed().temporal.address });
  await readyFixture(kc, namespace, bed().pvRoot, 10);
});

afterAll(async () => {
  if (fleet?.exitCode === null && fleet.signalCode === null) process.kill(-fleet.pid!, 'SIGKILL');
  for (const w of workers) await w.stop();
  // The killed worker's sweeper Schedule, and the run if the test failed before it ended.
  await cleanUpAfterProcessWorker(client, { taskQueue, namespace, test: 'stuck-run' });
  await client.connection.close();
  await removeFixtures(kc, [namespace]);
});

describe('a window is bounded even when its run is stuck', () => {
  it(
    'the worker fleet is gone while relaxed: status says stuck, the sweeper closes the window after notAfter, the run learns it when it moves again',
    { timeout: 300_000 },
    async () => {
      // Other runs (left stuck by earlier test runs, say) may be swept meanwhile: policies are
      // compared by this namespace's entries, everything else in full.
      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      const policiesBefore = await namespacePolicies(kc, namespace);
      fleet = spawn(process.execPath, [cli, 'worker', '--task-queue', taskQueue], {
        env: { ...process.env, KUBECONFIG: bed().kubeconfig, TEMPORAL_ADDRESS: bed().temporal.address },
        stdio: 'ignore',
        detached: true,
      });
      // Jobs that can never be scheduled keep the run waiting inside its window.
      const input: MigrationInputRaw = {
        ...hostRunnerRun(namespace, 'job-duration'),
        window: { mode: 'job-duration', max: '6s', grace: '2s' },
        job: { nodeSelector: { 'runas-migrate.dev/no-such-node': 'true' } },
      };
      const { handle } = await startRun(client, input, { taskQueue });
      await waitFor(
        'policies relaxed',
        async () => (await queryStatus(client, namespace)).policies.state === 'relaxed',
        120_000,
        100,
      );
      process.kill(-fleet.pid!, 'SIGKILL');
      const record = await protectedRecord(kc, namespace);
      expect(record?.notAfter).toBeDefined();
      const notAfter = Date.parse(record!.notAfter!);
      expect(notAfter - Date.parse(record!.snapshot.takenAt)).toBe(8000);

      // No worker: the run cannot answer, and Temporal's own view says why it is stuck.
      const status = await runasMigrate(['status', '-n', namespace]);
      expect(status.code, status.stderr).toBe(2);
      expect(status.stdout).toContain('did not answer its status query');
      const stuck = await waitFor(
        'the run seen stuck',
        async () => {
          const p = await runProgress(client, namespace);
          return p.stuck.length ? p.stuck : undefined;
        },
        90_000,
        1000,
      );
      expect(stuck.join('\n')).toContain(`is a worker running on task queue ${taskQueue}?`);
      expect((await runasMigrate(['status', '-n', namespace])).stdout).toContain(
        `STUCK: no worker has picked up its workflow task`,
      );
      // Policies still relaxed: the run's own window.max timer cannot fire without a worker.
      expect(await namespacePolicies(kc, namespace)).not.toEqual(policiesBefore);

      // A sweep by another fleet, after notAfter: restored although the run is open.
      await waitFor('notAfter passed', () => Date.now() > notAfter + 500, 30_000, 200);
      const sweepQueue = uniqueName('sweeper');
      const sweeper = await startTestWorker(sweepQueue);
      workers.push(sweeper);
      const sweep = (await sweeper.w.client.workflow.execute('sweepRelaxations', {
        taskQueue: sweepQueue,
        workflowId: uniqueName('sweep'),
      })) as SweepReport;
      const mine = sweep.namespaces.find((n) => n.namespace === namespace);
      expect(mine).toMatchObject({ outcome: 'restored' });
      expect(mine?.outcome === 'restored' && mine.expired).toContain('made no progress past notAfter');
      expect(await namespacePolicies(kc, namespace)).toEqual(policiesBefore);
      expect(await protectedRecord(kc, namespace)).toBeUndefined();
      expect((await handle.describe()).status.name).toBe('RUNNING');

      // A worker comes back: the run learns its window was closed by the sweeper.
      workers.push(await startTestWorker(taskQueue));
      const told = await waitFor(
        'the run told',
        async () => {
          const s = await queryStatus(client, namespace);
          return s.alarms.some((a) => a.includes('closed by the sweeper')) ? s : undefined;
        },
        60_000,
        200,
      );
      expect(told.policies.state).toBe('restored');
      expect(told.windows).toHaveLength(1);
      expect(told.windows[0]!.closedBecause).toContain('the sweeper restored the policies');

      await handle.signal(abortSignal, { reason: 'stuck-run test done', by: 'test' });
      await failureOf(handle.result());
      const end = await queryStatus(client, namespace);
      expect([end.endState, end.leftToDo]).toEqual(['unchanged', []]);
      expect(await namespacePolicies(kc, namespace)).toEqual(policiesBefore);
      expect({ ...(await namespaceSnapshot(kc, namespace, bed().pvRoot)), policies: null }).toEqual({
        ...before,
        policies: null,
      });
    },
  );
});
