/**
 * Fault on the test bed: the fleet's own worker is SIGKILLed while a fleet with
 * `maxOpenWindows: 1` has one namespace relaxed and others waiting for their turn. The runs live
 * on the cluster's worker and go on: the one holding the turn closes its window and gives the
 * turn back to a fleet that cannot answer; the others keep waiting and relax nothing. A new
 * fleet worker replays the fleet, which takes in the returned turn and grants the next ones:
 * every run ends, no two windows overlap, no turn is left held, every policy is exact.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { connectClient, sweeperScheduleId } from '../../src/app/worker.js';
import { queryStatus } from '../../src/app/runs.js';
import { fleetWorkflowId } from '../../src/core/names.js';
import type { FleetStatus } from '../../src/workflows/fleet-messages.js';
import type { MigrationStatus } from '../../src/workflows/messages.js';
import { hostRunnerRun } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { runasMigrate } from '../support/cli.js';
import { policyState, type PolicyState } from '../support/policy-state.js';
import { removeFixtures, seedSimulatedFixtures } from '../support/snapshot.js';
import { spawnWorkerProcess, startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const cluster = 'bed';
const taskQueue = uniqueName('fleet-kill');
const namespaces = [uniqueName('turn-a'), uniqueName('turn-b'), uniqueName('turn-c')];
const fleetName = uniqueName('f-kill');
const scratch = mkdtempSync(join(tmpdir(), 'fleet-kill-'));
const children: ChildProcess[] = [];
const before = new Map<string, PolicyState>();
let clusterWorker: TestWorker | undefined;
let client: Awaited<ReturnType<typeof connectClient>>;

/** The fleet's worker in its own process, as in production. */
function fleetWorkerProcess(): ChildProcess {
  const child = spawnWorkerProcess(taskQueue);
  children.push(child);
  return child;
}

/** Each run's turn (null before it asked), by namespace, from the runs themselves. */
async function turns(): Promise<Map<string, MigrationStatus['windowSlot']>> {
  const out = new Map<string, MigrationStatus['windowSlot']>();
  for (const namespace of namespaces) {
    const status = await queryStatus(client, namespace, cluster).catch(() => undefined);
    out.set(namespace, status?.windowSlot ?? null);
  }
  return out;
}

beforeAll(async () => {
  client = await connectClient({ address: bed().temporal.address });
  await seedSimulatedFixtures(kc, bed().pvRoot, namespaces, before, 2000);
  clusterWorker = await startTestWorker(`${taskQueue}-${cluster}`);
}, 300_000);

afterAll(async () => {
  for (const c of children) {
    try {
      process.kill(-c.pid!, 'SIGKILL');
    } catch {
      // already gone (the one the test killed)
    }
  }
  await client.workflow
    .getHandle(fleetWorkflowId(fleetName))
    .terminate('fleet-worker-kill test cleanup')
    .catch(() => undefined);
  await client.schedule
    .getHandle(sweeperScheduleId(taskQueue))
    .delete()
    .catch(() => undefined);
  await clusterWorker?.stop();
  await client.connection.close();
  await removeFixtures(kc, namespaces);
});

it(
  'SIGKILL of the fleet worker while runs wait for their turn: the turn given back meanwhile is not lost, nothing relaxes out of turn, every policy exact',
  { timeout: 300_000 },
  async () => {
    const first = fleetWorkerProcess();
    const { namespace: _omitted, ...defaults } = hostRunnerRun('unused', 'job-duration');
    const file = join(scratch, 'fleet.yaml');
    writeFileSync(
      file,
      toYaml({
        name: fleetName,
        defaults: { ...defaults, verify: { checks: [] } },
        targets: namespaces.map((namespace) => ({ namespace, cluster })),
        canary: false,
        approvals: 'none',
        waveSize: 3,
        maxOpenWindows: 1,
      }),
    );
    const started = await runasMigrate(['start', '--fleet', file, '--task-queue', taskQueue]);
    expect(started.stderr).toBe('');

    // One run relaxed, at least one waiting for its turn: then the fleet's worker dies.
    const atKill = await waitFor(
      'one run holding the turn and another waiting for it',
      async () => {
        const t = await turns();
        const states = [...t.values()].map((s) => s?.state);
        return states.includes('held') && states.includes('waiting') ? t : undefined;
      },
      180_000,
      100,
    );
    process.kill(-first.pid!, 'SIGKILL');
    const holder = [...atKill].find(([, s]) => s?.state === 'held')![0];
    const waiting = [...atKill].filter(([, s]) => s?.state === 'waiting').map(([n]) => n);

    // The holder closes its window and gives the turn back to a fleet that cannot answer yet.
    await waitFor(
      `${holder} to give its turn back`,
      async () => (await turns()).get(holder)?.state === 'released',
      120_000,
      200,
    );
    // With no fleet to grant a turn, the waiting runs stay put and relax nothing.
    await new Promise((r) => setTimeout(r, 3000));
    const stillWaiting = await turns();
    for (const namespace of waiting) {
      expect(stillWaiting.get(namespace)?.state, `${namespace} got a turn with no fleet worker`).toBe(
        'waiting',
      );
      expect(await policyState(kc, namespace)).toEqual(before.get(namespace));
    }

    fleetWorkerProcess();
    const followed = await runasMigrate(['status', '--fleet', fleetName, '--watch']);
    expect(followed.code).toBe(0);
    const done = JSON.parse(
      (await runasMigrate(['status', '--fleet', fleetName, '-o', 'json'])).stdout,
    ) as FleetStatus;
    expect(done.phase).toBe('completed');
    expect(done.targets.map((t) => t.state)).toEqual(['succeeded', 'succeeded', 'succeeded']);
    expect(done.windowSlots).toEqual({ max: 1, held: [], waiting: [] });

    const windows: { namespace: string; openedAt: number; closedAt: number }[] = [];
    for (const namespace of namespaces) {
      const run = await queryStatus(client, namespace, cluster);
      expect(run.windowSlot).toMatchObject({ fleet: fleetWorkflowId(fleetName), state: 'released' });
      for (const w of run.windows)
        windows.push({ namespace, openedAt: Date.parse(w.openedAt), closedAt: Date.parse(w.closedAt!) });
      expect(await policyState(kc, namespace)).toEqual(before.get(namespace));
    }
    windows.sort((a, b) => a.openedAt - b.openedAt);
    expect(windows).toHaveLength(3);
    for (let i = 1; i < windows.length; i++)
      expect(
        windows[i]!.openedAt,
        `${windows[i]!.namespace} opened before ${windows[i - 1]!.namespace} closed`,
      ).toBeGreaterThanOrEqual(windows[i - 1]!.closedAt);
  },
);
