/**
 * A fleet on the test bed, driven with the `runas-migrate` CLI as an operator would: two
 * namespaces, the first a canary, the fleet gate after it approved from the CLI. The fleet's own
 * worker holds no credentials of the cluster (its kubeconfig points nowhere), so every step of
 * every namespace's run must reach the cluster's worker on `<queue>-bed`: the routing is proven by
 * the migration happening at all. Then a fleet over two real clusters: the bed's and a second
 * simulated cluster (its own API server, etcd and host runner, no Gatekeeper), each with a worker
 * holding only its own kubeconfig. The databases are kwok's here (the data path has its own
 * tests); templates, replicas and every policy are checked on each real API server. Last, fleets
 * under `maxOpenWindows: 1`: windows that follow each other, a retry round's window included.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppsV1Api } from '@kubernetes/client-node';
import { stringify as toYaml } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { fleetWorkflowId } from '../../src/core/names.js';
import type { FleetStatus } from '../../src/workflows/fleet-messages.js';
import type { MigrationStatus } from '../../src/workflows/messages.js';
import { clusterConfig, ensureCluster } from '../../testbed/bed.js';
import {
  hostRunnerRun,
  pvDirectory,
  removeFixture,
  seedItrsFixture,
  waitForFixtureReady,
} from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { runasMigrate } from '../support/cli.js';
import { policyState, type PolicyState } from '../support/policy-state.js';
import { removeFixtures, seedSimulatedFixtures } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const apps = kc.makeApiClient(AppsV1Api);
const taskQueue = uniqueName('fleet');
const cluster = 'bed';
const namespaces = [uniqueName('fleet-canary'), uniqueName('fleet-wave')];
const fleetName = uniqueName('f');
const scratch = mkdtempSync(join(tmpdir(), 'fleet-'));
const workers: TestWorker[] = [];
const before = new Map<string, PolicyState>();

/** Seeds `names` on the bed's cluster with kwok's databases, each Ready, recording its policies in `into`. */
const seedOnBed = (names: string[], into: Map<string, PolicyState>) =>
  seedSimulatedFixtures(kc, bed().pvRoot, names, into);

/**
 * Writes fleet file `<name>.yaml` (the runs on the host runner, no database checks; `fields`
 * over that) and starts it with the CLI, as an operator would.
 */
async function startFleetFile(name: string, fields: Record<string, unknown>): Promise<void> {
  const { namespace: _omitted, ...defaults } = hostRunnerRun('unused');
  const file = join(scratch, `${name}.yaml`);
  writeFileSync(file, toYaml({ name, defaults: { ...defaults, verify: { checks: [] } }, ...fields }));
  const started = await runasMigrate(['start', '--fleet', file, '--task-queue', taskQueue]);
  expect(started.stderr).toBe('');
  expect(started.stdout).toContain(`started fleet ${name}`);
}

beforeAll(async () => {
  await seedOnBed(namespaces, before);
  // The fleet's worker: no cluster credentials at all, and guardrails from a file (it cannot read
  // the ConfigMap).
  const nowhere = join(scratch, 'nowhere.kubeconfig');
  writeFileSync(
    nowhere,
    toYaml({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'nowhere', cluster: { server: 'https://127.0.0.1:9' } }],
      users: [{ name: 'nobody', user: { token: 'none' } }],
      contexts: [{ name: 'nowhere', context: { cluster: 'nowhere', user: 'nobody' } }],
      'current-context': 'nowhere',
    }),
  );
  const guardrails = join(scratch, 'guardrails.yaml');
  writeFileSync(guardrails, toYaml({ maxWindow: '1h' }));
  workers.push(await startTestWorker(taskQueue, { kubeconfig: nowhere, guardrailsFile: guardrails }));
  workers.push(await startTestWorker(`${taskQueue}-${cluster}`));
}, 300_000);

const eastNamespaces: string[] = [];
let eastCleanup: (() => Promise<void>) | undefined;

afterAll(async () => {
  for (const w of workers) await w.stop();
  await removeFixtures(kc, namespaces);
  await eastCleanup?.();
});

