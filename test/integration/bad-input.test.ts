/**
 * The bad-input table: inputs and situations an operator can get wrong, each run through the
 * interfaces an operator uses — the `runas-migrate` CLI and the plain `temporal` CLI straight to
 * the `migrateOwnership` workflow — against the test bed. Each must fail with a message that
 * names the field or object and the fix, and leave the namespace exactly as it was (labels,
 * annotations, constraints, StatefulSets, claims, Jobs and the owner of every file).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AppsV1Api,
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  RbacAuthorizationV1Api,
  setHeaderOptions,
  type V1PolicyRule,
} from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInputRaw } from '../../src/core/input.js';
import { PodSecurityLabel } from '../../src/core/policy.js';
import { createWorker, sweeperScheduleId } from '../../src/app/worker.js';
import { Gatekeeper, IaxPlatform } from '../../testbed/fixture.js';
import { HostRunnerPlacement } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import type { MigrationReport, MigrationStatus } from '../../src/workflows/messages.js';
import { bed, createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { namespaceSnapshot, readyFixture, removeFixtures } from '../support/snapshot.js';
import { outcome, runasMigrate as runasMigrateAt, type Outcome } from '../support/cli.js';
import { approveWithCli, startMigrationWithCli, temporalCli } from '../support/temporal.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';
import { podAdmissionPolicy } from '../support/admission-policy.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const apps = kc.makeApiClient(AppsV1Api);
const rbac = kc.makeApiClient(RbacAuthorizationV1Api);

/** Shared by every case that cannot change anything. */
const namespace = uniqueName('badin');
/** Created without any pod-security label. */
const unlabelled = uniqueName('badin-nopsa');
/** One replica's claim deleted. */
const claimGone = uniqueName('badin-claim');
/** Never created. */
const absent = uniqueName('badin-absent');
/** Never the target of a run. */
const noRun = uniqueName('badin-norun');
const taskQueue = uniqueName('badinput');
const cleanups: (() => Promise<unknown>)[] = [];
let worker: TestWorker;

/** Changes nothing even when a case is wrongly accepted: a dry run with no gate to wait at. */
const valid: MigrationInputRaw = { namespace, uid: 5000, gid: 5000, approvals: [], dryRun: true };

/** `runas-migrate …` as the operator types it, against the test bed. */
const runasMigrate = (args: string[], kubeconfig = bed().kubeconfig): Promise<Outcome> =>
  runasMigrateAt(args, { KUBECONFIG: kubeconfig, TEMPORAL_UI: '' });

/** `temporal …` against the test bed, without throwing on a non-zero exit. */
const temporal = (args: string[]): Promise<Outcome> =>
  outcome(temporalCli(args).then((stdout) => ({ stdout, stderr: '' })));

interface FailureJson {
  message: string;
  applicationFailureInfo?: { type?: string };
  cause?: FailureJson;
}

/** How a run ended: its status and the messages of its failure chain, outermost first. */
interface RunEnd {
  status: string;
  messages: string[];
  type: string | undefined;
  /** What a completed run returned. */
  result?: MigrationReport;
}

/** An empty list in what the `temporal` CLI prints, which shows one as null. */
const none = (list: unknown[] | null | undefined) =>
  list === null || (Array.isArray(list) && list.length === 0);

async function runEnd(workflowId: string): Promise<RunEnd> {
  const r = await temporal(['workflow', 'result', '-w', workflowId, '-o', 'json']);
  const out = JSON.parse(r.stdout) as {
    status: string;
    result?: MigrationReport;
    closeEvent: { workflowExecutionFailedEventAttributes?: { failure: FailureJson } };
  };
  const messages: string[] = [];
  let type: string | undefined;
  for (let f = out.closeEvent.workflowExecutionFailedEventAttributes?.failure; f; f = f.cause) {
    messages.push(f.message);
    type = f.applicationFailureInfo?.type ?? type;
  }
  return { status: out.status, messages, type, ...(out.result ? { result: out.result } : {}) };
}

/** Starts `migrateOwnership` straight through the `temporal` CLI (no input when undefined) and waits for its end. */
async function throughTemporal(input: unknown): Promise<RunEnd> {
  const workflowId = uniqueName('badinput-run');
  await startMigrationWithCli(taskQueue, workflowId, input === undefined ? {} : { input });
  return runEnd(workflowId);
}

const snapshot = (ns = namespace) => namespaceSnapshot(kc, ns, bed().pvRoot);

/** Runs `step` and asserts that the namespace is exactly as before it. */
async function unchanged<T>(step: () => Promise<T>, ns = namespace): Promise<T> {
  const before = await snapshot(ns);
  const result = await step();
  expect(await snapshot(ns)).toEqual(before);
  return result;
}

