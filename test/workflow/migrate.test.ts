/**
 * Workflow logic of `migrateOwnership` on the time-skipping server, activities stubbed: the
 * happy path, gates, the namespace lock, timeouts, and every way a run can stop — each one ends
 * in a documented state with the policies re-enforced, and the stubs model the files and the
 * template so that a database started on files it does not own fails the test.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { temporal } from '@temporalio/proto';
import { SearchAttribute } from '../../src/core/names.js';
import { historyToJSON } from '../support/histories.js';
import { bundleWorkflowCode, DefaultLogger, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import type { Activities } from '../../src/activities/index.js';
import { defaultsInForce } from '../../src/core/guardrails.js';
import type { MigrationInputRaw } from '../../src/core/input.js';
import type { MigrationPlan } from '../../src/core/plan.js';
import type { RelaxationRecord } from '../../src/core/policy.js';
import type { CheckResult } from '../../src/core/verification.js';
import {
  abortSignal,
  approveSignal,
  statusQuery,
  type MigrationReport,
  type MigrationStatus,
} from '../../src/workflows/messages.js';

let env: TestWorkflowEnvironment;
const workflowsPath = fileURLToPath(new URL('../../src/workflows/index.ts', import.meta.url));
const historiesDir = fileURLToPath(new URL('../histories', import.meta.url));

/** Bundled once for the file: every scenario's worker shares it (a bundle takes seconds). */
let workflowBundle: Awaited<ReturnType<typeof bundleWorkflowCode>>;

beforeAll(async () => {
  [env, workflowBundle] = await Promise.all([
    TestWorkflowEnvironment.createTimeSkipping({
      server: { executable: { type: 'existing-path', path: inject('timeSkippingServer') } },
    }),
    bundleWorkflowCode({ workflowsPath, logger: new DefaultLogger('WARN') }),
  ]);
  // The workflow indexes runs by these; the dev server registers them at start, this one by call.
  await env.connection.operatorService.addSearchAttributes({
    namespace: 'default',
    searchAttributes: {
      [SearchAttribute.TargetNamespace]: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
      [SearchAttribute.Phase]: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
      [SearchAttribute.PhaseSince]: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    },
  });
}, 120_000);
afterAll(async () => {
  await env?.teardown();
});

const record: RelaxationRecord = {
  version: 2,
  temporalNamespace: 'default',
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
  interrupt?: { during: string; by: 'abort' | 'cancel'; completes?: boolean };
  /** Outcomes of waitForJobs per call: false = failed. */
  jobResults?: boolean[][];
  preflight?: string[];
  /** The second plan (after the approvals), when it differs. */
  replan?: MigrationPlan;
  /** An approval sent with the start: delivered before the workflow function runs. */
  approveWithStart?: { gate: string; by: string };
  /** Called right after the start (signals sent before the run waits). */
  onStart?: (handle: WorkflowHandle) => Promise<void>;
  /** Saves the run's history under test/histories/<name>.json when RUNAS_MIGRATE_RECORD_HISTORIES=1. */
  record?: string;
  /** Extra checks inside a stub: return a problem to record. */
  inspect?: Partial<Record<string, (arg: never) => string | undefined>>;
  /** A check of a replica that fails, with what it saw. */
  failingCheck?: { pod: string; check: string; output: string };
  /** A violation Gatekeeper's audit lists in the namespace after the run. */
  auditViolation?: { kind: string; name: string; message: string };
  /**
   * Gatekeeper's audit ends only once this step has been called (as an audit pass that takes
   * longer than the checks): it heartbeats until then, and records "auditNamespace cancelled"
   * when it is cancelled instead.
   */
  auditUntil?: string;
}

interface Outcome {
  calls: string[];
  result?: MigrationReport;
  error?: Error;
  status: MigrationStatus;
  /** Databases started on files they do not own, as the stubs saw them. */
  violations: string[];
  /** Who owns each StatefulSet's files at the end: "1000", "5000" or "mixed". */
  files: Record<string, string>;
  template: Record<string, number>;
}