const fleetStatus = async (name = fleetName): Promise<FleetStatus> => {
  const out = await runasMigrate(['status', '--fleet', name, '-o', 'json']);
  if (out.code !== 0) throw new Error(`status --fleet failed: ${out.stderr}`);
  return JSON.parse(out.stdout) as FleetStatus;
};

it(
  "migrates a canary, waits for the approval after it, then the wave, each run on its cluster's worker; every policy exact",
  { timeout: 300_000 },
  async () => {
    await startFleetFile(fleetName, {
      targets: namespaces.map((namespace) => ({ namespace, cluster })),
      approvals: 'after-canary',
      waveSize: 5,
    });

    const waiting = await waitFor(
      'the fleet to wait after its canary',
      async () => {
        const s = await fleetStatus();
        return s.phase === 'waiting-for-approval' ? s : undefined;
      },
      240_000,
      1000,
    );
    expect(waiting.targets.map((t) => t.state)).toEqual(['succeeded', 'pending']);
    const view = await runasMigrate(['status', '--fleet', fleetName]);
    expect(view.stdout).toContain(`runas-migrate approve --fleet ${fleetName} --gate after-canary`);

    const approved = await runasMigrate([
      'approve',
      '--fleet',
      fleetName,
      '--gate',
      'after-canary',
      '--by',
      'alice',
    ]);
    expect(approved.stdout).toContain('approved gate after-canary');
    // `status --watch` follows the fleet to its end and exits 0 only if it completed.
    const followed = await runasMigrate(['status', '--fleet', fleetName, '--watch']);
    expect(followed.stderr).toBe('');
    expect(followed.code).toBe(0);
    expect(
      followed.stdout.split('\n').filter((l) => l.startsWith(`fleet ${fleetName} — completed;`)),
    ).toHaveLength(1);
    const done = await fleetStatus();
    expect(done.targets.map((t) => [t.state, t.message])).toEqual([
      ['succeeded', null],
      ['succeeded', null],
    ]);
    expect(done.phase).toBe('completed');
    for (const t of done.targets) {
      expect(t.workflowId).toBe(`runas-migrate-${cluster}.${t.namespace}`);
      expect(t.taskQueue).toBe(`${taskQueue}-${cluster}`);
      expect(t.windowSeconds).toBeGreaterThan(0);
    }
    for (const namespace of namespaces) {
      for (const name of ['pgplatform', 'timescale']) {
        const sts = await apps.readNamespacedStatefulSet({ namespace, name });
        expect(sts.spec?.template.spec?.securityContext?.runAsUser).toBe(5000);
        expect(sts.status?.readyReplicas).toBe(sts.spec?.replicas);
      }
      expect(await policyState(kc, namespace)).toEqual(before.get(namespace));
    }
    const fleet = workers[0]!.w.client.workflow.getHandle(fleetWorkflowId(fleetName));
    expect((await fleet.describe()).status.name).toBe('COMPLETED');
    // An ended fleet is neither approved nor aborted, and the CLI says how it ended.
    for (const args of [
      ['approve', '--fleet', fleetName, '--gate', 'after-canary'],
      ['abort', '--fleet', fleetName, '--reason', 'too late'],
    ]) {
      const late = await runasMigrate(args);
      expect(late.code).toBe(1);
      expect(late.stderr).toContain(
        `fleet ${fleetName} is not running (COMPLETED): there is nothing to ${args[0]}`,
      );
    }
    // One run of the fleet, by its namespace and cluster, as the operator asks for it.
    const one = await runasMigrate([
      'status',
      '-n',
      namespaces[0]!,
      '--cluster',
      cluster,
      '--output',
      'json',
    ]);
    expect(one.code).toBe(0);
    expect(JSON.parse(one.stdout)).toMatchObject({ phase: 'completed' });
    const unnamed = await runasMigrate(['status', '-n', namespaces[0]!]);
    expect(unnamed.code).toBe(1);
    expect(unnamed.stderr).toContain('--cluster <cluster>');
  },
);