async function status(ns = namespace): Promise<MigrationStatus> {
  const out = JSON.parse(
    await temporalCli(['workflow', 'query', '-w', `runas-migrate-${ns}`, '--type', 'status', '-o', 'json']),
  ) as { queryResult: [MigrationStatus] };
  return out.queryResult[0];
}

/** A kubeconfig file for a ServiceAccount that may do only what `rules` allow. */
async function limitedKubeconfig(name: string, rules: V1PolicyRule[]): Promise<string> {
  await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
  const role = `${namespace}-${name}`;
  await rbac.createClusterRole({ body: { metadata: { name: role }, rules } });
  await rbac.createClusterRoleBinding({
    body: {
      metadata: { name: role },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
  });
  cleanups.push(
    () => rbac.deleteClusterRoleBinding({ name: role }),
    () => rbac.deleteClusterRole({ name: role }),
  );
  const token = await core.createNamespacedServiceAccountToken({
    name,
    namespace,
    body: { spec: { audiences: [], expirationSeconds: 600 } },
  });
  const limited = new KubeConfig();
  const cluster = kc.getCurrentCluster()!;
  limited.loadFromOptions({
    clusters: [cluster],
    users: [{ name, token: token.status!.token }],
    contexts: [{ name, cluster: cluster.name, user: name }],
    currentContext: name,
  });
  const file = join(mkdtempSync(join(tmpdir(), 'kubeconfig-')), 'config');
  writeFileSync(file, limited.exportConfig());
  return file;
}

beforeAll(async () => {
  // Pod-security labels are set only when the fixture creates the namespace itself.
  await createNamespace(kc, unlabelled);
  await Promise.all([
    readyFixture(kc, namespace, bed().pvRoot, 5),
    readyFixture(kc, unlabelled, bed().pvRoot, 5),
    readyFixture(kc, claimGone, bed().pvRoot, 5),
  ]);
  // A claim can go only once no pod uses it: replica 1 is scaled away first.
  await apps.patchNamespacedStatefulSet(
    { name: 'timescale', namespace: claimGone, body: { spec: { replicas: 1 } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
  );
  await core.deleteNamespacedPersistentVolumeClaim({
    name: 'timescale-ha-wal-timescale-1',
    namespace: claimGone,
  });
  await waitFor(
    'claim gone',
    () =>
      core
        .readNamespacedPersistentVolumeClaim({ name: 'timescale-ha-wal-timescale-1', namespace: claimGone })
        .then(
          () => false,
          () => true,
        ),
    60_000,
  );
  worker = await startTestWorker(taskQueue);
});

afterAll(async () => {
  await worker?.stop();
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await removeFixtures(kc, [namespace, unlabelled, claimGone]);
});

/** An input the schema refuses, and what the refusal must say. */
interface InputCase {
  title: string;
  input: unknown;
  message: RegExp[];
  /** Also through `runas-migrate start`, whose validation is the same function: a sample suffices. */
  cli?: true;
}

const validWith = (extra: Record<string, unknown>) => ({ ...valid, ...extra });

const inputCases: InputCase[] = [
  {
    title: 'uid 0',
    cli: true,
    input: validWith({ uid: 0 }),
    message: [/uid: must be at least 1: 0 would run the databases as root/],
  },
  {
    title: 'gid 0',
    input: validWith({ gid: 0 }),
    message: [/gid: must be at least 1: 0 would run the databases as root/],
  },
  {
    title: 'a negative gid',
    input: validWith({ gid: -5 }),
    message: [/gid: must be at least 1: -5 is not a valid ID/],
  },
  {
    title: 'a uid that is not whole',
    input: validWith({ uid: 5000.5 }),
    message: [/uid: must be a whole number/],
  },
  {
    title: 'a uid above 2147483647',
    input: validWith({ uid: 2147483648 }),
    message: [/uid: must be at most 2147483647/],
  },
  {
    title: 'a gid as a string',
    input: validWith({ gid: '5000' }),
    message: [/gid: must be a number, not "5000"/],
  },
  {
    title: 'no uid',
    input: { namespace, gid: 5000, approvals: [], dryRun: true },
    message: [/uid: must be a number \(it is missing\): give the user ID/],
  },
  {
    title: 'a namespace in capitals',
    cli: true,
    input: validWith({ namespace: 'ITRS' }),
    message: [/namespace: must be a Kubernetes name: lowercase letters, digits and "-"/],
  },
  {
    title: 'a namespace longer than 63 characters',
    input: validWith({ namespace: 'a'.repeat(64) }),
    message: [/namespace: must be at most 63 characters/],
  },
  {
    title: 'a namespace with an underscore',
    input: validWith({ namespace: 'itrs_db' }),
    message: [/namespace: must be a Kubernetes name/],
  },
  {
    title: 'an unknown profile',
    input: validWith({ profile: 'oracle' }),
    message: [/profile: profile must be "itrs-analytics" \(or give "databases"\)/],
  },
  {
    title: 'both a profile and databases',
    input: validWith({
      profile: 'itrs-analytics',
      databases: [{ statefulSet: 'pgplatform', container: 'postgres' }],
    }),
    message: [/profile: give either profile or databases, not both/],
  },
  {
    title: 'an unknown field',
    cli: true,
    input: validWith({ uuid: 5000 }),
    message: [/unknown field\(s\) uuid: remove them/],
  },
  {
    title: 'window.max "5 parsecs"',
    cli: true,
    input: validWith({ window: { max: '5 parsecs' } }),
    message: [
      /window\.max: .*must be a positive duration such as "90s", "15m", "24h" or "2d", not "5 parsecs"/,
    ],
  },
  {
    title: 'a zero approvalTimeout',
    input: validWith({ approvalTimeout: '0s' }),
    message: [/approvalTimeout: .*must be a positive duration .*not "0s"/],
  },
  {
    title: 'a gate listed twice',
    cli: true,
    input: validWith({ approvals: ['plan', 'plan'] }),
    message: [/approvals: lists a gate more than once: name each gate once/],
  },
  {
    title: 'an unknown gate',
    input: validWith({ approvals: ['deploy'] }),
    message: [/approvals\.0: .*"plan"\|"relax"/],
  },
  {
    title: 'helm without its release and chart',
    input: validWith({ securityContext: { apply: 'helm' } }),
    message: [
      /securityContext\.helm: securityContext\.helm \{release, chart\} is required when apply is "helm"/,
    ],
  },
  {
    title: 'a relaxation to restricted',
    input: validWith({ policies: { podSecurity: 'restricted' } }),
    message: [/policies\.podSecurity: .*"baseline"\|"privileged"/],
  },
  {
    title: 'a supplemental group 0',
    input: validWith({ supplementalGroups: [5000, 0] }),
    message: [/supplementalGroups\.1: must be at least 1: 0 would run the databases as root/],
  },
  {
    title: 'an input that is not an object',
    cli: true,
    input: namespace,
    message: [/\(input\): must be an object such as \{"namespace": "itrs", "uid": 5000, "gid": 5000\}/],
  },
  {
    title: 'several problems at once',
    cli: true,
    input: { namespace: 'Itrs', uid: 0, gid: -1, window: { mode: 'forever' } },
    message: [
      /namespace: must be a Kubernetes name/,
      /uid: must be at least 1/,
      /gid: must be at least 1/,
      /window\.mode: /,
    ],
  },
];

describe.concurrent('inputs the schema refuses, at both edges', () => {
  it.each(inputCases.filter((c) => c.cli))(
    '$title: runas-migrate start refuses it before any run exists',
    async ({ input, message }) => {
      const r = await unchanged(() =>
        runasMigrate(['start', '--input', JSON.stringify(input), '--task-queue', taskQueue]),
      );
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^runas-migrate: invalid input: /);
      for (const m of message) expect(r.stderr).toMatch(m);
      expect(r.stdout).not.toContain('started');
    },
  );

  it.each(inputCases)(
    '$title: the workflow started by the temporal CLI fails, not retryable',
    async ({ input, message }) => {
      const end = await unchanged(() => throughTemporal(input));
      expect(end.status).toBe('FAILED');
      expect(end.type).toBe('InvalidInput');
      for (const m of message) expect(end.messages[0]).toMatch(m);
    },
  );

  it('no input at all: the workflow says what an input looks like', async () => {
    const end = await unchanged(() => throughTemporal(undefined));
    expect(end).toMatchObject({ status: 'FAILED', type: 'InvalidInput' });
    expect(end.messages[0]).toMatch(/\(input\): must be an object such as \{"namespace": .*\}, not nothing/);
  });

  const cliCases: [string, string[], RegExp][] = [
    [
      'a --uid that is not a number',
      ['-n', namespace, '--uid', 'abc', '--gid', '5000'],
      /invalid input: uid: must be a number, got "abc"/,
    ],
    [
      '--input that is not JSON',
      ['--input', '{"namespace": "itrs"'],
      /invalid input: --input is not valid JSON/,
    ],
    [
      'an input file that does not exist',
      ['-f', '/nonexistent/run.json'],
      /cannot read the input file \/nonexistent\/run\.json: no such file/,
    ],
  ];
  it.each(cliCases)('%s: runas-migrate plan names the flag or file', async (_, args, message) => {
    const r = await unchanged(() => runasMigrate(['plan', ...args]));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });
});

/** A valid input naming something the cluster does not hold, and what the refusal must say. */
interface PlanningCase {
  title: string;
  input: MigrationInputRaw;
  /** The namespace that must stay as it was. */
  watched: string;
  message: RegExp;
  /** The failure type the run ends with. */
  type: string;
}

const planningCases: PlanningCase[] = [
  {
    title: 'a namespace that does not exist',
    input: { ...valid, namespace: absent },
    watched: namespace,
    type: 'KubeNotFound',
    message: new RegExp(
      `namespace "${absent}" not found while trying to get it \\(HTTP 404\\)\\. Fix: check its name`,
    ),
  },
  {
    title: 'a StatefulSet that does not exist',
    input: { ...valid, databases: [{ statefulSet: 'mysql', container: 'db' }] },
    watched: namespace,
    type: 'PlanningFailed',
    message: new RegExp(
      `StatefulSet mysql not found in namespace ${namespace}: fix the profile or databases\\[\\]\\.statefulSet`,
    ),
  },
  {
    title: 'a container the StatefulSet does not have',
    input: { ...valid, databases: [{ statefulSet: 'pgplatform', container: 'pg' }] },
    watched: namespace,
    type: 'PlanningFailed',
    message:
      /StatefulSet pgplatform has no container "pg" \(it has: postgres\): fix databases\[\]\.container/,
  },
  {
    title: 'a volume the container does not mount',
    input: { ...valid, databases: [{ statefulSet: 'pgplatform', container: 'postgres', volumes: ['wal'] }] },
    watched: namespace,
    type: 'PlanningFailed',
    message:
      /StatefulSet pgplatform: container "postgres" mounts no claim template "wal" \(it mounts: data\): fix databases\[\]\.volumes/,
  },
  {
    title: 'a replica whose claim is gone',
    input: { ...valid, namespace: claimGone },
    watched: claimGone,
    type: 'PlanningFailed',
    message:
      /replica 1 of StatefulSet timescale has no PersistentVolumeClaim timescale-ha-wal-timescale-1: restore it or scale the StatefulSet first/,
  },
];

describe.concurrent('what the input names must exist', () => {
  it.each(planningCases)('$title: runas-migrate plan names it', async ({ input, watched, message }) => {
    const r = await unchanged(() => runasMigrate(['plan', '--input', JSON.stringify(input)]), watched);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
  });

  it.each(planningCases)(
    '$title: the workflow started by the temporal CLI fails in planning with the same words',
    async ({ input, watched, message, type }) => {
      const end = await unchanged(() => throughTemporal(input), watched);
      expect(end).toMatchObject({ status: 'FAILED', type });
      expect(end.messages.at(-1)).toMatch(message);
    },
  );

  it('runas-migrate start --follow reports the reason, not the activity that carried it', async () => {
    const { input, watched, message } = planningCases.find((c) => c.watched === claimGone)!;
    const r = await unchanged(
      () => runasMigrate(['start', '--input', JSON.stringify(input), '--follow', '--task-queue', taskQueue]),
      watched,
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^runas-migrate: run failed: /);
    expect(r.stderr).not.toContain('Activity task failed');
    expect(r.stderr).toMatch(message);
  });

  it('the namespace that does not exist is still not there', async () => {
    await expect(core.readNamespace({ name: absent })).rejects.toMatchObject({ code: 404 });
  });
});

/** Valid inputs that ask for more than the worker's guardrails allow (the bed's worker: the defaults). */
const guardrailCases: [string, Partial<MigrationInputRaw>, string][] = [
  ['a three-day window', { window: { max: '72h' } }, 'window.max 72h is longer than maxWindow 15m'],
  ['kube-system as the target', { namespace: 'kube-system' }, 'namespace kube-system is never a target'],
  [
    'PSA relaxed to privileged',
    { policies: { podSecurity: 'privileged' } },
    'policies.podSecurity privileged relaxes more than maxPodSecurity baseline',
  ],
  [
    'a Job image of its own',
    { job: { image: 'busybox:latest' } },
    'job.image busybox:latest is not in jobImages []',
  ],
  [
    'a 30-day approval wait',
    { approvalTimeout: '30d' },
    'approvalTimeout 30d is longer than maxApprovalWait 24h',
  ],
];
const defaultsSource =
  'refused by the guardrails (defaults (no ConfigMap runas-migrate/runas-migrate-guardrails), version defaults)';

describe.concurrent("asking for more than the worker's guardrails", () => {
  it.each(guardrailCases)(
    '%s: the run fails before its lock, naming the guardrail and where it is set',
    async (_, extra, words) => {
      const end = await unchanged(() => throughTemporal({ ...valid, dryRun: false, ...extra }));
      expect(end).toMatchObject({ status: 'FAILED', type: 'GuardrailRefused' });
      expect(end.messages[0]).toContain(words);
      expect(end.messages[0]).toContain(defaultsSource);
    },
  );
  it.each(guardrailCases)(
    '%s: runas-migrate plan shows the guardrails and refuses, exit 3',
    async (_, extra, words) => {
      const r = await unchanged(() =>
        runasMigrate(['plan', '--input', JSON.stringify({ ...valid, ...extra })]),
      );
      expect(r.code).toBe(3);
      expect(r.stdout).toContain('Guardrails from defaults');
      expect(r.stdout).toContain(`REFUSED by the guardrails:`);
      expect(r.stdout).toContain(words);
    },
  );
});

const preflightCases: [string, Partial<MigrationInputRaw>, RegExp][] = [
  [
    'uid and gid below the allowed range',
    { uid: 500, gid: 500 },
    /K8sPSPAllowedUsers\/allowed-user-ranges: runAsUser 500 is outside the allowed ranges 1000-65535: the databases would be refused at scale-up; choose IDs inside them or change the constraint/,
  ],
  [
    'a supplemental group above the allowed range',
    { supplementalGroups: [70000] },
    /K8sPSPAllowedUsers\/allowed-user-ranges: supplementalGroups 70000 is outside the allowed ranges 1000-65535/,
  ],
];

describe.concurrent('IDs the re-enforced policies would refuse (preflight)', () => {
  it.each(preflightCases.slice(0, 1))(
    '%s: runas-migrate plan exits 3 naming constraint and range',
    async (_, ids, message) => {
      const r = await unchanged(() =>
        runasMigrate(['plan', '--input', JSON.stringify({ ...valid, ...ids })]),
      );
      expect(r.code).toBe(3);
      expect(r.stdout).toContain('PREFLIGHT FAILED');
      expect(r.stdout).toMatch(message);
    },
  );

  it.each(preflightCases)('%s: the workflow fails PreflightFailed', async (_, ids, message) => {
    const end = await unchanged(() => throughTemporal({ ...valid, ...ids }));
    expect(end).toMatchObject({ status: 'FAILED', type: 'PreflightFailed' });
    expect(end.messages[0]).toMatch(/^preflight failed: /);
    expect(end.messages[0]).toMatch(message);
  });
});

describe('policies in unusual states', () => {
  it('Gatekeeper left out of the run (policies.gatekeeper false): the dry run completes and plans no constraint', async () => {
    const input = { ...valid, policies: { gatekeeper: false } };
    const plan = await unchanged(() => runasMigrate(['plan', '--input', JSON.stringify(input)]));
    expect(plan.code).toBe(0);
    expect(plan.stdout).toMatch(/PSA enforce\s*│\s*restricted\s*│\s*baseline/);
    expect(plan.stdout).not.toMatch(/K8sPSP/);
    const end = await unchanged(() => throughTemporal(input));
    expect(end.status).toBe('COMPLETED');
    expect(end.result?.dryRun).toBe(true);
    expect(none(end.result?.plan.policies.snapshot.constraints)).toBe(true);
    expect(none(end.result?.plan.preflight)).toBe(true);
  });

  it('Gatekeeper left out of the run still judges the restarted pods: IDs outside its ranges fail preflight', async () => {
    const input = { ...valid, uid: 500, gid: 500, policies: { gatekeeper: false } };
    const end = await unchanged(() => throughTemporal(input));
    expect(end).toMatchObject({ status: 'FAILED', type: 'PreflightFailed' });
    expect(end.messages[0]).toMatch(/K8sPSPAllowedUsers\/allowed-user-ranges: runAsUser 500 is outside/);
  });

  it("a policy the planner does not model (a ValidatingAdmissionPolicy on uid 5000): the dry run of the databases' pods fails preflight, naming it", async () => {
    const name = uniqueName('no-uid-5000');
    const remove = await podAdmissionPolicy(
      kc,
      name,
      namespace,
      '!has(object.spec.securityContext) || !has(object.spec.securityContext.runAsUser) || object.spec.securityContext.runAsUser != 5000',
      'uid 5000 belongs to the backup agent here',
    );
    try {
      await expect
        .poll(
          async () => {
            const end = await unchanged(() => throughTemporal(valid));
            return end.status === 'FAILED' ? end.messages[0] : end.status;
          },
          { timeout: 60_000, interval: 1000 },
        )
        .toMatch(
          new RegExp(
            `StatefulSet pgplatform's pods would be refused with 5000:5000 under the policies enforced now: .*ValidatingAdmissionPolicy '${name}'.*uid 5000 belongs to the backup agent here`,
          ),
        );
    } finally {
      await remove();
    }
  });

  it('no pod-security label: the cluster default admits the Job pods, so the plan leaves PSA alone, and a dry run changes nothing', async () => {
    const input = { ...valid, namespace: unlabelled };
    const plan = await unchanged(() => runasMigrate(['plan', '--input', JSON.stringify(input)]), unlabelled);
    expect(plan.code).toBe(0);
    // The bed's PSA default (privileged) admits the Job pods: PSA is left alone.
    expect(plan.stdout).toMatch(/PSA enforce\s*│\s*\(absent\)\s*│\s*\(unchanged\)/);
    // The same plan for scripts: stdout is the plan object alone.
    const asJson = await runasMigrate(['plan', '--input', JSON.stringify(input), '--output', 'json']);
    expect(asJson.code).toBe(0);
    const planned = JSON.parse(asJson.stdout) as MigrationReport['plan'];
    expect(planned.policies.plan.podSecurityEnforce).toBeNull();
    expect(planned.jobPodsAdmission?.relaxation[0]).toBe(
      'Pod Security Admission: unchanged ((cluster default) admits the Job pods)',
    );
    expect(asJson.stderr).toContain('Guardrails');
    const end = await unchanged(() => throughTemporal(input), unlabelled);
    expect(end.status).toBe('COMPLETED');
    expect(end.result?.dryRun).toBe(true);
    expect(Object.values(end.result?.plan.policies.snapshot.podSecurity ?? { missing: 'snapshot' })).toEqual(
      Object.values(PodSecurityLabel).map(() => null),
    );
    expect(end.result?.plan.policies.plan.podSecurityEnforce).toBeNull();
  });

  it('no pod-security label: a full run completes and leaves the labels absent', async () => {
    const before = await snapshot(unlabelled);
    expect(Object.keys(before.policies.labels).filter((l) => l.startsWith('pod-security.'))).toEqual([]);
    const input: MigrationInputRaw = {
      namespace: unlabelled,
      uid: 5000,
      gid: 5000,
      approvals: [],
      securityContext: { apply: 'patch' },
      job: { ...HostRunnerPlacement },
    };
    const workflowId = `runas-migrate-${unlabelled}`;
    await startMigrationWithCli(taskQueue, workflowId, { input });
    const end = await runEnd(workflowId);
    expect(end).toMatchObject({ status: 'COMPLETED', messages: [] });
    expect((await status(unlabelled)).policies.lastRestore?.podSecurity).toBeDefined();
    await waitFor('Jobs deleted', async () => (await snapshot(unlabelled)).jobs.length === 0, 30_000);

    const after = await snapshot(unlabelled);
    // the policies came back exactly: no pod-security label, no relaxation record
    expect(after.policies).toEqual(before.policies);
    expect(after.policies.labels[PodSecurityLabel.Enforce]).toBeUndefined();
    expect(after.claims).toEqual(before.claims);
    expect(after.statefulSets.map((s) => [s.name, s.replicas, s.annotations])).toEqual(
      before.statefulSets.map((s) => [s.name, s.replicas, s.annotations]),
    );
    // and the migration did happen
    expect(new Set(Object.values(after.owners))).toEqual(new Set(['5000:5000']));
  });
});

describe('steering a run the wrong way', () => {
  const workflowId = `runas-migrate-${namespace}`;
  // Gate plan only and the securityContext applied externally: nothing in the cluster changes
  // before the operator signals securityContextApplied, which these cases never do.
  const waiting: MigrationInputRaw = { namespace, uid: 5000, gid: 5000, approvals: ['plan'] };
  let before: Awaited<ReturnType<typeof snapshot>>;

  beforeAll(async () => {
    before = await snapshot();
    const r = await runasMigrate(['start', '--input', JSON.stringify(waiting), '--task-queue', taskQueue]);
    expect(r.code).toBe(0);
    await waitFor(
      'gate plan waiting',
      async () => (await status()).gates[0]?.state === 'waiting',
      60_000,
      300,
    );
  });

  it('a second run on the same namespace: refused by runas-migrate start; the temporal CLI starts none', async () => {
    const r = await unchanged(() =>
      runasMigrate(['start', '--input', JSON.stringify(waiting), '--task-queue', taskQueue]),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `a run is already in progress for namespace ${namespace} (workflow ${workflowId}): follow it with "runas-migrate status -n ${namespace} --watch" or stop it with "runas-migrate abort -n ${namespace} --reason <why>"`,
    );
    const start = (...extra: string[]) =>
      temporal([
        'workflow',
        'start',
        '--type',
        'migrateOwnership',
        '--task-queue',
        taskQueue,
        '--workflow-id',
        workflowId,
        '--input',
        JSON.stringify({ ...waiting, uid: 6000, gid: 6000 }),
        ...extra,
      ]);
    const running = (
      JSON.parse(await temporalCli(['workflow', 'describe', '-w', workflowId, '-o', 'json'])) as {
        workflowExecutionInfo: { execution: { runId: string } };
      }
    ).workflowExecutionInfo.execution.runId;
    // Without --fail-existing the temporal CLI hands back the run in progress and drops the new input.
    const plain = await unchanged(() => start('-o', 'json'));
    expect(plain.code).toBe(0);
    expect((JSON.parse(plain.stdout) as { runId: string }).runId).toBe(running);
    const refused = await unchanged(() => start('--fail-existing'));
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/already (started|running|exists)/i);
    expect((await status()).plan).toMatchObject({ uid: 5000, gid: 5000 });
  });

  it('an approval for a gate the run does not have: the CLI names the gates, the workflow records the refusal', async () => {
    const r = await unchanged(() =>
      runasMigrate(['approve', '-n', namespace, '--gate', 'relax', '--by', 'alice']),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `the run of ${namespace} has no gate "relax": its gates are plan: approve one of those`,
    );
    await unchanged(() => approveWithCli(workflowId, { gate: 'deploy', by: 'alice' }));
    await waitFor(
      'refusal recorded',
      async () => (await status()).rejectedSignals.some((s) => s.includes('"deploy"')),
      30_000,
      300,
    );
    const s = await status();
    expect(s.rejectedSignals).toContain('approve for gate "deploy": not a gate of this run (plan)');
    expect(s.gates[0]).toMatchObject({ gate: 'plan', state: 'waiting' });
  });

  it('an approval given twice: the CLI says by whom and when, the workflow records the second as refused', async () => {
    // The approval lets the run go on: it scales the databases down and waits for the
    // securityContext (apply "external"), where nothing changes any more.
    const first = await runasMigrate(['approve', '-n', namespace, '--gate', 'plan', '--by', 'alice']);
    expect(first.code).toBe(0);
    await waitFor(
      'plan approved, the run waiting for the securityContext',
      async () => {
        const s = await status();
        return s.gates[0]?.state === 'approved' && s.phase === 'applying-security-context';
      },
      30_000,
      300,
    );
    const again = await unchanged(() =>
      runasMigrate(['approve', '-n', namespace, '--gate', 'plan', '--by', 'bob']),
    );
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(
      new RegExp(`gate "plan" of ${namespace} was already approved by alice at \\d{4}-`),
    );
    await unchanged(() => approveWithCli(workflowId, { gate: 'plan', by: 'bob' }));
    await waitFor(
      'second approval refused',
      async () => (await status()).rejectedSignals.includes('approve for gate "plan": already approved'),
      30_000,
      300,
    );
    expect((await status()).gates[0]).toMatchObject({ state: 'approved', by: 'alice' });
  });

  it('after an abort, approve and abort say the run has ended; the namespace is as it was', async () => {
    const aborted = await runasMigrate(['abort', '-n', namespace, '--reason', 'wrong IDs', '--by', 'alice']);
    expect(aborted.code).toBe(0);
    const end = await runEnd(workflowId);
    expect(end).toMatchObject({ status: 'FAILED', type: 'Aborted' });
    expect(end.messages[0]).toBe('run aborted: wrong IDs (by alice)');
    expect(await snapshot()).toEqual(before);

    const approve = await unchanged(() => runasMigrate(['approve', '-n', namespace, '--gate', 'plan']));
    expect(approve.code).toBe(1);
    expect(approve.stderr).toContain(
      `the run of ${namespace} (workflow ${workflowId}) has already ended (FAILED): there is nothing to approve`,
    );
    const abort = await unchanged(() => runasMigrate(['abort', '-n', namespace, '--reason', 'again']));
    expect(abort.code).toBe(1);
    expect(abort.stderr).toContain('has already ended (FAILED): there is nothing to abort');
    // The ended run's status, for scripts: the raw query result as JSON or YAML, the same object.
    const asJson = await runasMigrate(['status', '-n', namespace, '--output', 'json']);
    const asYaml = await runasMigrate(['status', '-n', namespace, '-o', 'yaml']);
    expect((JSON.parse(asJson.stdout) as MigrationStatus).phase).toBe('aborted');
    expect(parseYaml(asYaml.stdout)).toEqual(JSON.parse(asJson.stdout));
    const watched = await runasMigrate(['status', '-n', namespace, '--watch', '-o', 'json']);
    expect(watched.code).toBe(1);
    expect(watched.stderr).toContain('--watch redraws tables: leave out --output json');
    const signal = await unchanged(() =>
      temporal(['workflow', 'signal', '-w', workflowId, '--name', 'approve', '--input', '{"gate":"plan"}']),
    );
    expect(signal.code).not.toBe(0);
    expect(signal.stderr).toMatch(/already completed/i);
  });

  it('an approval for a namespace that has no run names it and says how to start one', async () => {
    const r = await runasMigrate(['approve', '-n', noRun, '--gate', 'plan']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `namespace ${noRun} has no run (no workflow runas-migrate-${noRun}): check the namespace (a fleet's run on a cluster is named with --cluster <cluster>), or start one with "runas-migrate start -n ${noRun}"`,
    );
  });

  it('a run named by its cluster is looked up by that workflow ID, and a bad cluster name changes nothing', async () => {
    const r = await runasMigrate(['abort', '-n', noRun, '--cluster', 'prod-eu', '--reason', 'test']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `namespace prod-eu/${noRun} has no run (no workflow runas-migrate-prod-eu.${noRun}): check the namespace and the cluster, or start one with "runas-migrate start -n ${noRun} --cluster prod-eu"`,
    );
    const bad = await runasMigrate(['status', '-n', noRun, '--cluster', 'Prod_EU']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('--cluster "Prod_EU": must be lowercase letters');
    const both = await runasMigrate(['status', '--fleet', 'f', '--cluster', 'prod-eu']);
    expect(both.stderr).toContain('--cluster names the cluster of one run (-n)');
  });
});

describe('an identity without the rights a run needs (403)', () => {
  const read = (apiGroups: string[], resources: string[]): V1PolicyRule => ({
    apiGroups,
    resources,
    verbs: ['get', 'list'],
  });

  it('runas-migrate plan with a kubeconfig that cannot list claims names the verb, the object and the fix', async () => {
    const kubeconfig = await limitedKubeconfig('reads-policies-only', [
      read([''], ['namespaces']),
      read([Gatekeeper.group], ['*']),
    ]);
    const r = await unchanged(() => runasMigrate(['plan', '--input', JSON.stringify(valid)], kubeconfig));
    expect(r.code).toBe(1);
    // The worker's guardrails are not this identity's to read: plan says so and goes on.
    expect(r.stdout).toContain('Guardrails: not readable with this kubeconfig (forbidden to get ConfigMap');
    expect(r.stderr).toMatch(
      new RegExp(
        `forbidden to list PersistentVolumeClaims in namespace "${namespace}" \\(HTTP 403\\): .*Fix: grant the identity in the kubeconfig "list" on it`,
      ),
    );
  });

  it('a worker that may not read its guardrails does not start, rather than run with the defaults', async () => {
    const kubeconfig = await limitedKubeconfig('no-guardrails', [read([''], ['namespaces'])]);
    await expect(
      createWorker({
        address: bed().temporal.address,
        kubeconfig,
        taskQueue: uniqueName('badinput-nogr'),
        sweepEvery: '1 hour',
        log: () => undefined,
      }),
    ).rejects.toThrow(/forbidden to get ConfigMap "runas-migrate\/runas-migrate-guardrails" \(HTTP 403\)/);
  });

  it('a worker whose kubeconfig may only read what it plans with: the run fails at its lock, naming it, and nothing changed', async () => {
    const kubeconfig = await limitedKubeconfig('reads-everything', [
      read([''], ['namespaces', 'persistentvolumeclaims', 'pods', 'configmaps']),
      read(['apps'], ['statefulsets']),
      read([Gatekeeper.group], ['*']),
      read([IaxPlatform.group], ['*']),
    ]);
    const readOnlyQueue = uniqueName('badinput-ro');
    const w = await createWorker({
      address: bed().temporal.address,
      kubeconfig,
      taskQueue: readOnlyQueue,
      sweepEvery: '1 hour',
      log: () => undefined,
    });
    const running = w.worker.run();
    cleanups.push(async () => {
      await w.client.schedule
        .getHandle(sweeperScheduleId(readOnlyQueue))
        .delete()
        .catch(() => undefined);
      if (w.worker.getState() === 'RUNNING') w.worker.shutdown();
      await running;
      await w.close();
    });
    const input: MigrationInputRaw = {
      namespace,
      uid: 5000,
      gid: 5000,
      approvals: [],
      securityContext: { apply: 'patch' },
    };
    const r = await unchanged(() =>
      runasMigrate(['start', '--input', JSON.stringify(input), '--follow', '--task-queue', readOnlyQueue]),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /run failed: forbidden to get Lease "[^"]+\/runas-migrate" \(HTTP 403\).*Fix: grant the identity in the kubeconfig "get" on it/,
    );
  });
});
