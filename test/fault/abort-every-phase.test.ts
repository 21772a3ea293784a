/**
 * `abort` (the operator's signal, sent with `runas-migrate abort`) and cancel (`temporal
 * workflow cancel`) in every phase of a run on the test bed. A phase is reached by holding one
 * real step after its work (its completion withheld until the run cancels it), by a gate, or by
 * Jobs that cannot be scheduled. Before the files change hands, the namespace must end exactly
 * as the full snapshot taken before the run (end state `unchanged`); after, the run keeps the new
 * IDs (`rolled-forward`) and only the policies, replicas and Jobs are checked. Last, a fleet
 * cancelled while its run's window is open: the cancel must reach the run, which puts everything
 * back as a cancelled run does; and a fleet with `maxOpenWindows: 1` aborted while one run holds
 * the turn to relax and the other waits for it.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInputRaw } from '../../src/core/input.js';
import { OriginalReplicasAnnotation } from '../../src/core/plan.js';
import { queryStatus, startRun, workflowIdOf } from '../../src/app/runs.js';
import { queryFleet, startFleet } from '../../src/app/fleets.js';
import { fleetWorkflowId } from '../../src/core/names.js';
import { HostRunnerPlacement } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import type { MigrationStatus } from '../../src/workflows/messages.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { StepHold } from '../support/fault-interceptors.js';
import { matrix } from '../support/matrix.js';
import { namespaceSnapshot, readyFixture, removeFixtures } from '../support/snapshot.js';
import { temporalCli } from '../support/temporal.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const exec = promisify(execFile);
const kc = kubeConfig();
const cli = fileURLToPath(new URL('../../bin/runas-migrate.js', import.meta.url));
const taskQueue = uniqueName('fault-abort');
const hold = new StepHold();
const untouched = uniqueName('abort');
const migrated = uniqueName('abort-late');
const alongside = uniqueName('abort-turn');
let worker: TestWorker;

/** How a case brings the run to its phase. */
interface Case {
  phase: string;
  /** Step held after its work, if any. */
  hold?: string;
  approvals?: ('plan' | 'relax')[];
  /** Ownership Jobs whose pods can never be scheduled, so no file changes hands. */
  stuckJobs?: boolean;
  /** Extra condition on the run's status before stopping it. */
  until?: (s: MigrationStatus) => boolean;
}

const beforeFilesChange: Case[] = [
  { phase: 'planning', hold: 'planMigration' },
  { phase: 'plan gate', approvals: ['plan'] },
  { phase: 'applying-security-context', hold: 'verifySecurityContext' },
  { phase: 'scaling-down', hold: 'scaleDown' },
  { phase: 'relax gate', approvals: ['relax'] },
  { phase: 'relaxing-policies', hold: 'relaxPolicies' },
  { phase: 'migrating-ownership, Jobs created', hold: 'createOwnershipJobs', stuckJobs: true },
  { phase: 'migrating-ownership, pods admitted', hold: 'waitForPodsAdmitted', stuckJobs: true },
  {
    phase: 'migrating-ownership, window closed',
    stuckJobs: true,
    until: (s) => s.policies.state === 'restored',
  },
];
const afterFilesChange: Case[] = [
  { phase: 'scaling-up', hold: 'scaleUp' },
  { phase: 'verifying', hold: 'verifyDatabases' },
];
const stops = ['abort', 'cancel'] as const;

function inputFor(namespace: string, c: Case, uid: number): MigrationInputRaw {
  return {
    namespace,
    uid,
    gid: uid,
    securityContext: { apply: 'patch' },
    approvals: c.approvals ?? [],
    // heartbeats (and so cancellations) reach a held step within about a second
    heartbeatTimeout: '3s',
    job: c.stuckJobs
      ? { nodeSelector: { 'runas-migrate.dev/no-such-node': 'true' } }
      : { ...HostRunnerPlacement },
  };
}

/** Starts a run, brings it to the case's phase, stops it, and returns its last status. */
async function stopIn(namespace: string, c: Case, stop: (typeof stops)[number], uid: number) {
  const held = c.hold ? hold.arm(c.hold) : undefined;
  const { handle } = await startRun(worker.w.client, inputFor(namespace, c, uid), { taskQueue });
  if (held) await held;
  const status = () => queryStatus(worker.w.client, namespace);
  if (c.approvals?.length) {
    await waitFor(
      `gate ${c.approvals[0]} waiting`,
      async () => (await status()).gates.some((g) => g.state === 'waiting'),
      60_000,
      100,
    );
  }
  if (c.until) await waitFor(c.phase, async () => c.until!(await status()), 60_000, 100);
  const reached = await status();

  if (stop === 'abort') {
    await exec(process.execPath, [cli, 'abort', '-n', namespace, '--reason', `test: ${c.phase}`], {
      env: { ...process.env, KUBECONFIG: bed().kubeconfig, TEMPORAL_ADDRESS: bed().temporal.address },
      timeout: 60_000,
    });
  } else {
    await temporalCli(['workflow', 'cancel', '-w', workflowIdOf(namespace)]);
  }
  await expect(handle.result()).rejects.toThrow();
  return { reached, end: await status(), closedAs: await closedAs(workflowIdOf(namespace)) };
}

