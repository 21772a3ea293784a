/**
 * The worker's guardrails on the test bed: set in a ConfigMap of the worker's namespace (or a
 * file), read when the worker starts, and checked before a run changes anything. Each guardrail
 * refuses a run that asks for more (nothing changed, the guardrail and its source named) and lets
 * it through when the guardrails allow it; the guardrails in force are in the run's report.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify as toYaml } from 'yaml';
import { GuardrailsConfigMap } from '../../src/core/guardrails.js';
import type { MigrationInputRaw } from '../../src/core/input.js';
import { Kube } from '../../src/cluster/kube.js';
import { NamespaceLockName } from '../../src/services/namespace-lock.js';
import { startRun } from '../../src/app/runs.js';
import { createWorker } from '../../src/app/worker.js';
import type { MigrationReport } from '../../src/workflows/messages.js';
import { bed, createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { failureOf } from '../support/failures.js';
import { namespaceSnapshot, readyFixture, removeFixtures } from '../support/snapshot.js';
import { runasMigrate } from '../support/cli.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const target = uniqueName('grd-itrs');
/** The worker's own namespace: its guardrails ConfigMap lives here. */
const workerNamespace = uniqueName('grd-worker');
const taskQueue = uniqueName('guardrails');
let worker: TestWorker;

/** What the security team allows in this test: more than the defaults, and a tighter target list. */
const guardrails = {
  namespaces: { allow: ['grd-itrs-*'], selector: 'team=analytics' },
  maxWindow: '2h',
  maxApprovalWait: '48h',
  maxPodSecurity: 'privileged',
  jobImages: ['registry.bank.example/postgres:*'],
  requiredGates: ['relax'],
};
const source = `ConfigMap ${workerNamespace}/${GuardrailsConfigMap.name}`;

/** Changes nothing when accepted: a dry run ends after planning. */
const valid: MigrationInputRaw = {
  namespace: target,
  uid: 5000,
  gid: 5000,
  approvals: ['relax'],
  dryRun: true,
};

async function run(input: MigrationInputRaw): Promise<MigrationReport> {
  const { handle } = await startRun(worker.w.client, input, { taskQueue });
  return handle.result() as Promise<MigrationReport>;
}

beforeAll(async () => {
  await createNamespace(kc, workerNamespace);
  await core.createNamespacedConfigMap({
    namespace: workerNamespace,
    body: {
      metadata: { name: GuardrailsConfigMap.name },
      data: { [GuardrailsConfigMap.key]: toYaml(guardrails) },
    },
  });
  await readyFixture(kc, target, bed().pvRoot, 5);
  await core.patchNamespace({
    name: target,
    body: [{ op: 'add', path: '/metadata/labels/team', value: 'analytics' }],
  });
  worker = await startTestWorker(taskQueue, { recordsNamespace: workerNamespace });
});

afterAll(async () => {
  await worker?.stop();
  await removeFixtures(kc, [target]);
  await core.deleteNamespace({ name: workerNamespace }).catch(() => undefined);
});

