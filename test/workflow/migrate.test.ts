/**
 * Workflow logic of `migrateOwnership` on the time-skipping server, activities stubbed: the
 * happy path, approval timeout, abort after each mutating step, each mutating step failing,
 * cancel during the Jobs — in every case the compensations run in reverse order and the
 * policies are re-enforced.
 */
import { fileURLToPath } from 'node:url';
import { ApplicationFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { temporal } from '@temporalio/proto';
import { SearchAttribute } from '../../src/names.js';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import type { Activities } from '../../activities/index.js';
import type { MigrationInputRaw } from '../../src/input.js';
import type { MigrationPlan } from '../../src/plan.js';
import type { RelaxationRecord } from '../../src/policy.js';
import {
  abortSignal,
  approveSignal,
  statusQuery,
  type MigrationReport,
  type MigrationStatus,
} from '../../workflows/messages.js';

let env: TestWorkflowEnvironment;
const workflowsPath = fileURLToPath(new URL('../../workflows/index.ts', import.meta.url));

beforeAll(async () => {
  env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: inject('timeSkippingServer') } },
  });
  // The workflow indexes runs by these; the dev server registers them at start, this one by call.
  await env.connection.operatorService.addSearchAttributes({
    namespace: 'default',
    searchAttributes: {
      [SearchAttribute.TargetNamespace]: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
      [SearchAttribute.Phase]: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    },
  });
});
afterAll(async () => {
  await env?.teardown();
});

const record: RelaxationRecord = {
  version: 1,
  owner: { workflowId: 'w', runId: 'r' },
  snapshot: {
    namespace: 'itrs',
    namespaceResourceVersion: '1',
    takenAt: '2026-01-01T00:00:00Z',
    podSecurity: {
      'pod-security.kubernetes.io/enforce': 'restricted',
      'pod-security.kubernetes.io/enforce-version': null,
      'pod-security.kubernetes.io/warn': null,
      'pod-security.kubernetes.io/warn-version': null,
      'pod-security.kubernetes.io/audit': null,
      'pod-security.kubernetes.io/audit-version': null,
    },
    constraints: [],
    skipped: [],
  },
  plan: { podSecurityEnforce: 'baseline', constraints: [] },
};

const job = (sts: string, ordinal: number) => ({
  name: `runas-migrate-${sts}-${ordinal}`,
  statefulSet: sts,
  ordinal,
  image: 'img',
  volumes: [{ volume: 'data', claimName: `data-${sts}-${ordinal}`, mountPath: '/var/lib/postgresql' }],
});

const plan = (preflight: string[] = []): MigrationPlan => ({
  namespace: 'itrs',
  uid: 5000,
  gid: 5000,
  supplementalGroups: [5000],
  databases: [
    {
      statefulSet: 'pgplatform',
      container: 'postgres',
      image: 'img',
      replicas: 1,
      currentIds: { runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, supplementalGroups: [] },
      jobs: [job('pgplatform', 0)],
    },
    {
      statefulSet: 'timescale',
      container: 'timescale',
      image: 'img',
      replicas: 2,
      currentIds: { runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, supplementalGroups: [] },
      jobs: [job('timescale', 0), job('timescale', 1)],
    },
  ],
  platform: {
    group: 'g',
    version: 'v1',
    plural: 'p',
    name: 'n',
    statusPath: 'status.status',
    ready: 'DEPLOYED',
    status: 'DEPLOYED',
  },
  policies: record,
  preflight,
});

interface Scenario {
  input?: Partial<MigrationInputRaw>;
  /** Activity whose first call fails (non-retryable). */
  failAt?: string;
  /** Activity during whose first call the run is aborted (signal) or cancelled. */
  interrupt?: { during: string; by: 'abort' | 'cancel' };
  /** Outcomes of waitForJobs per call: false = failed. */
  jobResults?: boolean[][];
  preflight?: string[];
  /** Called right after the start (signals sent before the run waits). */
  onStart?: (handle: WorkflowHandle) => Promise<void>;
}