/** How the workflow closed, as the temporal CLI describes it. */
async function closedAs(workflowId: string): Promise<string> {
  const described = JSON.parse(
    await temporalCli(['workflow', 'describe', '-w', workflowId, '-o', 'json']),
  ) as { workflowExecutionInfo: { status: string } };
  return described.workflowExecutionInfo.status;
}

beforeAll(async () => {
  await readyFixture(kc, untouched, bed().pvRoot, 20);
  await readyFixture(kc, migrated, bed().pvRoot, 20);
  await readyFixture(kc, alongside, bed().pvRoot, 20);
  worker = await startTestWorker(taskQueue, { interceptors: hold.interceptors() });
});

afterAll(async () => {
  await worker?.stop();
  await removeFixtures(kc, [untouched, migrated, alongside]);
});

/**
 * `npm test` aborts in every phase and cancels where the two stops differ most (a step in
 * flight, pods running, files changed); `npm run bench -- fault-matrix` runs both everywhere.
 */
const cancelledIn = new Set(['relaxing-policies', 'migrating-ownership, pods admitted', 'scaling-up']);
const stopsIn = (c: Case) => matrix(stops, (stop) => stop === 'abort' || cancelledIn.has(c.phase));

describe('abort and cancel before the files change hands: everything as before', () => {
  for (const c of beforeFilesChange) {
    for (const stop of stopsIn(c)) {
      it(`${stop} in ${c.phase}`, { timeout: 120_000 }, async () => {
        const before = await namespaceSnapshot(kc, untouched, bed().pvRoot);
        const { reached, end, closedAs } = await stopIn(untouched, c, stop, 5000);
        if (c.hold) expect(reached.phase).not.toBe('completed');
        expect(end.phase).toBe(stop === 'abort' ? 'aborted' : 'failed');
        expect(closedAs).toMatch(stop === 'abort' ? /FAILED/ : /CANCELED/);
        expect(end.policies.state).not.toBe('relaxed');
        expect([end.endState, end.leftToDo]).toEqual(['unchanged', []]);
        expect(await namespaceSnapshot(kc, untouched, bed().pvRoot)).toEqual(before);
      });
    }
  }
});

describe('abort and cancel after the files changed hands: policies, replicas and Jobs as before', () => {
  let uid = 5000;
  for (const c of afterFilesChange) {
    for (const stop of stopsIn(c)) {
      it(`${stop} in ${c.phase}`, { timeout: 120_000 }, async () => {
        const before = await namespaceSnapshot(kc, migrated, bed().pvRoot);
        uid += 1000;
        const { reached, end, closedAs } = await stopIn(migrated, c, stop, uid);
        expect(reached.phase).toBe(c.phase);
        expect(end.phase).toBe(stop === 'abort' ? 'aborted' : 'failed');
        expect(closedAs).toMatch(stop === 'abort' ? /FAILED/ : /CANCELED/);
        expect([end.endState, end.leftToDo]).toEqual(['rolled-forward', []]);
        const after = await namespaceSnapshot(kc, migrated, bed().pvRoot);
        expect(after.policies).toEqual(before.policies);
        expect(after.jobs).toEqual([]);
        expect(after.statefulSets.map((s) => [s.name, s.replicas])).toEqual(
          before.statefulSets.map((s) => [s.name, s.replicas]),
        );
        expect(after.statefulSets.every((s) => !(OriginalReplicasAnnotation in s.annotations))).toBe(true);
        expect(new Set(Object.values(after.owners))).toEqual(new Set([`${uid}:${uid}`]));
      });
    }
  }
});

