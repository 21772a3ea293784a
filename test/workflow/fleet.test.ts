/**
 * Workflow logic of `migrateFleet` on the time-skipping server, each namespace's run a stand-in
 * (test/support/fleet-workflows.ts): the canary before the waves, the failure budget, the fleet
 * gates, an abort passed on to the running runs (and to one that has just ended), a cancelled
 * fleet, routing by cluster, one run per namespace across fleets, continue-as-new, and a bad input
 * refused before any run.
 */
import { fileURLToPath } from 'node:url';
import {
  WorkflowFailedError,
  type WorkflowHandle,
  type WorkflowHandleWithFirstExecutionRunId,
} from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, DefaultLogger, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import type { FleetInputRaw } from '../../src/core/fleet.js';
import { fleetWorkflowId } from '../../src/core/names.js';
import { legacyFleetWorkflowId, queryFleet, startFleet } from '../../src/app/fleets.js';
import { RunInProgressError } from '../../src/app/runs.js';
import { fleetStatusQuery, type FleetReport, type FleetStatus } from '../../src/workflows/fleet-messages.js';
import { abortSignal, approveSignal } from '../../src/workflows/messages.js';

let env: TestWorkflowEnvironment;
/** Bundled once for the file: every test's workers share it (a bundle takes seconds). */
let workflowBundle: Awaited<ReturnType<typeof bundleWorkflowCode>>;
const workflowsPath = fileURLToPath(new URL('../support/fleet-workflows.ts', import.meta.url));
const quietLogger = new DefaultLogger('WARN');

beforeAll(async () => {
  [env, workflowBundle] = await Promise.all([
    TestWorkflowEnvironment.createTimeSkipping({
      server: { executable: { type: 'existing-path', path: inject('timeSkippingServer') } },
    }),
    bundleWorkflowCode({ workflowsPath, logger: quietLogger }),
  ]);
}, 120_000);
afterAll(async () => {
  await env?.teardown();
});

const uniq = () => Math.random().toString(36).slice(2, 8);

interface FleetOutcome {
  report?: FleetReport;
  error?: WorkflowFailedError;
  /** Undefined when the fleet failed before it could answer (a bad input). */
  status: FleetStatus;
  handle: WorkflowHandleWithFirstExecutionRunId;
  taskQueue: string;
}

/**
 * Runs a fleet of `namespaces` (each suffixed to be unique) with workers on its task queue and on
 * `clusters`' queues; `during` runs while the fleet runs.
 */
async function fleet(
  namespaces: string[],
  opts: Partial<FleetInputRaw> & {
    clusters?: string[];
    /** Runs once the workers poll, before the fleet starts; gets the fleet's task queue. */
    before?: (taskQueue: string) => Promise<void>;
    during?: (h: WorkflowHandle, ns: string[]) => Promise<void>;
  } = {},
): Promise<FleetOutcome> {
  const taskQueue = `fleet-${uniq()}`;
  const suffix = uniq();
  const names = namespaces.map((n) => `${n}-${suffix}`);
  const { clusters = [], before, during, ...input } = opts;
  const workers = await Promise.all(
    [taskQueue, ...clusters.map((c) => `${taskQueue}-${c}`)].map((q) =>
      Worker.create({ connection: env.nativeConnection, taskQueue: q, workflowBundle }),
    ),
  );
  const raw: FleetInputRaw = {
    name: `f-${suffix}`,
    defaults: { uid: 5000, gid: 5000 },
    approvals: 'none',
    targets: names.map((namespace) => ({ namespace })),
    ...input,
  };
  const runAll = async (): Promise<FleetOutcome> => {
    await before?.(taskQueue);
    const handle = await env.client.workflow.start('migrateFleet', {
      taskQueue,
      workflowId: fleetWorkflowId(raw.name),
      args: [raw],
    });
    try {
      await during?.(handle, names);
    } catch (err) {
      // A fleet left running would hold the test server's clock for every later test.
      await handle.terminate('the test failed');
      throw err;
    }
    const status = () => handle.query(fleetStatusQuery).catch(() => undefined as unknown as FleetStatus);
    // A fleet whose cancel or abort never reaches a `hold-*` run would never end, and would hold
    // the server's clock for every later test: it is terminated after a real-time deadline.
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('the fleet did not end within 45 s')), 45_000);
    });
    try {
      const report = (await Promise.race([handle.result(), deadline]).catch(async (err: unknown) => {
        if (err instanceof Error && err.message.startsWith('the fleet did not end'))
          await handle.terminate('the test timed out');
        throw err;
      })) as FleetReport;
      return { report, status: await status(), handle, taskQueue };
    } catch (err) {
      if (!(err instanceof WorkflowFailedError)) throw err;
      return { error: err, status: await status(), handle, taskQueue };
    } finally {
      clearTimeout(timer);
    }
  };
  // Every worker runs until the fleet is done (the last one wraps the others).
  const [first, ...rest] = workers;
  const run = rest.reduce<() => Promise<FleetOutcome>>((inner, w) => () => w.runUntil(inner()), runAll);
  return first!.runUntil(run());
}