/** Runs a scenario; returns the activity calls (with a short argument) in order and the outcome. */
async function run(
  s: Scenario,
): Promise<{ calls: string[]; result?: MigrationReport; error?: Error; status: MigrationStatus }> {
  const calls: string[] = [];
  const taskQueue = `q-${Math.random().toString(36).slice(2)}`;
  let handle!: WorkflowHandle;
  let waitForJobsCall = 0;
  const seen = new Set<string>();
  let interrupt: 'idle' | 'sent' | 'done' = 'idle';
  const stub =
    <T>(name: string, result: (arg: never) => T, label?: (arg: never) => string) =>
    async (arg: never): Promise<T> => {
      calls.push(label ? `${name}(${label(arg)})` : name);
      const first = !seen.has(name);
      seen.add(name);
      if (first && s.failAt === name)
        throw ApplicationFailure.nonRetryable(`${name} failed on purpose`, 'Injected');
      // Every call of the step that starts before the interrupt is handled blocks, so no sibling
      // completes while the cancel is in flight (the time-skipping server rejects that race).
      if (s.interrupt?.during === name && interrupt !== 'done') {
        const sender = interrupt === 'idle';
        if (sender) {
          interrupt = 'sent';
          if (s.interrupt.by === 'cancel') await handle.cancel();
          else await handle.signal(abortSignal, { reason: `abort during ${name}`, by: 'test' });
        }
        try {
          for (const until = Date.now() + 10_000; Date.now() < until;) {
            Context.current().heartbeat();
            await Context.current().sleep(100);
            if (!sender && (interrupt as string) === 'done') return result(arg);
          }
          throw new Error(`${name} was never cancelled`);
        } finally {
          if (sender) interrupt = 'done';
        }
      }
      return result(arg);
    };
  const sts = (a: { statefulSet: string }) => a.statefulSet;
  const activities: Partial<Record<keyof Activities, unknown>> = {
    planMigration: stub('planMigration', () => plan(s.preflight)),
    readPodIds: stub(
      'readPodIds',
      () => ({ runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, supplementalGroups: null }),
      sts,
    ),
    patchPodIds: stub(
      'patchPodIds',
      () => undefined,
      (a: { statefulSet: string; ids: { runAsUser: number } }) => `${a.statefulSet}:${a.ids.runAsUser}`,
    ),
    verifySecurityContext: stub('verifySecurityContext', () => []),
    scaleDown: stub('scaleDown', () => undefined, sts),
    relaxPolicies: stub('relaxPolicies', () => ({
      record,
      relaxedAt: new Date().toISOString(),
      deletedConstraints: [],
      resumed: false,
      apiCalls: 1,
    })),
    createOwnershipJobs: stub(
      'createOwnershipJobs',
      (a: { targets: { name: string }[] }) => a.targets.map((t) => ({ name: t.name, uid: `uid-${t.name}` })),
      (a: { targets: unknown[] }) => String(a.targets.length),
    ),
    waitForPodsAdmitted: stub('waitForPodsAdmitted', (a: { jobs: { name: string }[] }) => ({
      admitted: a.jobs.map((j) => ({ job: j.name, pod: `${j.name}-x`, createdAt: new Date().toISOString() })),
      refused: [],
      timedOut: false,
    })),
    waitForJobs: stub('waitForJobs', (a: { jobs: { name: string }[] }) => {
      const results = s.jobResults?.[waitForJobsCall++];
      return a.jobs.map((j, i) => ({
        name: j.name,
        succeeded: results?.[i] ?? true,
        summary: {
          ok: results?.[i] ?? true,
          uid: 5000,
          gid: 5000,
          scanned: 10,
          changed: 10,
          seconds: 0.1,
          paths: [{ path: '/var/lib/postgresql', skipped: false, scanned: 10, changed: 10 }],
        },
        message: results?.[i] === false ? 'BackoffLimitExceeded (exit 1)' : 'completed',
      }));
    }),
    restorePolicies: stub('restorePolicies', () => ({
      namespace: 'itrs',
      restored: true,
      owner: record.owner,
      podSecurity: 'restored',
      constraints: [],
      keptForeignChanges: [],
      restoredAt: new Date().toISOString(),
      apiCalls: 1,
    })),
    deleteOwnershipJobs: stub('deleteOwnershipJobs', () => []),
    scaleUp: stub(
      'scaleUp',
      () => undefined,
      (a: { statefulSet: string; replicas: number }) => `${a.statefulSet}:${a.replicas}`,
    ),
    waitForPlatform: stub('waitForPlatform', () => 'DEPLOYED'),
    verifyDatabases: stub('verifyDatabases', () => []),
  };
  const worker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue,
    workflowsPath,
    activities,
  });
  const input: MigrationInputRaw = {
    namespace: 'itrs',
    uid: 5000,
    gid: 5000,
    approvals: [],
    securityContext: { apply: 'patch' },
    ...s.input,
  };
  return worker.runUntil(async () => {
    handle = await env.client.workflow.start('migrateOwnership', {
      taskQueue,
      workflowId: `runas-migrate-${taskQueue}`,
      args: [input],
    });
    await s.onStart?.(handle);
    // Queries need a worker to replay: ask while this one still runs.
    try {
      const result = (await handle.result()) as MigrationReport;
      return { calls, result, status: await handle.query(statusQuery) };
    } catch (err) {
      return { calls, error: err as Error, status: await handle.query(statusQuery) };
    }
  });
}