it(
  'migrates namespaces on two real clusters, each run by the worker of its cluster',
  { timeout: 420_000 },
  async () => {
    const east = await ensureCluster(bed(), 'east');
    const kcEast = clusterConfig(east);
    const appsEast = kcEast.makeApiClient(AppsV1Api);
    const onBed = uniqueName('fleet-two-bed');
    const onEast = uniqueName('fleet-two-east');
    namespaces.push(onBed);
    eastNamespaces.push(onEast);
    eastCleanup = async () => {
      for (const n of eastNamespaces) await removeFixture(kcEast, n, east.pvRoot);
    };
    await Promise.all([
      seedItrsFixture(kc, {
        namespace: onBed,
        pvRoot: bed().pvRoot,
        filesPerVolume: 20,
        databases: 'simulated',
      }).then(() => waitForFixtureReady(kc, onBed, 120_000)),
      seedItrsFixture(kcEast, {
        namespace: onEast,
        pvRoot: east.pvRoot,
        filesPerVolume: 20,
        databases: 'simulated',
        constraints: false,
      }).then(() => waitForFixtureReady(kcEast, onEast, 120_000)),
    ]);
    const policiesBefore = { bed: await policyState(kc, onBed), east: await policyState(kcEast, onEast) };
    workers.push(await startTestWorker(`${taskQueue}-east`, { kubeconfig: east.kubeconfig }));

    const name = uniqueName('f2');
    await startFleetFile(name, {
      targets: [
        { namespace: onBed, cluster },
        // No Gatekeeper on that cluster: PSA alone is relaxed and restored, and no audit is read.
        { namespace: onEast, cluster: 'east', input: { policies: { gatekeeper: false } } },
      ],
      canary: false,
      approvals: 'none',
    });
    const done = await waitFor(
      'the two-cluster fleet to end',
      async () => {
        const s = await fleetStatus(name);
        return ['completed', 'completed-with-failures', 'stopped', 'aborted'].includes(s.phase)
          ? s
          : undefined;
      },
      300_000,
      1000,
    );
    expect(done.targets.map((t) => [t.id, t.state, t.message])).toEqual([
      [`${cluster}/${onBed}`, 'succeeded', null],
      [`east/${onEast}`, 'succeeded', null],
    ]);
    // Each run changed its own cluster: the namespace exists on one cluster only.
    for (const [client, namespace] of [
      [apps, onBed],
      [appsEast, onEast],
    ] as const) {
      for (const sts of ['pgplatform', 'timescale']) {
        const s = await client.readNamespacedStatefulSet({ namespace, name: sts });
        expect(s.spec?.template.spec?.securityContext?.runAsUser).toBe(5000);
        expect(s.status?.readyReplicas).toBe(s.spec?.replicas);
      }
    }
    expect(await policyState(kc, onBed)).toEqual(policiesBefore.bed);
    expect(await policyState(kcEast, onEast)).toEqual(policiesBefore.east);
    const child = workers[0]!.w.client.workflow.getHandle(`runas-migrate-east.${onEast}`);
    expect((await child.describe()).taskQueue).toBe(`${taskQueue}-east`);
  },
);

/**
 * Checks the runs of fleet `name` under `maxOpenWindows: 1`: each gave its turn back, had as many
 * windows as rounds, and left its policies exact; no window of any of them overlaps another.
 */
async function expectTurnsTaken(
  name: string,
  runs: [namespace: string, rounds: number][],
  policiesBefore: Map<string, PolicyState>,
): Promise<void> {
  const windows: { namespace: string; openedAt: number; closedAt: number }[] = [];
  for (const [namespace, rounds] of runs) {
    const out = await runasMigrate(['status', '-n', namespace, '--cluster', cluster, '-o', 'json']);
    const run = JSON.parse(out.stdout) as MigrationStatus;
    expect(run.windowSlot).toMatchObject({ fleet: fleetWorkflowId(name), state: 'released' });
    expect(run.windows, `${namespace}'s windows`).toHaveLength(rounds);
    for (const w of run.windows)
      windows.push({ namespace, openedAt: Date.parse(w.openedAt), closedAt: Date.parse(w.closedAt!) });
    expect(await policyState(kc, namespace)).toEqual(policiesBefore.get(namespace));
  }
  windows.sort((a, b) => a.openedAt - b.openedAt);
  for (let i = 1; i < windows.length; i++)
    expect(
      windows[i]!.openedAt,
      `a window of ${windows[i]!.namespace} opened before one of ${windows[i - 1]!.namespace} closed`,
    ).toBeGreaterThanOrEqual(windows[i - 1]!.closedAt);
}