const states = (s: FleetStatus) =>
  Object.fromEntries(s.targets.map((t) => [t.namespace.replace(/-[a-z0-9]+$/, ''), t.state]));
const failureType = (e?: WorkflowFailedError) =>
  e?.cause instanceof ApplicationFailure ? e.cause.type : undefined;

const waitForStatus = async (h: WorkflowHandle, ok: (s: FleetStatus) => boolean, what: string) => {
  for (let i = 0; i < 400; i++) {
    const s = await h.query(fleetStatusQuery);
    if (ok(s)) return s;
    // The server's clock moves only while the client waits for a result or sleeps.
    await env.sleep('2 seconds');
  }
  throw new Error(`the fleet never showed ${what}`);
};

/** Waits until the fleet has seen `runs` runs start and no workflow task of it is pending. */
const idle = async (h: WorkflowHandle, runs: number) => {
  const { EventType } = temporal.api.enums.v1;
  for (let i = 0; i < 200; i++) {
    const events = (await h.fetchHistory()).events ?? [];
    const started = events.filter(
      (e) => e.eventType === EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED,
    );
    if (started.length === runs && events.at(-1)?.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
      return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the fleet never settled with ${runs} runs started`);
};

describe('migrateFleet', () => {
  it('runs the canary alone, then waves of waveSize, each run without its own gates', async () => {
    const { report, status } = await fleet(['a', 'b', 'c', 'd', 'e'], { waveSize: 2 });
    expect(report?.phase).toBe('completed');
    expect(status.targets.map((t) => t.wave)).toEqual([0, 1, 1, 2, 2]);
    expect(Object.values(states(status))).toEqual(Array(5).fill('succeeded'));
    const at = (i: number, k: 'startedAt' | 'finishedAt') => Date.parse(status.targets[i]![k]!);
    // Each wave starts only after the one before it has finished.
    expect(at(1, 'startedAt')).toBeGreaterThanOrEqual(at(0, 'finishedAt'));
    expect(at(3, 'startedAt')).toBeGreaterThanOrEqual(Math.max(at(1, 'finishedAt'), at(2, 'finishedAt')));
    const child: unknown = await env.client.workflow.getHandle(status.targets[0]!.workflowId).result();
    expect(child).toMatchObject({ approvals: [] });
    expect(status.targets[0]!.workflowId).toBe(`runas-migrate-${status.targets[0]!.namespace}`);
  });

  it('stops at the first failure: the rest of its wave finishes, later waves are skipped', async () => {
    const { error, status } = await fleet(['a', 'fail-b', 'c', 'd'], { waveSize: 2 });
    expect(failureType(error)).toBe('FleetStopped');
    expect(states(status)).toEqual({ a: 'succeeded', 'fail-b': 'failed', c: 'succeeded', d: 'skipped' });
    expect(status.targets[1]!.message).toContain('verification failed on purpose');
    expect(status.targets[3]!.message).toContain('more than the failure budget of 0');
    expect(status.phase).toBe('stopped');
  });

  it('runs every wave within its failure budget, and still fails, naming the runs that failed', async () => {
    const { error, status } = await fleet(['a', 'fail-b', 'c', 'd'], { waveSize: 2, failureBudget: 1 });
    expect(failureType(error)).toBe('FleetRunsFailed');
    expect(error!.cause!.message).toContain('fail-b');
    expect(states(status)).toEqual({ a: 'succeeded', 'fail-b': 'failed', c: 'succeeded', d: 'succeeded' });
  });

  it('a failed canary stops the fleet before any wave', async () => {
    const { error, status } = await fleet(['fail-a', 'b', 'c'], { failureBudget: 0 });
    expect(failureType(error)).toBe('FleetStopped');
    expect(states(status)).toEqual({ 'fail-a': 'failed', b: 'skipped', c: 'skipped' });
  });

  it('waits after the canary for the approval, refusing one sent before the gate is reached', async () => {
    const { report, status } = await fleet(['a', 'b', 'c'], {
      approvals: 'after-canary',
      during: async (h) => {
        await h.signal(approveSignal, { gate: 'after-canary', by: 'too-early' });
        const waiting = await waitForStatus(h, (s) => s.phase === 'waiting-for-approval', 'the gate waiting');
        expect(waiting.targets.map((t) => t.state)).toEqual(['succeeded', 'pending', 'pending']);
        await h.signal(approveSignal, { gate: 'after-canary', by: 'alice' });
      },
    });
    expect(report?.phase).toBe('completed');
    expect(status.gates).toEqual([
      expect.objectContaining({ gate: 'after-canary', state: 'approved', by: 'alice' }),
    ]);
  });

  it('an abort is passed on to the running runs, which end as aborted runs do; the rest are skipped', async () => {
    const { error, status } = await fleet(['a', 'hold-b', 'hold-c', 'd'], {
      waveSize: 2,
      during: async (h) => {
        await waitForStatus(
          h,
          (s) => s.targets[1]!.state === 'running' && s.targets[2]!.state === 'running',
          'wave 1 running',
        );
        await h.signal(abortSignal, { reason: 'change freeze', by: 'bob' });
      },
    });
    expect(failureType(error)).toBe('Aborted');
    expect(states(status)).toEqual({ a: 'succeeded', 'hold-b': 'failed', 'hold-c': 'failed', d: 'skipped' });
    expect(status.targets[1]).toMatchObject({ endState: 'unchanged' });
    expect(status.targets[1]!.message).toContain('change freeze');
    expect(status.phase).toBe('aborted');
  });

  it('a run that finds nothing to change counts as done, not as a failure', async () => {
    const { report, status } = await fleet(['done-a', 'b'], {});
    expect(report?.phase).toBe('completed');
    expect(status.targets[0]).toMatchObject({ state: 'succeeded', endState: 'unchanged' });
    expect(status.failures).toBe(0);
  });

  it('each-wave waits before every wave after the canary, never before the canary itself', async () => {
    const { report, status } = await fleet(['a', 'b', 'c'], {
      approvals: 'each-wave',
      waveSize: 1,
      during: async (h) => {
        const first = await waitForStatus(h, (s) => s.phase === 'waiting-for-approval', 'the first gate');
        expect(first.targets.map((t) => t.state)).toEqual(['succeeded', 'pending', 'pending']);
        expect(first.gates.map((g) => [g.gate, g.state])).toEqual([
          ['wave-1', 'waiting'],
          ['wave-2', 'pending'],
        ]);
        await h.signal(approveSignal, { gate: 'wave-1', by: 'alice' });
        await waitForStatus(h, (s) => s.gates[1]!.state === 'waiting', 'the second gate');
        await h.signal(approveSignal, { gate: 'wave-2', by: 'alice' });
      },
    });
    expect(report?.phase).toBe('completed');
    expect(status.gates.map((g) => g.state)).toEqual(['approved', 'approved']);
  });

  it('a cancelled fleet cancels its running runs, which compensate; the rest are skipped and it ends cancelled', async () => {
    const { error, status } = await fleet(['a', 'hold-b', 'hold-c', 'd'], {
      waveSize: 2,
      continueAfterRuns: 3,
      during: async (h) => {
        await waitForStatus(
          h,
          (s) => s.targets[1]!.state === 'running' && s.targets[2]!.state === 'running',
          'wave 1 running',
        );
        await h.cancel();
      },
    });
    expect(error?.cause).toBeInstanceOf(CancelledFailure);
    expect(states(status)).toEqual({ a: 'succeeded', 'hold-b': 'failed', 'hold-c': 'failed', d: 'skipped' });
    expect(status.phase).toBe('cancelled');
    expect(status.continuedAsNew).toBe(0);
    expect(status.targets[1]!.message).toMatch(/cancelled/);
    for (const t of status.targets.slice(1, 3))
      expect((await env.client.workflow.getHandle(t.workflowId).describe()).status.name).toBe('CANCELLED');
  });

  // Three workers, a 30 s guard and a wait for the fleet to settle, on a loaded machine.
  it(
    'an abort that reaches a run which has just ended neither fails the fleet nor loses the abort',
    { timeout: 120_000 },
    async () => {
      const taskQueue = `fleet-${uniq()}`;
      const suffix = uniq();
      const raw: FleetInputRaw = {
        name: `f-${suffix}`,
        defaults: { uid: 5000, gid: 5000 },
        approvals: 'none',
        canary: false,
        targets: [
          { namespace: `a-${suffix}`, cluster: 'east' },
          { namespace: `hold-b-${suffix}`, cluster: 'east' },
        ],
      };
      // No sticky queue: the second worker must get the fleet's task the first one left.
      const fleetWorker = () =>
        Worker.create({ connection: env.nativeConnection, taskQueue, workflowBundle, maxCachedWorkflows: 0 });
      const runWorker = await Worker.create({
        connection: env.nativeConnection,
        taskQueue: `${taskQueue}-east`,
        workflowBundle,
      });
      const outcome = await runWorker.runUntil(async () => {
        const handle = await env.client.workflow.start('migrateFleet', {
          taskQueue,
          workflowId: fleetWorkflowId(raw.name),
          args: [raw],
        });
        await (
          await fleetWorker()
        ).runUntil(async () => {
          await waitForStatus(
            handle,
            (s) => s.targets.every((t) => t.state === 'running'),
            'the runs started',
          );
          // The worker leaves only once the fleet has seen both runs start: a workflow task left
          // pending would hold the test server's clock, and the first run would never end.
          await idle(handle, 2);
        });
        // With the fleet's worker gone, one run ends and then the abort arrives: the fleet's next
        // workflow task holds both, and its signal handler still sees that run as running. The
        // other run keeps the fleet open, so Temporal's refusal of the late signal comes back to it.
        await env.client.workflow.getHandle(`runas-migrate-east.a-${suffix}`).result();
        await handle.signal(abortSignal, { reason: 'too late', by: 'bob' });
        return (await fleetWorker()).runUntil(async () => {
          const ended = handle.result().then(
            () => 'completed',
            (err: unknown) => err,
          );
          const wedged = new Promise((r) => setTimeout(() => r('no end within 30 s'), 30_000).unref());
          const end = await Promise.race([ended, wedged]);
          // A fleet whose workflow task keeps failing cannot answer a query either.
          if (end === 'no end within 30 s')
            return { ended: end, status: undefined as unknown as FleetStatus };
          return { ended: end, status: await handle.query(fleetStatusQuery) };
        });
      });
      expect(outcome.ended).toBeInstanceOf(WorkflowFailedError);
      expect(failureType(outcome.ended as WorkflowFailedError)).toBe('Aborted');
      expect(outcome.status.targets[0]).toMatchObject({ state: 'succeeded', endState: 'completed' });
      expect(outcome.status.targets[1]).toMatchObject({ state: 'failed', endState: 'unchanged' });
      expect(outcome.status.targets[1]!.message).toContain('too late');
      expect(outcome.status.phase).toBe('aborted');
    },
  );

  it('with maxOpenWindows, at most that many runs hold a turn to relax at once; a run that ends holding one gives it back', async () => {
    const out = await fleet(['turn-keep-a', 'turn-b', 'turn-c', 'turn-d', 'turn-e'], {
      canary: false,
      waveSize: 5,
      maxOpenWindows: 2,
    });
    expect(out.error).toBeUndefined();
    type Held = { namespace: string; heldFrom: number; heldTo: number };
    const held: Held[] = [];
    for (const t of out.status.targets)
      held.push((await env.client.workflow.getHandle(t.workflowId).result()) as Held);
    expect(Object.values(states(out.status))).toEqual(Array(5).fill('succeeded'));
    expect(out.status.windowSlots).toEqual({ max: 2, held: [], waiting: [] });
    // Every instant a turn began, at most 2 turns covered it.
    for (const a of held) {
      const overlapping = held.filter((b) => b.heldFrom <= a.heldFrom && a.heldFrom < b.heldTo);
      expect(overlapping.length, `turns at ${a.namespace}'s start`).toBeLessThanOrEqual(2);
    }
    // 5 turns of a minute, 2 at a time: 3 minutes at least, so some runs waited.
    const span = Math.max(...held.map((x) => x.heldTo)) - Math.min(...held.map((x) => x.heldFrom));
    expect(span).toBeGreaterThanOrEqual(180_000);
  });

  it("routes each cluster's runs to that cluster's task queue, with a workflow ID per cluster and namespace", async () => {
    const outcome = await fleet([], {
      canary: false,
      clusters: ['east', 'west'],
      targets: [
        { namespace: 'itrs', cluster: 'east' },
        { namespace: 'itrs', cluster: 'west', input: { uid: 6000, gid: 6000 } },
      ],
    });
    expect(outcome.report?.phase).toBe('completed');
    for (const [i, cluster] of ['east', 'west'].entries()) {
      const t = outcome.status.targets[i]!;
      expect(t.workflowId).toBe(`runas-migrate-${cluster}.itrs`);
      const described = await env.client.workflow.getHandle(t.workflowId).describe();
      expect(described.taskQueue).toBe(`${outcome.taskQueue}-${cluster}`);
    }
  });

  it('does not start a second run of a namespace whose run is in progress', async () => {
    const taken = `slow-taken-${uniq()}`;
    let other: WorkflowHandle | undefined;
    const { error, status } = await fleet(['a'], {
      canary: false,
      targets: [{ namespace: taken }, { namespace: `free-${uniq()}` }],
      before: async (taskQueue) => {
        other = await env.client.workflow.start('migrateOwnership', {
          taskQueue,
          workflowId: `runas-migrate-${taken}`,
          args: [{ namespace: taken }],
        });
      },
    });
    expect(failureType(error)).toBe('FleetStopped');
    expect(status.targets[0]).toMatchObject({ state: 'failed' });
    expect(status.targets[0]!.message).toContain('already in progress');
    // It may have finished meanwhile: the server's clock ran on.
    await other!.terminate('test over').catch(() => undefined);
  });

  it('continues as new between waves, keeping what it did', async () => {
    const { report, handle } = await fleet(['a', 'b', 'c'], {
      canary: false,
      waveSize: 1,
      continueAfterRuns: 1,
    });
    expect(report?.phase).toBe('completed');
    expect(report?.continuedAsNew).toBe(2);
    expect(report?.targets.map((t) => t.state)).toEqual(['succeeded', 'succeeded', 'succeeded']);
    expect((await handle.describe()).runId).not.toBe(handle.firstExecutionRunId);
  });

  it('a fleet started under the ID fleets had before is still found, and one of its name is not started beside it', async () => {
    let found: FleetStatus | undefined;
    let refused: unknown;
    await fleet(['slow-a'], {
      canary: false,
      before: async (taskQueue) => {
        const name = `old-${uniq()}`;
        const raw: FleetInputRaw = {
          name,
          defaults: { uid: 5000, gid: 5000 },
          approvals: 'none',
          targets: [{ namespace: `slow-old-${uniq()}` }],
        };
        const old = await env.client.workflow.start('migrateFleet', {
          taskQueue,
          workflowId: legacyFleetWorkflowId(name),
          args: [raw],
        });
        found = await waitForStatus(
          old,
          (s) => s.targets[0]!.state === 'running',
          'the old fleet running',
        ).then(() => queryFleet(env.client, name));
        refused = await startFleet(env.client, raw, { taskQueue }).catch((err: unknown) => err);
        await old.terminate('test over');
      },
    });
    expect(found?.targets[0]?.state).toBe('running');
    expect(refused).toBeInstanceOf(RunInProgressError);
    expect((refused as Error).message).toContain('started before fleet IDs took a colon');
  });

  it('refuses a bad target before any run, naming the target and the field', async () => {
    const { error, status } = await fleet(['a'], {
      targets: [{ namespace: 'ok' }, { namespace: 'bad', input: { uid: 0 } }, { namespace: 'ok' }],
    }).catch((e: unknown) => ({
      error: e as WorkflowFailedError,
      status: undefined as unknown as FleetStatus,
    }));
    expect(failureType(error)).toBe('InvalidInput');
    expect(error!.cause!.message).toMatch(/targets\[1\] \(bad\): uid: must be at least 1/);
    expect(error!.cause!.message).toMatch(/targets\[2\]: ok is listed twice/);
    void status;
  });
});