/** Parallel steps (scaling) run in any order: sort each run of the same activity. */
const inOrder = (calls: string[]) => {
  const out: string[] = [];
  for (let i = 0; i < calls.length;) {
    const name = calls[i]!.split('(')[0];
    let j = i;
    while (
      j < calls.length &&
      calls[j]!.split('(')[0] === name &&
      (name === 'scaleDown' || name === 'scaleUp')
    )
      j++;
    if (j === i) j = i + 1;
    out.push(...calls.slice(i, j).sort());
    i = j;
  }
  return out;
};

/** The deepest cause: what an activity or the workflow itself threw. */
const root = (e: Error | undefined): Error | undefined => {
  let c = e;
  while (c && (c as { cause?: Error }).cause) c = (c as { cause?: Error }).cause;
  return c;
};

const cause = (e: Error | undefined) => (e instanceof WorkflowFailedError ? e.cause : e);

const forward = [
  'planMigration',
  'readPodIds(pgplatform)',
  'patchPodIds(pgplatform:5000)',
  'readPodIds(timescale)',
  'patchPodIds(timescale:5000)',
  'verifySecurityContext',
  'scaleDown(pgplatform)',
  'scaleDown(timescale)',
  'relaxPolicies',
  'createOwnershipJobs(3)',
  'waitForPodsAdmitted',
  'restorePolicies',
  'waitForJobs',
  'deleteOwnershipJobs',
  'scaleUp(pgplatform:1)',
  'scaleUp(timescale:2)',
  'waitForPlatform',
  'verifyDatabases',
];