it(
  'with maxOpenWindows 1, relaxes one namespace at a time: the windows of a wave follow each other, every policy exact',
  { timeout: 300_000 },
  async () => {
    const wave = [uniqueName('fleet-turn-a'), uniqueName('fleet-turn-b'), uniqueName('fleet-turn-c')];
    namespaces.push(...wave);
    const policiesBefore = new Map<string, PolicyState>();
    await seedOnBed(wave, policiesBefore);
    const name = uniqueName('f-turns');
    await startFleetFile(name, {
      targets: wave.map((namespace) => ({ namespace, cluster })),
      canary: false,
      approvals: 'none',
      waveSize: 3,
      maxOpenWindows: 1,
    });
    const followed = await runasMigrate(['status', '--fleet', name, '--watch']);
    expect(followed.code).toBe(0);
    expect(followed.stdout).toContain('relaxed at once: at most 1 (maxOpenWindows)');
    const done = await fleetStatus(name);
    expect(done.targets.map((t) => t.state)).toEqual(['succeeded', 'succeeded', 'succeeded']);
    expect(done.windowSlots).toEqual({ max: 1, held: [], waiting: [] });

    // Started together, the three runs relaxed their namespaces one after the other.
    await expectTurnsTaken(
      name,
      wave.map((namespace) => [namespace, 1]),
      policiesBefore,
    );
  },
);

it(
  'with maxOpenWindows 1, a run whose Jobs fail asks for a turn again for its second round: no two windows overlap, every policy exact',
  { timeout: 300_000 },
  async () => {
    const [failing, passing] = [uniqueName('fleet-round-a'), uniqueName('fleet-round-b')];
    namespaces.push(failing, passing);
    const policiesBefore = new Map<string, PolicyState>();
    await seedOnBed([failing, passing], policiesBefore);
    // root with CAP_CHOWN still gets EPERM on an immutable file: its Job fails for real, twice.
    const stuck = join(
      pvDirectory(bed().pvRoot, failing, 'timescale-ha-data-timescale-1'),
      'data',
      'PG_VERSION',
    );
    execFileSync('chattr', ['+i', stuck]);
    try {
      const name = uniqueName('f-rounds');
      await startFleetFile(name, {
        // Each window spans its Jobs, so a round that relaxed out of turn would overlap the other's.
        targets: [failing, passing].map((namespace) => ({
          namespace,
          cluster,
          input: { window: { mode: 'job-duration' } },
        })),
        canary: false,
        approvals: 'none',
        waveSize: 2,
        failureBudget: 1,
        maxOpenWindows: 1,
      });
      const done = await waitFor(
        'both runs of the fleet ended',
        async () => {
          const s = await fleetStatus(name);
          return s.targets.every((t) => t.state === 'succeeded' || t.state === 'failed') ? s : undefined;
        },
        240_000,
        1000,
      );
      expect(done.targets.map((t) => t.state)).toEqual(['failed', 'succeeded']);
      expect(done.targets[0]!.message).toContain('ownership Jobs failed after 2 attempts');
      await waitFor(
        'every turn given back',
        async () => ((await fleetStatus(name)).windowSlots?.held.length === 0 ? true : undefined),
        30_000,
        500,
      );
      expect((await fleetStatus(name)).windowSlots).toEqual({ max: 1, held: [], waiting: [] });
      // The failing run asked for a turn, and gave it back, once per round.
      const history = await workers[0]!.w.client.workflow
        .getHandle(done.targets[0]!.workflowId)
        .fetchHistory();
      const signalled = (signal: string) =>
        (history.events ?? []).filter(
          (e) => e.signalExternalWorkflowExecutionInitiatedEventAttributes?.signalName === signal,
        ).length;
      expect([signalled('windowSlotRequest'), signalled('windowSlotRelease')]).toEqual([2, 2]);

      // Each round's window, the retry's included, waited for the turn.
      await expectTurnsTaken(
        name,
        [
          [failing, 2],
          [passing, 1],
        ],
        policiesBefore,
      );
    } finally {
      execFileSync('chattr', ['-i', stuck]);
    }
  },
);