/** Runs a scenario; returns the activity calls (with a short argument) in order and the outcome. */
async function run(s: Scenario): Promise<Outcome> {
  const calls: string[] = [];
  const violations: string[] = [];
  const taskQueue = `q-${Math.random().toString(36).slice(2)}`;
  let handle!: WorkflowHandle;
  let waitForJobsCall = 0;
  let planCall = 0;
  const seen = new Set<string>();
  let interrupt: 'idle' | 'sent' | 'done' = 'idle';
  // The cluster as the stubs model it: each StatefulSet's template IDs, each Job's target IDs,
  // and who owns each replica's files.
  const template: Record<string, number> = { pgplatform: 1000, timescale: 1000 };
  const files: Record<string, number> = {
    'runas-migrate-pgplatform-0': 1000,
    'runas-migrate-timescale-0': 1000,
    'runas-migrate-timescale-1': 1000,
  };
  const jobIds = new Map<string, number>();
  const stub =
    <T>(name: string, result: (arg: never) => T, label?: (arg: never) => string) =>
    async (arg: never): Promise<T> => {
      calls.push(label ? `${name}(${label(arg)})` : name);
      const problem = s.inspect?.[name]?.(arg);
      if (problem) violations.push(problem);
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
        } catch (err) {
          // A short step that does not look at cancellation finishes its work and reports it.
          if (s.interrupt.completes) return result(arg);
          throw err;
        } finally {
          if (sender) interrupt = 'done';
        }
      }
      return result(arg);
    };
  const sts = (a: { statefulSet: string }) => a.statefulSet;
  const jobsOf = (statefulSet: string) => Object.keys(files).filter((j) => j.includes(`-${statefulSet}-`));
  const owners = (statefulSet: string) => new Set(jobsOf(statefulSet).map((j) => files[j]));
  const activities: Partial<Record<keyof Activities, unknown>> = {
    checkGuardrails: stub('checkGuardrails', () => defaultsInForce('runas-migrate')),
    acquireNamespaceLock: stub('acquireNamespaceLock', () => ({ tookOverFrom: null })),
    releaseNamespaceLock: stub('releaseNamespaceLock', () => true),
    planMigration: stub('planMigration', () =>
      planCall++ === 0 || !s.replan ? plan(s.preflight) : s.replan,
    ),
    readPodIds: stub(
      'readPodIds',
      (a: { statefulSet: string }) => ({
        runAsUser: template[a.statefulSet],
        runAsGroup: template[a.statefulSet],
        fsGroup: template[a.statefulSet],
        supplementalGroups: null,
      }),
      sts,
    ),
    patchPodIds: stub(
      'patchPodIds',
      (a: { statefulSet: string; ids: { runAsUser: number } }) =>
        void (template[a.statefulSet] = a.ids.runAsUser),
      (a: { statefulSet: string; ids: { runAsUser: number } }) => `${a.statefulSet}:${a.ids.runAsUser}`,
    ),
    // The release renders both StatefulSets: an upgrade sets both, a rollback puts both back.
    readHelmRelease: stub('readHelmRelease', () => ({
      release: 'iax',
      revision: 3,
      status: 'deployed',
      chart: 'c-1',
    })),
    helmUpgrade: stub('helmUpgrade', (a: { uid: number }) => {
      for (const k of Object.keys(template)) template[k] = a.uid;
      return { release: 'iax', revision: 4, status: 'deployed', chart: 'c-1', values: 'v' };
    }),
    helmRollback: stub(
      'helmRollback',
      () => {
        for (const k of Object.keys(template)) template[k] = 1000;
        return { release: 'iax', revision: 5, status: 'deployed', chart: 'c-1' };
      },
      (a: { revision: number }) => String(a.revision),
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
      (a: { run: { uid: number }; targets: { name: string }[] }) =>
        a.targets.map((t) => {
          jobIds.set(t.name, a.run.uid);
          return { name: t.name, uid: `uid-${t.name}` };
        }),
      (a: { targets: unknown[] }) => String(a.targets.length),
    ),
    findOwnershipJobs: stub('findOwnershipJobs', () =>
      [...jobIds.keys()].map((name) => ({ name, uid: `uid-${name}` })),
    ),
    waitForPodsAdmitted: stub('waitForPodsAdmitted', (a: { jobs: { name: string }[] }) => ({
      admitted: a.jobs.map((j) => ({ job: j.name, pod: `${j.name}-x`, createdAt: new Date().toISOString() })),
      refused: [],
      timedOut: false,
    })),
    waitForJobs: stub('waitForJobs', (a: { jobs: { name: string }[] }) => {
      const results = s.jobResults?.[waitForJobsCall++];
      return a.jobs.map((j, i) => {
        const ok = results?.[i] ?? true;
        const uid = jobIds.get(j.name)!;
        // A failed Job has changed some files: its replica's files are mixed.
        files[j.name] = ok ? uid : -1;
        return {
          name: j.name,
          succeeded: ok,
          summary: {
            ok,
            uid,
            gid: uid,
            scanned: 10,
            changed: 10,
            seconds: 0.1,
            paths: [{ path: '/var/lib/postgresql', skipped: false, scanned: 10, changed: 10 }],
          },
          message: ok ? 'completed' : 'BackoffLimitExceeded (exit 1)',
        };
      });
    }),
    restorePolicies: stub('restorePolicies', () => ({
      namespace: 'itrs',
      restored: true,
      owner: record.owner,
      podSecurity: 'restored',
      constraints: [],
      keptForeignChanges: [],
      alarms: [],
      refused: null,
      source: 'run-copy',
      restoredAt: new Date().toISOString(),
      apiCalls: 1,
    })),
    deleteOwnershipJobs: stub('deleteOwnershipJobs', () => []),
    scaleUp: stub(
      'scaleUp',
      (a: { statefulSet: string }) => {
        const o = owners(a.statefulSet);
        if (o.size !== 1 || !o.has(template[a.statefulSet]))
          violations.push(
            `${a.statefulSet} started as ${template[a.statefulSet]} on files of ${[...o].join(', ')}`,
          );
      },
      (a: { statefulSet: string; replicas: number }) => `${a.statefulSet}:${a.replicas}`,
    ),
    waitForPlatform: stub('waitForPlatform', () => 'DEPLOYED'),
    verifyDatabases: stub('verifyDatabases', () => []),
    auditNamespace: stub('auditNamespace', async (a: { namespace: string }) => {
      if (s.auditUntil) {
        try {
          for (const until = Date.now() + 10_000; !calls.includes(s.auditUntil);) {
            if (Date.now() > until) throw new Error(`${s.auditUntil} never ran while the audit waited`);
            Context.current().heartbeat();
            await Context.current().sleep(100);
          }
        } catch (err) {
          if (err instanceof CancelledFailure) calls.push('auditNamespace cancelled');
          throw err;
        }
      }
      return {
        namespace: a.namespace,
        state: s.auditViolation ? 'violations' : 'clean',
        constraints: [
          {
            constraint: 'K8sPSPAllowedUsers/allowed-user-ranges',
            auditTimestamp: new Date().toISOString(),
            violations: s.auditViolation ? [s.auditViolation] : [],
            totalViolations: s.auditViolation ? 1 : 0,
            complete: true,
          },
        ],
        waitedMs: 1,
      };
    }),
    checkDatabases: stub(
      'checkDatabases',
      (a: { databases: { statefulSet: string }[]; settings: { checks: CheckResult['check'][] } }) =>
        a.databases.flatMap((d) =>
          Object.keys(files)
            .filter((job) => job.startsWith(`runas-migrate-${d.statefulSet}-`))
            .map((job) => job.replace('runas-migrate-', ''))
            .flatMap((pod) =>
              a.settings.checks.map((check): CheckResult => {
                const failing = s.failingCheck?.pod === pod && s.failingCheck.check === check;
                return { pod, check, ok: !failing, output: failing ? s.failingCheck!.output : 'ok', ms: 1 };
              }),
            ),
        ),
    ),
  };
  const worker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue,
    workflowBundle,
    activities,
    maxHeartbeatThrottleInterval: '200 milliseconds',
  });
  const input: MigrationInputRaw = {
    namespace: 'itrs',
    uid: 5000,
    gid: 5000,
    approvals: [],
    securityContext: { apply: 'patch' },
    ...s.input,
  };
  const fileOwners = () =>
    Object.fromEntries(
      ['pgplatform', 'timescale'].map((n) => {
        const o = owners(n);
        return [n, o.size === 1 && !o.has(-1) ? String([...o][0]) : 'mixed'];
      }),
    );
  return worker.runUntil(async () => {
    const options = { taskQueue, workflowId: `runas-migrate-${taskQueue}`, args: [input] };
    handle = s.approveWithStart
      ? await env.client.workflow.signalWithStart('migrateOwnership', {
          ...options,
          signal: approveSignal,
          signalArgs: [s.approveWithStart],
        })
      : await env.client.workflow.start('migrateOwnership', options);
    await s.onStart?.(handle);
    // Queries need a worker to replay: ask while this one still runs.
    const done = { calls, violations, template, files: {} as Record<string, string> };
    let outcome: Outcome;
    try {
      const result = (await handle.result()) as MigrationReport;
      outcome = { ...done, result, status: await handle.query(statusQuery), files: fileOwners() };
    } catch (err) {
      outcome = {
        ...done,
        error: err as Error,
        status: await handle.query(statusQuery),
        files: fileOwners(),
      };
    }
    if (s.record && process.env.RUNAS_MIGRATE_RECORD_HISTORIES === '1')
      writeFileSync(join(historiesDir, `${s.record}.json`), historyToJSON(await handle.fetchHistory()));
    return outcome;
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
  // Gatekeeper's audit starts with the steps after the scale-up, in either order: moved to right
  // after it, only when it did start after it.
  const audit = out.indexOf('auditNamespace');
  const scaledUp = out.map((c) => c.startsWith('scaleUp')).lastIndexOf(true);
  if (audit > scaledUp && scaledUp >= 0) out.splice(scaledUp + 1, 0, ...out.splice(audit, 1));
  return out;
};

/** The deepest cause: what an activity or the workflow itself threw. */
const root = (e: Error | undefined): Error | undefined => {
  let c = e;
  while (c && (c as { cause?: Error }).cause) c = (c as { cause?: Error }).cause;
  return c;
};

const cause = (e: Error | undefined) => (e instanceof WorkflowFailedError ? e.cause : e);

const untilGateWaits = async (h: WorkflowHandle, gate: string) => {
  for (let i = 0; i < 200; i++) {
    const st = await h.query(statusQuery);
    if (st.gates.find((g) => g.gate === gate)?.state === 'waiting') return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gate ${gate} never waited`);
};

const forward = [
  'checkGuardrails',
  'acquireNamespaceLock',
  'planMigration',
  'scaleDown(pgplatform)',
  'scaleDown(timescale)',
  'readPodIds(pgplatform)',
  'patchPodIds(pgplatform:5000)',
  'readPodIds(timescale)',
  'patchPodIds(timescale:5000)',
  'verifySecurityContext',
  'relaxPolicies',
  'createOwnershipJobs(3)',
  'waitForPodsAdmitted',
  'restorePolicies',
  'waitForJobs',
  'deleteOwnershipJobs',
  'scaleUp(pgplatform:1)',
  'scaleUp(timescale:2)',
  'auditNamespace',
  'waitForPlatform',
  'verifyDatabases',
  'checkDatabases',
  'releaseNamespaceLock',
];
const allNew = { pgplatform: '5000', timescale: '5000' };
const allOld = { pgplatform: '1000', timescale: '1000' };

describe('migrateOwnership', () => {
  it('runs every phase in order, scaled down before the template changes, and re-enforces as soon as the pods are admitted', async () => {
    const { calls, result, status, violations, files } = await run({ record: 'completed' });
    expect(inOrder(calls)).toEqual(forward);
    expect(result?.jobs.map((j) => j.name)).toEqual([
      'runas-migrate-pgplatform-0',
      'runas-migrate-timescale-0',
      'runas-migrate-timescale-1',
    ]);
    expect(result?.windows).toHaveLength(1);
    expect(result?.windows[0]?.closedBecause).toBe('every migration pod admitted');
    expect(result?.endState).toBe('completed');
    expect(status.phase).toBe('completed');
    expect(status.policies.state).toBe('restored');
    expect(violations).toEqual([]);
    expect(files).toEqual(allNew);
  });

  it('re-enforces only after the Jobs in job-duration mode', async () => {
    const { calls } = await run({ input: { window: { mode: 'job-duration' } } });
    const at = calls.indexOf('createOwnershipJobs(3)');
    expect(calls.slice(at, at + 3)).toEqual(['createOwnershipJobs(3)', 'waitForJobs', 'restorePolicies']);
    expect(calls).not.toContain('waitForPodsAdmitted');
  });

  it('judges an approval sent with the start against the gates of the run', async () => {
    const { result, status } = await run({
      input: { approvals: ['relax'] },
      approveWithStart: { gate: 'relax', by: 'eve' },
      onStart: async (h) => {
        await untilGateWaits(h, 'relax');
        await h.signal(approveSignal, { gate: 'relax', by: 'bob' });
      },
    });
    expect(status.rejectedSignals).toEqual([
      'approve for gate "relax": not reached yet (the run is validating): approve it when the status shows it waiting',
    ]);
    expect(result?.approvals.find((a) => a.gate === 'relax')?.by).toBe('bob');
  });

  it('takes approvals only for a gate it waits at, records who gave them, and plans again after the last gate', async () => {
    const { calls, result, status } = await run({
      record: 'approved-gates',
      input: { approvals: ['plan', 'relax'] },
      onStart: async (h) => {
        await h.signal(approveSignal, { gate: 'relax', by: 'eve' });
        await untilGateWaits(h, 'plan');
        await h.signal(approveSignal, { gate: 'plan', by: 'alice', comment: 'change CHG-1' });
        await h.signal(approveSignal, { gate: 'plan', by: 'mallory' });
        await h.signal(approveSignal, { gate: 'deploy', by: 'bob' });
        await untilGateWaits(h, 'relax');
        await h.signal(approveSignal, { gate: 'relax', by: 'bob' });
      },
    });
    const replanned = [...forward];
    replanned.splice(forward.indexOf('relaxPolicies'), 0, 'planMigration');
    expect(inOrder(calls)).toEqual(replanned);
    expect(result?.approvals.filter((a) => a.required).map((a) => [a.gate, a.state, a.by])).toEqual([
      ['plan', 'approved', 'alice'],
      ['relax', 'approved', 'bob'],
    ]);
    expect(status.rejectedSignals[0]).toMatch(
      /^approve for gate "relax": not reached yet \(the run is (validating|planning)\): approve it when the status shows it waiting$/,
    );
    expect(status.rejectedSignals.slice(1)).toEqual([
      'approve for gate "plan": already approved',
      'approve for gate "deploy": not a gate of this run (plan, relax)',
    ]);
  });

  it('stops before relaxing when the cluster changed during the approvals, and puts everything back', async () => {
    const changed = plan();
    changed.databases[1]!.replicas = 3;
    changed.databases[1]!.jobs.push(job('timescale', 2));
    const { calls, error, status, violations } = await run({
      input: { approvals: ['relax'] },
      replan: changed,
      onStart: async (h) => {
        await untilGateWaits(h, 'relax');
        await h.signal(approveSignal, { gate: 'relax', by: 'bob' });
      },
    });
    expect(cause(error)).toMatchObject({ type: 'PlanChanged' });
    expect(cause(error)?.message).toContain('timescale: replicas 2 → 3');
    expect(cause(error)?.message).toContain('new Job runas-migrate-timescale-2');
    expect(calls).not.toContain('relaxPolicies');
    expect(status.endState).toBe('unchanged');
    expect(violations).toEqual([]);
  });

  it('fails at the approval timeout, changing nothing but its lock', async () => {
    const { calls, error, status } = await run({ input: { approvals: ['plan'], approvalTimeout: '1h' } });
    expect(cause(error)).toMatchObject({ type: 'ApprovalTimedOut' });
    expect(calls).toEqual([
      'checkGuardrails',
      'acquireNamespaceLock',
      'planMigration',
      'releaseNamespaceLock',
    ]);
    expect(status.endState).toBe('unchanged');
  });

  it('refuses cleanly while another run holds the namespace', async () => {
    const { calls, error } = await run({ failAt: 'acquireNamespaceLock' });
    expect(root(error)?.message).toContain('acquireNamespaceLock failed on purpose');
    expect(calls).toEqual(['checkGuardrails', 'acquireNamespaceLock']);
  });

  it("stops at the worker's guardrails before the lock or any change", async () => {
    const { calls, error, status } = await run({ failAt: 'checkGuardrails' });
    expect(root(error)?.message).toContain('checkGuardrails failed on purpose');
    expect(calls).toEqual(['checkGuardrails']);
    expect(status.endState).toBe('unchanged');
  });

  it('reports nothing to do when every StatefulSet already runs as the target IDs', async () => {
    const { calls, result, status } = await run({
      input: { uid: 1000, gid: 1000, approvals: ['plan', 'relax'] },
    });
    expect(calls).toEqual([
      'checkGuardrails',
      'acquireNamespaceLock',
      'planMigration',
      'releaseNamespaceLock',
    ]);
    expect(result?.endState).toBe('unchanged');
    expect(result?.nothingToDo).toBe('every StatefulSet of itrs already runs as 1000:1000: nothing to do');
    expect(result?.guardrails?.source).toBe('defaults');
    expect(status.windows).toEqual([]);
  });

  it('stops at preflight and in a dry run before any change', async () => {
    const refused = await run({
      preflight: ['K8sPSPAllowedUsers/x: runAsUser 5000 is outside the allowed ranges 1000-2000'],
    });
    expect(cause(refused.error)).toMatchObject({ type: 'PreflightFailed' });
    expect(refused.calls).toEqual([
      'checkGuardrails',
      'acquireNamespaceLock',
      'planMigration',
      'releaseNamespaceLock',
    ]);
    const dry = await run({ input: { dryRun: true } });
    expect(dry.calls).toEqual(['checkGuardrails', 'planMigration']);
    expect(dry.result?.dryRun).toBe(true);
  });

  it('refuses a bad input before any activity, naming the field', async () => {
    const { calls, error } = await run({ input: { uid: 0 } });
    expect(cause(error)).toMatchObject({ type: 'InvalidInput' });
    expect(cause(error)?.message).toMatch(/uid: must be at least 1/);
    expect(calls).toEqual([]);
    // A field this worker does not know, in an input a newer CLI accepted.
    const newer = await run({ input: { maxOpenWindows: 2 } as never });
    expect(cause(newer.error)?.message).toMatch(
      /unknown field\(s\) maxOpenWindows: remove them.*older than that CLI/,
    );
    expect(newer.calls).toEqual([]);
    const rollBack = await run({ input: { recovery: 'roll-back', securityContext: { apply: 'external' } } });
    expect(cause(rollBack.error)?.message).toContain('recovery: roll-back puts the old template back itself');
    expect(rollBack.calls).toEqual([]);
  });

  // Before any Job: the template is put back before anything starts.
  for (const step of ['scaleDown', 'patchPodIds', 'verifySecurityContext', 'relaxPolicies']) {
    for (const by of ['fails', 'abort'] as const) {
      it(`${by === 'fails' ? 'fails' : 'is aborted'} during ${step}: unchanged, template back before scale-up`, async () => {
        const { calls, error, status, violations, files, template } = await run(
          by === 'fails' ? { failAt: step } : { interrupt: { during: step, by: 'abort' } },
        );
        expect(error).toBeDefined();
        expect(status.endState).toBe('unchanged');
        expect(status.phase).toBe(by === 'fails' ? 'failed' : 'aborted');
        expect(violations).toEqual([]);
        expect(files).toEqual(allOld);
        expect(template).toEqual({ pgplatform: 1000, timescale: 1000 });
        expect(calls.filter((c) => c.startsWith('scaleUp')).sort()).toEqual([
          'scaleUp(pgplatform:1)',
          'scaleUp(timescale:2)',
        ]);
        expect(calls).not.toContain('createOwnershipJobs(3)');
        expect(calls.at(-1)).toBe('releaseNamespaceLock');
        expect(['enforced', 'restored']).toContain(status.policies.state);
      });
    }
  }

  const helmMode: MigrationInputRaw['securityContext'] = {
    apply: 'helm',
    helm: { release: 'iax', chart: 'itrs/iax-platform' },
  };

  it('upgrades the Helm release after reading the revision a rollback returns to', async () => {
    const { calls, result } = await run({ input: { securityContext: helmMode } });
    const at = calls.indexOf('readHelmRelease');
    expect(calls.slice(at, at + 3)).toEqual(['readHelmRelease', 'helmUpgrade', 'verifySecurityContext']);
    expect(calls).not.toContain('patchPodIds(pgplatform:5000)');
    expect(calls.some((c) => c.startsWith('helmRollback'))).toBe(false);
    expect(result?.helm).toMatchObject({
      release: 'iax',
      revisionBefore: 3,
      upgradedTo: 4,
      rolledBackTo: null,
    });
  });

  for (const step of ['verifySecurityContext', 'relaxPolicies']) {
    it(`is aborted during ${step} after the Helm upgrade: the release rolled back before any scale-up`, async () => {
      const { calls, status, violations, files, template } = await run({
        input: { securityContext: helmMode },
        interrupt: { during: step, by: 'abort' },
      });
      expect(status.endState).toBe('unchanged');
      expect(violations).toEqual([]);
      expect(files).toEqual(allOld);
      expect(template).toEqual({ pgplatform: 1000, timescale: 1000 });
      const rollback = calls.indexOf('helmRollback(3)');
      expect(rollback).toBeGreaterThan(calls.indexOf('helmUpgrade'));
      expect(calls.filter((c) => c.startsWith('helmRollback'))).toEqual(['helmRollback(3)']);
      expect(calls.findIndex((c) => c.startsWith('scaleUp'))).toBeGreaterThan(rollback);
      expect(status.helm).toMatchObject({ revisionBefore: 3, upgradedTo: 4, rolledBackTo: 5 });
      expect(status.compensations).toContain('roll back helm release iax to revision 3');
    });
  }

  it('is aborted while planning: nothing to undo', async () => {
    const { calls, status } = await run({ interrupt: { during: 'planMigration', by: 'abort' } });
    expect(calls).toEqual([
      'checkGuardrails',
      'acquireNamespaceLock',
      'planMigration',
      'releaseNamespaceLock',
    ]);
    expect(status.endState).toBe('unchanged');
  });

  // After the Jobs started: roll forward (default) finishes the change.
  it('ends VerificationFailed naming the replica, the check and what it saw, every check kept as evidence', async () => {
    const seen = 'heap table "iax.public.metrics_1", block 0: could not open file: Permission denied';
    const { error, status, files } = await run({
      failingCheck: { pod: 'timescale-1', check: 'deep', output: seen },
    });
    expect(cause(error)).toMatchObject({ type: 'VerificationFailed' });
    expect(cause(error)?.message).toContain(`timescale-1: deep check failed: ${seen}`);
    expect(status.databaseChecks).toHaveLength(3 * 5);
    expect(status.databaseChecks.filter((r) => !r.ok)).toEqual([
      expect.objectContaining({ pod: 'timescale-1', check: 'deep', output: seen }),
    ]);
    expect(files).toEqual(allNew);
    expect(status.policies.state).toBe('restored');
    // The files and templates are new and the databases run: what the data-path end states call rolled forward.
    expect(status.endState).toBe('rolled-forward');
  });

  it('runs only the checks the input names, and none when it names none', async () => {
    const some = await run({ input: { verify: { checks: ['identity', 'sql'] } } });
    expect(some.result?.databaseChecks.map((r) => `${r.pod}:${r.check}`)).toEqual([
      'pgplatform-0:identity',
      'pgplatform-0:sql',
      'timescale-0:identity',
      'timescale-0:sql',
      'timescale-1:identity',
      'timescale-1:sql',
    ]);
    const none = await run({ input: { verify: { checks: [] } } });
    expect(none.calls).not.toContain('checkDatabases');
    expect(none.result?.databaseChecks).toEqual([]);
  });

  it("fails verification when Gatekeeper's audit finds a migrated database's pod in violation; another pod's is an alarm", async () => {
    const message = 'container <timescale> runs with runAsUser 5000, outside the allowed ranges 1000-4999';
    const theirs = await run({ auditViolation: { kind: 'Pod', name: 'timescale-1', message } });
    expect(cause(theirs.error)).toMatchObject({ type: 'VerificationFailed' });
    expect(cause(theirs.error)?.message).toContain(
      `Gatekeeper's audit: K8sPSPAllowedUsers/allowed-user-ranges finds Pod timescale-1: ${message}`,
    );
    expect(theirs.status.gatekeeperAudit?.state).toBe('violations');
    expect(theirs.status.policies.state).toBe('restored');

    const other = await run({ auditViolation: { kind: 'Pod', name: 'someone-elses-debug-pod', message } });
    expect(other.error).toBeUndefined();
    expect(other.status.alarms.join('\n')).toContain('finds Pod someone-elses-debug-pod');

    const off = await run({ input: { verify: { audit: false } } });
    expect(off.calls).not.toContain('auditNamespace');
  });

  it("runs Gatekeeper's audit alongside the checks once the databases are up, not after them", async () => {
    // The audit ends only once the checks have run: run one after the other, this run would hang.
    const { calls, error, result } = await run({ auditUntil: 'checkDatabases', record: 'audit-alongside' });
    expect(error).toBeUndefined();
    expect(calls.indexOf('auditNamespace')).toBeGreaterThan(calls.indexOf('scaleUp(timescale:2)'));
    expect(calls.indexOf('auditNamespace')).toBeLessThan(calls.indexOf('checkDatabases'));
    expect(result?.gatekeeperAudit?.state).toBe('clean');
    expect(result?.endState).toBe('completed');
  });

  it('cancels the audit and awaits its end when a check fails, before anything else happens', async () => {
    const { calls, error, status } = await run({ auditUntil: 'never', failAt: 'verifyDatabases' });
    expect(root(error)?.message).toContain('verifyDatabases failed on purpose');
    const cancelled = calls.indexOf('auditNamespace cancelled');
    expect(cancelled).toBeGreaterThan(calls.indexOf('verifyDatabases'));
    // Nothing after the failure ran before the audit had ended.
    expect(calls.slice(cancelled + 1)).toEqual(['releaseNamespaceLock']);
    expect(calls.slice(calls.indexOf('verifyDatabases') + 1, cancelled)).toEqual([]);
    expect(status.policies.state).toBe('restored');
  });

  for (const [during, by, completes] of [
    ['createOwnershipJobs', 'abort', true],
    ['waitForPodsAdmitted', 'abort', false],
    ['waitForJobs', 'abort', false],
    ['waitForJobs', 'cancel', false],
  ] as const) {
    it(`rolls forward when ${by === 'abort' ? 'aborted' : 'cancelled'} during ${during}`, async () => {
      const { calls, error, status, violations, files } = await run({
        interrupt: { during, by, completes },
        record: `rolled-forward-${by}-${during}`,
      });
      expect(error).toBeInstanceOf(WorkflowFailedError);
      expect(status.endState).toBe('rolled-forward');
      expect(violations).toEqual([]);
      expect(files).toEqual(allNew);
      const settled = calls.slice(calls.indexOf(during) + 1);
      // the running Jobs are waited for, deleted, and only then the databases start
      expect(settled.indexOf('deleteOwnershipJobs')).toBeLessThan(
        settled.findIndex((c) => c.startsWith('scaleUp')),
      );
      expect(settled.filter((c) => c === 'waitForJobs')).toHaveLength(1);
      expect(status.policies.state).toBe('restored');
    });
  }

  it('rolls back when asked: reverse Jobs under a fresh window, then the old template, then scale-up', async () => {
    const { calls, status, violations, files, template, error } = await run({
      interrupt: { during: 'waitForJobs', by: 'abort' },
      input: { recovery: 'roll-back' },
      record: 'rolled-back',
    });
    expect(cause(error)).toMatchObject({ type: 'Aborted' });
    expect(status.endState).toBe('rolled-back');
    expect(violations).toEqual([]);
    expect(files).toEqual(allOld);
    expect(template).toEqual({ pgplatform: 1000, timescale: 1000 });
    expect(status.windows).toHaveLength(3); // the forward one and one per reverse round
    expect(status.rollbackJobs.map((j) => j.state)).toEqual(['succeeded', 'succeeded', 'succeeded']);
    const settled = calls.slice(calls.indexOf('waitForJobs') + 1);
    expect(settled.filter((c) => c.startsWith('createOwnershipJobs'))).toEqual([
      'createOwnershipJobs(1)',
      'createOwnershipJobs(2)',
    ]);
    expect(settled.lastIndexOf('patchPodIds(timescale:1000)')).toBeLessThan(
      settled.findIndex((c) => c.startsWith('scaleUp')),
    );
  });

  it('rolls back a Helm release after the reverse Jobs, before scale-up', async () => {
    const { calls, status, violations, files, template } = await run({
      interrupt: { during: 'waitForJobs', by: 'abort' },
      input: { recovery: 'roll-back', securityContext: helmMode },
    });
    expect(status.endState).toBe('rolled-back');
    expect(violations).toEqual([]);
    expect(files).toEqual(allOld);
    expect(template).toEqual({ pgplatform: 1000, timescale: 1000 });
    const settled = calls.slice(calls.indexOf('waitForJobs') + 1);
    const rollback = settled.indexOf('helmRollback(3)');
    expect(rollback).toBeGreaterThan(settled.lastIndexOf('waitForJobs'));
    expect(rollback).toBeLessThan(settled.findIndex((c) => c.startsWith('scaleUp')));
    expect(settled.filter((c) => c.startsWith('helmRollback'))).toHaveLength(1);
  });

  it('runs a failed Job again under a fresh window; when it fails for good the databases stay down and the status says what is left', async () => {
    const retried = await run({ jobResults: [[true, false, true], [true]] });
    expect(retried.result?.windows).toHaveLength(2);
    expect(retried.calls.filter((c) => c.startsWith('createOwnershipJobs'))).toEqual([
      'createOwnershipJobs(3)',
      'createOwnershipJobs(1)',
    ]);
    expect(retried.files).toEqual(allNew);

    const failed = await run({ jobResults: [[true, false, true], [false]], record: 'stopped-scaled-down' });
    expect(cause(failed.error)).toMatchObject({ type: 'OwnershipJobFailed' });
    expect(cause(failed.error)?.message).toContain('runas-migrate-timescale-0: BackoffLimitExceeded');
    expect(failed.status.endState).toBe('stopped-scaled-down');
    expect(failed.calls.filter((c) => c.startsWith('scaleUp'))).toEqual([]);
    expect(failed.status.leftToDo.join(' ')).toContain('runas-migrate-timescale-0 (failed');
    expect(failed.status.leftToDo.join(' ')).toContain('start the run again with the same input');
    expect(failed.violations).toEqual([]);
    expect(failed.calls.at(-1)).toBe('releaseNamespaceLock');

    const rolledBack = await run({
      jobResults: [[true, false, true], [false]],
      input: { recovery: 'roll-back' },
    });
    expect(rolledBack.status.endState).toBe('rolled-back');
    expect(rolledBack.files).toEqual(allOld);
    expect(rolledBack.violations).toEqual([]);
  });

  it('gives a long Job its whole job.timeout and an absolute deadline, whatever the heartbeat timeout', async () => {
    const seen: { startToClose?: number; deadline?: string; at?: number } = {};
    const { result } = await run({
      input: { job: { timeout: '6h' }, heartbeatTimeout: '2s' },
      inspect: {
        waitForJobs: (a: { deadline: string }) => {
          seen.startToClose = Context.current().info.startToCloseTimeoutMs;
          seen.deadline = a.deadline;
          seen.at = Context.current().info.currentAttemptScheduledTimestampMs;
          return undefined;
        },
      },
    });
    expect(result?.endState).toBe('completed');
    expect(seen.startToClose).toBeGreaterThanOrEqual(6 * 3_600_000);
    const left = Date.parse(seen.deadline!) - seen.at!;
    expect(left).toBeGreaterThanOrEqual(6 * 3_600_000 - 5_000);
    expect(left).toBeLessThanOrEqual(6 * 3_600_000 + 5 * 60_000);
  });
});