describe('migrateOwnership', () => {
  it('runs every phase in order and re-enforces as soon as the pods are admitted', async () => {
    const { calls, result, status } = await run({});
    expect(inOrder(calls)).toEqual(forward);
    expect(result?.jobs.map((j) => j.name)).toEqual([
      'runas-migrate-pgplatform-0',
      'runas-migrate-timescale-0',
      'runas-migrate-timescale-1',
    ]);
    expect(result?.windows).toHaveLength(1);
    expect(result?.windows[0]?.closedBecause).toBe('every migration pod admitted');
    expect(status.phase).toBe('completed');
    expect(status.policies.state).toBe('restored');
  });

  it('re-enforces only after the Jobs in job-duration mode', async () => {
    const { calls } = await run({ input: { window: { mode: 'job-duration' } } });
    expect(calls.slice(9, 12)).toEqual(['createOwnershipJobs(3)', 'waitForJobs', 'restorePolicies']);
    expect(calls).not.toContain('waitForPodsAdmitted');
  });

  it('waits for each approval, records who gave it, and ignores approvals of gates it does not have', async () => {
    const { calls, result, status } = await run({
      input: { approvals: ['plan', 'relax'] },
      onStart: async (h) => {
        await h.signal(approveSignal, { gate: 'plan', by: 'alice', comment: 'change CHG-1' });
        await h.signal(approveSignal, { gate: 'plan', by: 'mallory' });
        await h.signal(approveSignal, { gate: 'deploy', by: 'bob' });
        await h.signal(approveSignal, { gate: 'relax', by: 'bob' });
      },
    });
    expect(inOrder(calls)).toEqual(forward);
    expect(result?.approvals.filter((a) => a.required).map((a) => [a.gate, a.state, a.by])).toEqual([
      ['plan', 'approved', 'alice'],
      ['relax', 'approved', 'bob'],
    ]);
    expect(status.rejectedSignals).toEqual([
      'approve for gate "plan": already approved',
      'approve for gate "deploy": not a gate of this run (plan, relax)',
    ]);
  });

  it('fails at the approval timeout, changing nothing', async () => {
    const { calls, error } = await run({ input: { approvals: ['plan'], approvalTimeout: '1h' } });
    expect(cause(error)).toMatchObject({ type: 'ApprovalTimedOut' });
    expect(calls).toEqual(['planMigration']);
  });

  it('stops at preflight and in a dry run before any change', async () => {
    const refused = await run({
      preflight: ['K8sPSPAllowedUsers/x: runAsUser 5000 is outside the allowed ranges 1000-2000'],
    });
    expect(cause(refused.error)).toMatchObject({ type: 'PreflightFailed' });
    expect(refused.calls).toEqual(['planMigration']);
    const dry = await run({ input: { dryRun: true } });
    expect(dry.calls).toEqual(['planMigration']);
    expect(dry.result?.dryRun).toBe(true);
  });

  it('refuses a bad input before any activity, naming the field', async () => {
    const { calls, error } = await run({ input: { uid: 0 } });
    expect(cause(error)).toMatchObject({ type: 'InvalidInput' });
    expect(cause(error)?.message).toMatch(/uid: must be at least 1/);
    expect(calls).toEqual([]);
  });

  const undoAfterPatch = ['patchPodIds(timescale:1000)', 'patchPodIds(pgplatform:1000)'];
  const undoAfterScale = ['scaleUp(timescale:2)', 'scaleUp(pgplatform:1)', ...undoAfterPatch];
  const undoAfterRelax = ['restorePolicies', 'deleteOwnershipJobs', ...undoAfterScale];

  const failures: [string, string[]][] = [
    ['patchPodIds', ['patchPodIds(pgplatform:1000)']],
    ['scaleDown', undoAfterScale],
    ['relaxPolicies', undoAfterRelax],
    ['createOwnershipJobs', undoAfterRelax],
    ['waitForJobs', ['deleteOwnershipJobs', ...undoAfterScale]],
  ];
  for (const [step, undo] of failures) {
    it(`compensates in reverse when ${step} fails`, async () => {
      const { calls, error, status } = await run({ failAt: step });
      expect(root(error)?.message).toContain(`${step} failed on purpose`);
      expect(calls.slice(-undo.length)).toEqual(undo);
      expect(status.phase).toBe('failed');
      // every registered compensation ran, the last registered first
      expect(status.compensations.at(0)).toBe(
        { patchPodIds: 'restore securityContext of pgplatform', scaleDown: 'scale timescale back to 2' }[
          step
        ] ?? 're-enforce the policies',
      );
      expect(['enforced', 'restored']).toContain(status.policies.state);
    });
  }

  const mutating = ['patchPodIds', 'scaleDown', 'relaxPolicies', 'createOwnershipJobs'];
  const aborts: [string, string[]][] = [
    ['planMigration', []],
    ['patchPodIds', ['patchPodIds(pgplatform:1000)']],
    ['scaleDown', undoAfterScale],
    ['relaxPolicies', undoAfterRelax],
    ['createOwnershipJobs', undoAfterRelax],
    ['waitForJobs', ['deleteOwnershipJobs', ...undoAfterScale]],
  ];
  for (const [step, undo] of aborts) {
    it(`aborts during ${step}: compensations in reverse, policies enforced`, async () => {
      const { calls, error, status } = await run({ interrupt: { during: step, by: 'abort' } });
      expect(cause(error)).toMatchObject({ type: 'Aborted' });
      expect(cause(error)?.message).toContain(`abort during ${step} (by test)`);
      expect(status.phase).toBe('aborted');
      expect(['enforced', 'restored']).toContain(status.policies.state);
      if (undo.length) expect(calls.slice(-undo.length)).toEqual(undo);
      if (step === 'planMigration')
        expect(calls.filter((c) => mutating.some((m) => c.startsWith(m)))).toEqual([]);
      if (step === 'relaxPolicies' || step === 'waitForJobs')
        expect(calls.filter((c) => c === 'restorePolicies').length).toBeGreaterThan(0);
    });
  }

  it('re-enforces and cleans up when cancelled during the Jobs', async () => {
    const { calls, error, status } = await run({
      interrupt: { during: 'waitForJobs', by: 'cancel' },
      input: { window: { mode: 'job-duration' } },
    });
    expect(error).toBeInstanceOf(WorkflowFailedError);
    const at = calls.indexOf('waitForJobs');
    expect(calls.slice(at + 1)).toEqual(['restorePolicies', 'deleteOwnershipJobs', ...undoAfterScale]);
    expect(status.policies.state).toBe('restored');
  });

  it('runs a failed Job again under a fresh window, then fails cleanly when it fails again', async () => {
    const retried = await run({ jobResults: [[true, false, true], [true]] });
    expect(retried.result?.windows).toHaveLength(2);
    expect(retried.calls.filter((c) => c.startsWith('createOwnershipJobs'))).toEqual([
      'createOwnershipJobs(3)',
      'createOwnershipJobs(1)',
    ]);
    expect(retried.calls.filter((c) => c === 'relaxPolicies')).toHaveLength(2);

    const failed = await run({ jobResults: [[true, false, true], [false]] });
    expect(cause(failed.error)).toMatchObject({ type: 'OwnershipJobFailed' });
    expect(cause(failed.error)?.message).toContain('runas-migrate-timescale-0: BackoffLimitExceeded');
    const last = failed.calls.lastIndexOf('waitForJobs');
    // admission mode: the second window closed as soon as its pod was admitted
    expect(failed.calls.slice(last - 2, last)).toEqual(['waitForPodsAdmitted', 'restorePolicies']);
    expect(failed.calls.slice(last + 1)).toEqual(['deleteOwnershipJobs', ...undoAfterScale]);
  });
});