describe('a fleet cancelled while its run holds the namespace open', () => {
  it(
    'cancels the run, which restores every policy: the namespace ends exactly as before, and the rest of the fleet is skipped',
    { timeout: 120_000 },
    async () => {
      const before = await namespaceSnapshot(kc, untouched, bed().pvRoot);
      const c: Case = { phase: 'migrating-ownership, pods admitted', stuckJobs: true };
      const held = hold.arm('waitForPodsAdmitted');
      const { namespace: _n, approvals: _a, ...defaults } = inputFor(untouched, c, 5000);
      const name = uniqueName('fleet-cancel');
      const never = uniqueName('fleet-never');
      await startFleet(
        worker.w.client,
        { name, defaults, approvals: 'none', targets: [{ namespace: untouched }, { namespace: never }] },
        { taskQueue },
      );
      await held;
      const open = await queryStatus(worker.w.client, untouched);
      expect(open.policies.state).toBe('relaxed');

      await temporalCli(['workflow', 'cancel', '-w', fleetWorkflowId(name)]);
      await expect(worker.w.client.workflow.getHandle(fleetWorkflowId(name)).result()).rejects.toThrow();
      expect(await closedAs(fleetWorkflowId(name))).toMatch(/CANCELED/);
      expect(await closedAs(workflowIdOf(untouched))).toMatch(/CANCELED/);
      const fleet = await queryFleet(worker.w.client, name);
      expect(fleet.phase).toBe('cancelled');
      expect(fleet.targets.map((t) => [t.namespace, t.state])).toEqual([
        [untouched, 'failed'],
        [never, 'skipped'],
      ]);
      const end = await queryStatus(worker.w.client, untouched);
      expect(end.policies.state).not.toBe('relaxed');
      expect([end.endState, end.leftToDo]).toEqual(['unchanged', []]);
      expect(await namespaceSnapshot(kc, untouched, bed().pvRoot)).toEqual(before);
    },
  );
});

describe('a fleet with maxOpenWindows 1 aborted while one run holds the turn to relax and the other waits', () => {
  it(
    'the waiting run stops without relaxing and leaves the queue; both namespaces end exactly as before',
    { timeout: 120_000 },
    async () => {
      const client = worker.w.client;
      const namespaces = [untouched, alongside];
      const before = new Map<string, Awaited<ReturnType<typeof namespaceSnapshot>>>();
      for (const n of namespaces) before.set(n, await namespaceSnapshot(kc, n, bed().pvRoot));
      const c: Case = { phase: 'migrating-ownership, pods admitted', stuckJobs: true };
      // Whichever run gets the turn first is held with its window open.
      const held = hold.arm('waitForPodsAdmitted');
      const { namespace: _n, approvals: _a, ...defaults } = inputFor(untouched, c, 5000);
      const name = uniqueName('fleet-turns');
      await startFleet(
        client,
        {
          name,
          defaults,
          approvals: 'none',
          canary: false,
          waveSize: 2,
          maxOpenWindows: 1,
          targets: namespaces.map((namespace) => ({ namespace })),
        },
        { taskQueue },
      );
      await held;
      const queued = await waitFor(
        'the other run to wait for its turn',
        async () => {
          const f = await queryFleet(client, name);
          return f.windowSlots?.waiting.length === 1 ? f : undefined;
        },
        60_000,
        100,
      );
      const namespaceOf = (workflowId: string) =>
        queued.targets.find((t) => t.workflowId === workflowId)!.namespace;
      const holder = namespaceOf(queued.windowSlots!.held[0]!);
      const waiter = namespaceOf(queued.windowSlots!.waiting[0]!);
      expect((await queryStatus(client, holder)).policies.state).toBe('relaxed');
      expect(await queryStatus(client, waiter)).toMatchObject({
        phase: 'relaxing-policies',
        policies: { state: 'enforced' },
        windowSlot: { fleet: fleetWorkflowId(name), state: 'waiting' },
        windows: [],
      });

      await exec(process.execPath, [cli, 'abort', '--fleet', name, '--reason', 'test: turns'], {
        env: { ...process.env, KUBECONFIG: bed().kubeconfig, TEMPORAL_ADDRESS: bed().temporal.address },
        timeout: 60_000,
      });
      await expect(client.workflow.getHandle(fleetWorkflowId(name)).result()).rejects.toThrow();
      const fleet = await queryFleet(client, name);
      expect(fleet.phase).toBe('aborted');
      expect(fleet.windowSlots).toEqual({ max: 1, held: [], waiting: [] });
      const stopped = await queryStatus(client, waiter);
      expect(stopped.windows).toEqual([]);
      expect(stopped.windowSlot?.state).toBe('released');
      for (const n of namespaces) {
        const end = await queryStatus(client, n);
        expect(end.policies.state).not.toBe('relaxed');
        expect([n, end.endState, end.leftToDo]).toEqual([n, 'unchanged', []]);
        expect(await namespaceSnapshot(kc, n, bed().pvRoot)).toEqual(before.get(n));
      }
    },
  );
});