describe('guardrails from a ConfigMap in the worker namespace', () => {
  it('lets through what they allow, and records them in the report by ConfigMap version', async () => {
    const cm = await core.readNamespacedConfigMap({
      name: GuardrailsConfigMap.name,
      namespace: workerNamespace,
    });
    const report = await run({
      ...valid,
      window: { max: '2h' },
      approvalTimeout: '48h',
      policies: { podSecurity: 'privileged' },
      job: { image: 'registry.bank.example/postgres:15' },
    });
    expect(report.dryRun).toBe(true);
    expect(report.guardrails).toMatchObject({
      source,
      version: `uid ${cm.metadata!.uid} resourceVersion ${cm.metadata!.resourceVersion}`,
      workerNamespace,
      guardrails: { maxWindow: '2h', maxPodSecurity: 'privileged', requiredGates: ['relax'] },
    });
  });

  const refused: [string, Partial<MigrationInputRaw>, string][] = [
    [
      'a window longer than maxWindow',
      { window: { max: '3h' } },
      'window.max 3h is longer than maxWindow 2h',
    ],
    [
      'an approval wait longer than maxApprovalWait',
      { approvalTimeout: '72h' },
      'approvalTimeout 72h is longer than maxApprovalWait 48h',
    ],
    [
      'a Job image not in jobImages',
      { job: { image: 'docker.io/evil:1' } },
      'job.image docker.io/evil:1 is not in jobImages [registry.bank.example/postgres:*]',
    ],
    ['a dropped mandatory gate', { approvals: ['plan'] }, 'approvals must include relax'],
    [
      'a namespace outside namespaces.allow',
      { namespace: 'itrs' },
      'namespace itrs is not in namespaces.allow [grd-itrs-*]',
    ],
    ['kube-system', { namespace: 'kube-system' }, 'namespace kube-system is never a target'],
    [
      "the worker's own namespace",
      { namespace: workerNamespace },
      `namespace ${workerNamespace} is never a target`,
    ],
  ];
  it.each(refused)(
    'refuses %s before anything changes, naming the guardrail and its ConfigMap',
    async (_, extra, words) => {
      const watched = extra.namespace ?? target;
      await new Kube(kc).readLease(target, NamespaceLockName).then(
        () => expect.fail('a lock was left by an earlier case'),
        () => undefined,
      );
      const before = await namespaceSnapshot(kc, target, bed().pvRoot);
      const f = await failureOf(run({ ...valid, ...extra, dryRun: false }));
      expect(f.type).toBe('GuardrailRefused');
      expect(f.message).toContain(words);
      expect(f.message).toContain(`refused by the guardrails (${source}, version uid `);
      expect(await namespaceSnapshot(kc, target, bed().pvRoot)).toEqual(before);
      // Not even the lock was taken.
      if (watched === target)
        await expect(new Kube(kc).readLease(target, NamespaceLockName)).rejects.toMatchObject({
          type: 'KubeNotFound',
        });
    },
  );

  it('refuses a namespace that does not carry the selector label', async () => {
    const other = uniqueName('grd-itrs-nolabel');
    await createNamespace(kc, other);
    try {
      const f = await failureOf(run({ ...valid, namespace: other }));
      expect(f.type).toBe('GuardrailRefused');
      expect(f.message).toContain(`namespace ${other} does not match namespaces.selector team=analytics`);
    } finally {
      await core.deleteNamespace({ name: other });
    }
  });

  it('runas-migrate plan shows the guardrails that apply and refuses with exit 3', async () => {
    const env = { KUBECONFIG: bed().kubeconfig, RUNAS_MIGRATE_RECORDS_NAMESPACE: workerNamespace };
    const ok = await runasMigrate(['plan', '--input', JSON.stringify({ ...valid, dryRun: false })], env);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain(`Guardrails from ${source}`);
    expect(ok.stdout).toMatch(/maxPodSecurity\s*│\s*privileged/);
    const no = await runasMigrate(
      ['plan', '--input', JSON.stringify({ ...valid, window: { max: '3h' } })],
      env,
    );
    expect(no.code).toBe(3);
    expect(no.stdout).toContain('REFUSED by the guardrails:');
    expect(no.stdout).toContain('window.max 3h is longer than maxWindow 2h');
  });
});

describe('guardrails a worker cannot read, and the defaults', () => {
  it('a worker does not start with a ConfigMap that does not validate, and says which field', async () => {
    const broken = uniqueName('grd-broken');
    await createNamespace(kc, broken);
    try {
      await core.createNamespacedConfigMap({
        namespace: broken,
        body: {
          metadata: { name: GuardrailsConfigMap.name },
          data: { [GuardrailsConfigMap.key]: 'maxPodSecurity: root\n' },
        },
      });
      await expect(
        createWorker({
          address: bed().temporal.address,
          kubeconfig: bed().kubeconfig,
          taskQueue: uniqueName('grd-broken'),
          recordsNamespace: broken,
          log: () => undefined,
        }),
      ).rejects.toThrow(
        new RegExp(`invalid guardrails in ConfigMap ${broken}/${GuardrailsConfigMap.name}: maxPodSecurity`),
      );
    } finally {
      await core.deleteNamespace({ name: broken });
    }
  });

  it('a guardrails file wins over the ConfigMap; without either, the defaults hold', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'guardrails-')), 'guardrails.yaml');
    writeFileSync(file, toYaml({ maxWindow: '30m' }));
    const q = uniqueName('grd-file');
    const fromFile = await startTestWorker(q, { recordsNamespace: workerNamespace, guardrailsFile: file });
    try {
      const { handle } = await startRun(
        fromFile.w.client,
        { ...valid, approvals: [], window: { max: '20m' } },
        {
          taskQueue: q,
        },
      );
      const r = (await handle.result()) as MigrationReport;
      expect(r.guardrails).toMatchObject({ source: `file ${file}`, guardrails: { maxWindow: '30m' } });
      expect(r.guardrails?.version).toMatch(/^sha256:[0-9a-f]{16}$/);
    } finally {
      await fromFile.stop();
    }
  });
});
