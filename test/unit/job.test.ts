import { OwnershipScript } from '../../src/services/ownership-script.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1PersistentVolumeClaim, V1StatefulSet, V1VolumeMount } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { parseMigrationInput } from '../../src/core/input.js';
import {
  buildOwnershipJob,
  jobOwnership,
  judgeJob,
  ownershipJobName,
  parseJobSummary,
  type JobSummary,
  type JobTarget,
} from '../../src/core/job.js';
import { containerIdProblems, planDatabase, PlanningError, preflight } from '../../src/core/plan.js';
import type { RelaxationRecord } from '../../src/core/policy.js';
import { identityOf, launchScript } from '../../testbed/host-runner/launch.js';
import { makeTree } from '../support/tree.js';

const input = parseMigrationInput({
  namespace: 'itrs',
  uid: 5000,
  gid: 5000,
  job: {
    nodeSelector: { pool: 'db' },
    tolerations: [{ key: 'db', operator: 'Exists' }],
    podLabels: { team: 'x' },
    timeout: '2h',
  },
});
const owner = { workflowId: 'runas-migrate-itrs', runId: '0d7e8a52-5f3c-4c3e-9a55-2d2b0c7e1f10' };
const target = (paths: string[]): JobTarget => ({
  statefulSet: 'timescale',
  ordinal: 1,
  image: 'docker.itrsgroup.com/iax/timescale:2.17.0',
  volumes: paths.map((p, i) => ({ volume: `v${i}`, claimName: `v${i}-timescale-1`, mountPath: p })),
});

describe('buildOwnershipJob', () => {
  it("pulls the image as the database's pods do (their pull secrets and ServiceAccount), with no token", () => {
    const pulled = {
      ...target(['/var/lib/postgresql']),
      pull: { imagePullSecrets: ['itrs-registry'], serviceAccountName: 'timescale' },
    };
    const pod = buildOwnershipJob(input, pulled, owner, OwnershipScript).spec!.template.spec!;
    expect(pod.imagePullSecrets).toEqual([{ name: 'itrs-registry' }]);
    expect(pod.serviceAccountName).toBe('timescale');
    expect(pod.automountServiceAccountToken).toBe(false);
    const plain = buildOwnershipJob(input, target(['/var/lib/postgresql']), owner, OwnershipScript);
    expect(plain.spec!.template.spec!.imagePullSecrets).toBeUndefined();
    expect(plain.spec!.template.spec!.serviceAccountName).toBeUndefined();
  });

  it("runs as root with only CHOWN, FOWNER and DAC_OVERRIDE, once, with the replica's volumes", () => {
    const job = buildOwnershipJob(
      input,
      target(['/var/lib/postgresql', '/var/lib/postgresql/wal']),
      owner,
      OwnershipScript,
    );
    const pod = job.spec!.template.spec!;
    const c = pod.containers[0]!;
    expect(job.metadata?.name).toBe('runas-migrate-timescale-1-0j6tql2');
    expect(job.spec?.backoffLimit).toBe(0);
    expect(job.spec?.activeDeadlineSeconds).toBe(7200);
    expect(pod.securityContext).toEqual({
      runAsUser: 0,
      runAsGroup: 0,
      runAsNonRoot: false,
      seccompProfile: { type: 'RuntimeDefault' },
    });
    expect(c.securityContext).toEqual({
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      capabilities: { add: ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'], drop: ['ALL'] },
    });
    expect(c.image).toBe('docker.itrsgroup.com/iax/timescale:2.17.0');
    expect(c.command?.slice(-2)).toEqual(['/var/lib/postgresql', '/var/lib/postgresql/wal']);
    expect(c.volumeMounts).toEqual([
      { name: 'v0', mountPath: '/var/lib/postgresql' },
      { name: 'v1', mountPath: '/var/lib/postgresql/wal' },
    ]);
    expect(pod.volumes?.map((v) => v.persistentVolumeClaim?.claimName)).toEqual([
      'v0-timescale-1',
      'v1-timescale-1',
    ]);
    expect(pod.nodeSelector).toEqual({ pool: 'db' });
    expect(pod.tolerations).toEqual([{ key: 'db', operator: 'Exists' }]);
    const labels = {
      team: 'x',
      'app.kubernetes.io/managed-by': 'runas-migrate',
      'runas-migrate.dev/statefulset': 'timescale',
      'runas-migrate.dev/ordinal': '1',
      'runas-migrate.dev/run': owner.runId,
      'runas-migrate.dev/uid': '5000',
      'runas-migrate.dev/gid': '5000',
    };
    expect(job.metadata?.labels).toEqual(labels);
    expect(job.spec?.template.metadata?.labels).toEqual(labels);
    expect(job.metadata?.annotations).toEqual({ 'runas-migrate.dev/workflow-id': owner.workflowId });
    expect(job.spec?.template.metadata?.annotations).toEqual({
      'runas-migrate.dev/workflow-id': owner.workflowId,
    });
    expect(jobOwnership(job)).toEqual({ ...owner, uid: 5000, gid: 5000 });
    expect(c.env).toEqual([
      { name: 'TARGET_UID', value: '5000' },
      { name: 'TARGET_GID', value: '5000' },
    ]);
  });

  it('reads its own summary and nothing else', () => {
    expect(
      parseJobSummary('{"ok":true,"uid":1,"gid":1,"scanned":3,"changed":2,"seconds":0.1,"paths":[]}\n')
        ?.changed,
    ).toBe(2);
    expect(parseJobSummary('chown: Operation not permitted')).toBeUndefined();
    expect(parseJobSummary('{"done":true}')).toBeUndefined();
    expect(parseJobSummary('{"scanned":3,"paths":[]}')).toBeUndefined();
    expect(parseJobSummary('null')).toBeUndefined();
    expect(parseJobSummary(undefined)).toBeUndefined();
  });
});

describe('ownershipJobName', () => {
  const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

  it('is runas-migrate-<statefulSet>-<ordinal>-<hash>, stable across versions', () => {
    expect(ownershipJobName('timescale', 1)).toBe('runas-migrate-timescale-1-0j6tql2');
    expect(ownershipJobName('pgplatform', 0)).toBe('runas-migrate-pgplatform-0-0a7vap8');
  });

  it('keeps two long StatefulSets that share their first 47 characters apart', () => {
    const a = 'analytics-timescale-primary-cluster-eu-west-1-replica-set-a';
    const b = 'analytics-timescale-primary-cluster-eu-west-1-replica-set-b';
    // cut to 63 characters without a hash, both were runas-migrate-analytics-…-eu-west-1-r-0
    expect(ownershipJobName(a, 0)).not.toBe(ownershipJobName(b, 0));
    expect(ownershipJobName(a, 0)).toBe('runas-migrate-analytics-timescale-primary-cluster-eu-0-1m6vydj');
    expect(ownershipJobName(a, 0)).not.toBe(ownershipJobName(a, 1));
  });

  it('is always a DNS-1123 label of at most 63 characters, so also a valid job-name label value', () => {
    const names = [
      'a',
      'timescale',
      'a'.repeat(52),
      'x'.repeat(253),
      'db.with.dots',
      'ends-with-dash-at-the-cut-'.repeat(4),
      'UPPER',
    ];
    for (const sts of names) {
      for (const ordinal of [0, 7, 12, 123_456]) {
        const name = ownershipJobName(sts, ordinal);
        expect(name.length, name).toBeLessThanOrEqual(63);
        expect(name, name).toMatch(dnsLabel);
        expect(name.endsWith(`-${ordinal}-${name.slice(-7)}`), name).toBe(true);
      }
    }
    expect(new Set(names.map((n) => ownershipJobName(n, 0))).size).toBe(names.length);
  });
});

describe('judgeJob', () => {
  const summary = (over: Partial<JobSummary> = {}): JobSummary => ({
    ok: true,
    uid: 5000,
    gid: 5000,
    scanned: 10,
    changed: 9,
    seconds: 0.1,
    paths: [],
    ...over,
  });
  const complete = { type: 'Complete' };
  const ids = { uid: 5000, gid: 5000 };

  it('counts a completed Job as a success only when its summary proves the target IDs', () => {
    expect(judgeJob(complete, summary(), 0, ids)).toEqual({ succeeded: true, message: 'completed' });
    expect(judgeJob(complete, undefined, 0, ids)).toEqual({
      succeeded: false,
      message:
        'completed without a summary in its termination message: nothing proves its volumes changed hands',
    });
    expect(judgeJob(complete, summary({ uid: 6000, gid: 6000 }), 0, ids)).toEqual({
      succeeded: false,
      message: 'completed for 6000:6000, not for the target 5000:5000',
    });
    expect(judgeJob(complete, summary({ ok: false }), 0, ids).succeeded).toBe(false);
  });

  it('reports a failed Job with its reason and exit code', () => {
    expect(
      judgeJob(
        {
          type: 'Failed',
          reason: 'BackoffLimitExceeded',
          message: 'Job has reached the specified backoff limit',
        },
        summary({ ok: false }),
        1,
        ids,
      ),
    ).toEqual({
      succeeded: false,
      message: 'BackoffLimitExceeded: Job has reached the specified backoff limit (exit 1)',
    });
  });
});

describe('planDatabase', () => {
  const sts: V1StatefulSet = {
    metadata: { name: 'timescale' },
    spec: {
      replicas: 2,
      serviceName: 'timescale',
      selector: {},
      template: {
        spec: {
          securityContext: { runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000 },
          containers: [
            {
              name: 'timescale',
              image: 'img:1',
              volumeMounts: [
                { name: 'data', mountPath: '/var/lib/postgresql' },
                { name: 'wal', mountPath: '/var/lib/postgresql/wal' },
                { name: 'config', mountPath: '/etc/pg' },
              ],
            },
          ],
          volumes: [{ name: 'config', configMap: { name: 'c' } }],
        },
      },
      volumeClaimTemplates: [{ metadata: { name: 'data' } }, { metadata: { name: 'wal' } }],
    },
  };
  const claims = (names: string[]): V1PersistentVolumeClaim[] =>
    names.map((name) => ({ metadata: { name } }));
  const all = claims([
    'data-timescale-0',
    'wal-timescale-0',
    'data-timescale-1',
    'wal-timescale-1',
    'data-timescale-2',
    'wal-timescale-2',
  ]);

  it('migrates every PVC-backed mount of every replica whose claims exist', () => {
    const plan = planDatabase(sts, 'timescale', undefined, all);
    expect(plan.replicas).toBe(2);
    expect(plan.jobs.map((j) => j.name)).toEqual([0, 1, 2].map((i) => ownershipJobName('timescale', i)));
    expect(plan.jobs[1]?.volumes).toEqual([
      { volume: 'data', claimName: 'data-timescale-1', mountPath: '/var/lib/postgresql' },
      { volume: 'wal', claimName: 'wal-timescale-1', mountPath: '/var/lib/postgresql/wal' },
    ]);
    expect(plan.image).toBe('img:1');
    expect(plan.jobs[0]?.pull).toEqual({ imagePullSecrets: [] });
  });

  it("takes the pods' image pull secrets and ServiceAccount for the Jobs", () => {
    const pulling = structuredClone(sts);
    pulling.spec!.template.spec!.imagePullSecrets = [{ name: 'itrs-registry' }];
    pulling.spec!.template.spec!.serviceAccountName = 'timescale';
    expect(planDatabase(pulling, 'timescale', undefined, all).jobs[2]?.pull).toEqual({
      imagePullSecrets: ['itrs-registry'],
      serviceAccountName: 'timescale',
    });
  });

  it('takes the replicas recorded by an interrupted run over the current 0', () => {
    const scaled = {
      ...sts,
      metadata: { name: 'timescale', annotations: { 'runas-migrate.dev/original-replicas': '2' } },
      spec: { ...sts.spec!, replicas: 0 },
    };
    expect(planDatabase(scaled, 'timescale', ['data'], all).replicas).toBe(2);
  });

  it('names what is missing', () => {
    expect(() => planDatabase(sts, 'postgres', undefined, all)).toThrow(
      /no container "postgres" \(it has: timescale\)/,
    );
    expect(() => planDatabase(sts, 'timescale', ['config'], all)).toThrow(
      /mounts no claim template "config"/,
    );
    expect(() =>
      planDatabase(
        sts,
        'timescale',
        undefined,
        claims(['data-timescale-0', 'wal-timescale-0', 'data-timescale-1']),
      ),
    ).toThrow(PlanningError);
    expect(() =>
      planDatabase(
        sts,
        'timescale',
        undefined,
        claims(['data-timescale-0', 'wal-timescale-0', 'data-timescale-1']),
      ),
    ).toThrow(/replica 1 of StatefulSet timescale has no PersistentVolumeClaim wal-timescale-1/);
  });

  it('refuses a StatefulSet whose claims go with a scale-down (whenScaled: Delete), naming the fix', () => {
    const deleting = {
      ...sts,
      spec: {
        ...sts.spec!,
        persistentVolumeClaimRetentionPolicy: { whenScaled: 'Delete', whenDeleted: 'Retain' },
      },
    };
    expect(() => planDatabase(deleting, 'timescale', undefined, all)).toThrow(
      /persistentVolumeClaimRetentionPolicy\.whenScaled: Delete: scaling it to 0 .* would delete the claims .*set whenScaled to Retain/,
    );
    const retaining = {
      ...sts,
      spec: {
        ...sts.spec!,
        persistentVolumeClaimRetentionPolicy: { whenScaled: 'Retain', whenDeleted: 'Delete' },
      },
    };
    expect(planDatabase(retaining, 'timescale', undefined, all).jobs).toHaveLength(3);
  });
});

describe('containerIdProblems', () => {
  const withContainers = (init: object[], containers: object[]): V1StatefulSet => ({
    metadata: { name: 'pg' },
    spec: {
      serviceName: 'pg',
      selector: {},
      template: {
        spec: {
          securityContext: { runAsUser: 1000, runAsGroup: 1000 },
          initContainers: init as never,
          containers: containers as never,
        },
      },
    },
  });

  it("names each container, init containers too, whose own IDs would override the pod's new ones", () => {
    const sts = withContainers(
      [{ name: 'chown-data', securityContext: { runAsUser: 0 } }],
      [
        { name: 'postgres', securityContext: { runAsUser: 1001, runAsGroup: 5000 } },
        { name: 'exporter', securityContext: { runAsGroup: 1001 } },
      ],
    );
    expect(containerIdProblems(sts, 5000, 5000)).toEqual([
      expect.stringMatching(
        /^StatefulSet pg: container "chown-data" sets securityContext\.runAsUser 0 itself, .*use apply "helm" or "external"$/,
      ),
      expect.stringMatching(/container "postgres" sets securityContext\.runAsUser 1001 itself/),
      expect.stringMatching(/container "exporter" sets securityContext\.runAsGroup 1001 itself/),
    ]);
  });

  it('has nothing to say of containers that leave the IDs to the pod or already set the target', () => {
    const sts = withContainers(
      [],
      [{ name: 'postgres' }, { name: 'x', securityContext: { runAsUser: 5000 } }],
    );
    expect(containerIdProblems(sts, 5000, 5000)).toEqual([]);
  });
});

describe('a claim mounted twice with subPaths', () => {
  const sts = (mounts: V1VolumeMount[]): V1StatefulSet => ({
    metadata: { name: 'pg' },
    spec: {
      replicas: 1,
      serviceName: 'pg',
      selector: {},
      template: { spec: { containers: [{ name: 'postgres', image: 'img:1', volumeMounts: mounts }] } },
      volumeClaimTemplates: [{ metadata: { name: 'data' } }],
    },
  });
  const twice = sts([
    { name: 'data', mountPath: '/var/lib/postgresql/data', subPath: 'pgdata' },
    { name: 'data', mountPath: '/var/lib/postgresql/wal', subPath: 'wal' },
  ]);
  const claims = [{ metadata: { name: 'data-pg-0' } }];

  it('is planned mount by mount, each with its subPath', () => {
    expect(planDatabase(twice, 'postgres', undefined, claims).jobs[0]?.volumes).toEqual([
      { volume: 'data', claimName: 'data-pg-0', mountPath: '/var/lib/postgresql/data', subPath: 'pgdata' },
      { volume: 'data', claimName: 'data-pg-0', mountPath: '/var/lib/postgresql/wal', subPath: 'wal' },
    ]);
  });

  it('gives the Job one volume per claim, mounted with the same subPaths at the same paths', () => {
    const job = buildOwnershipJob(
      input,
      planDatabase(twice, 'postgres', undefined, claims).jobs[0]!,
      owner,
      OwnershipScript,
    );
    const pod = job.spec!.template.spec!;
    expect(pod.volumes).toEqual([{ name: 'data', persistentVolumeClaim: { claimName: 'data-pg-0' } }]);
    expect(pod.containers[0]?.volumeMounts).toEqual([
      { name: 'data', mountPath: '/var/lib/postgresql/data', subPath: 'pgdata' },
      { name: 'data', mountPath: '/var/lib/postgresql/wal', subPath: 'wal' },
    ]);
    expect(pod.containers[0]?.command?.slice(-2)).toEqual([
      '/var/lib/postgresql/data',
      '/var/lib/postgresql/wal',
    ]);
  });

  it('refuses a subPathExpr it cannot resolve, naming it', () => {
    expect(() =>
      planDatabase(
        sts([{ name: 'data', mountPath: '/var/lib/postgresql', subPathExpr: '$(POD_NAME)' }]),
        'postgres',
        undefined,
        claims,
      ),
    ).toThrow(/mounts claim template "data" at \/var\/lib\/postgresql with subPathExpr "\$\(POD_NAME\)"/);
  });

  it('changes only the folders mounted, run for real over one volume', { timeout: 60_000 }, () => {
    const root = mkdtempSync(join(tmpdir(), 'job-subpath-'));
    const pv = join(root, 'pv');
    execFileSync('bash', [
      '-c',
      'mkdir -p "$1"/pgdata/base "$1"/wal/pg_wal "$1"/other && touch "$1"/pgdata/base/{1,2,3} "$1"/wal/pg_wal/{a,b} "$1"/other/keep "$1"/top && chown -R 1000:1000 "$1"',
      'tree',
      pv,
    ]);
    const mounted = sts([
      { name: 'data', mountPath: join(root, 'mnt', 'data'), subPath: 'pgdata' },
      { name: 'data', mountPath: join(root, 'mnt', 'wal'), subPath: 'wal' },
    ]);
    const job = buildOwnershipJob(
      input,
      planDatabase(mounted, 'postgres', undefined, claims).jobs[0]!,
      owner,
      OwnershipScript,
    );
    const c = job.spec!.template.spec!.containers[0]!;
    const term = join(root, 'termination-log');
    writeFileSync(term, '');
    // As the host runner binds them: the claim's folder, at each mount's subPath.
    const mounts = c.volumeMounts!.map((m) => ({
      source: pv,
      ...(m.subPath ? { subPath: m.subPath } : {}),
      target: m.mountPath,
      readOnly: false,
    }));
    writeFileSync(
      join(root, 'launch.sh'),
      launchScript(
        c,
        identityOf({ spec: job.spec!.template.spec! }, c),
        mounts,
        { TARGET_UID: '5000', TARGET_GID: '5000', PATH: process.env.PATH! },
        { scratchDir: join(root, 'scratch'), terminationFile: term },
      ),
    );
    const r = spawnSync(
      'unshare',
      ['--mount', '--propagation', 'private', '--', 'bash', join(root, 'launch.sh')],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { PATH: process.env.PATH },
        encoding: 'utf8',
      },
    );
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(parseJobSummary(readFileSync(term, 'utf8'))).toMatchObject({
      ok: true,
      scanned: 5 + 4,
      changed: 5 + 4,
    });
    const owner_ = (p: string) => `${lstatSync(join(pv, p)).uid}:${lstatSync(join(pv, p)).gid}`;
    for (const p of ['pgdata', 'pgdata/base', 'pgdata/base/1', 'wal/pg_wal', 'wal/pg_wal/b'])
      expect(owner_(p), p).toBe('5000:5000');
    for (const p of ['.', 'other', 'other/keep', 'top']) expect(owner_(p), p).toBe('1000:1000');
  });
});

describe('preflight', () => {
  const record = (enforce: string | null) =>
    ({
      snapshot: { namespace: 'itrs', podSecurity: { 'pod-security.kubernetes.io/enforce': enforce } },
    }) as unknown as RelaxationRecord;
  const ranges = { rule: 'MustRunAs', ranges: [{ min: 1000, max: 4999 }] };

  it('names the constraint, the field and the range the target IDs fall outside of', () => {
    const problems = preflight(
      { uid: 5000, gid: 3000, supplementalGroups: [3000, 7000] },
      record(null),
      [
        {
          name: 'allowed-user-ranges',
          parameters: {
            runAsUser: ranges,
            runAsGroup: ranges,
            fsGroup: { rule: 'RunAsAny' },
            supplementalGroups: ranges,
          },
        },
      ],
      [],
      {},
    );
    expect(problems).toEqual([
      'K8sPSPAllowedUsers/allowed-user-ranges: runAsUser 5000 is outside the allowed ranges 1000-4999: the databases would be refused at scale-up; choose IDs inside them or change the constraint',
      'K8sPSPAllowedUsers/allowed-user-ranges: supplementalGroups 7000 is outside the allowed ranges 1000-4999: the databases would be refused at scale-up; choose IDs inside them or change the constraint',
    ]);
  });

  it('requires runAsNonRoot where PSA restricted comes back', () => {
    const db = { statefulSet: 'pgplatform' } as never;
    expect(
      preflight({ uid: 5000, gid: 5000, supplementalGroups: [5000] }, record('restricted'), [], [db], {
        pgplatform: false,
      })[0],
    ).toMatch(/requires runAsNonRoot: true/);
    expect(
      preflight({ uid: 5000, gid: 5000, supplementalGroups: [5000] }, record('restricted'), [], [db], {
        pgplatform: true,
      }),
    ).toEqual([]);
  });
});

/** Runs the Job over root/pv at root/mnt, and over each of `nested` (root/<name> at root/mnt/<name>). */
function runJob(
  root: string,
  caps: string[],
  nested: string[] = [],
): { code: number; log: string; summary: ReturnType<typeof parseJobSummary> } {
  const mount = join(root, 'mnt');
  const job = buildOwnershipJob(
    input,
    {
      ...target([mount]),
      volumes: [
        { volume: 'data', claimName: 'x', mountPath: mount },
        ...nested.map((n) => ({ volume: n, claimName: n, mountPath: join(mount, n) })),
      ],
    },
    owner,
    OwnershipScript,
  );
  const pod = job.spec!.template.spec!;
  const c = {
    ...pod.containers[0]!,
    securityContext: { ...pod.containers[0]!.securityContext, capabilities: { add: caps, drop: ['ALL'] } },
  };
  const term = join(root, 'termination-log');
  writeFileSync(term, '');
  const script = launchScript(
    c,
    identityOf({ spec: pod }, c),
    [
      { source: join(root, 'pv'), target: mount, readOnly: false },
      ...nested.map((n) => ({ source: join(root, n), target: join(mount, n), readOnly: false })),
    ],
    { TARGET_UID: '5000', TARGET_GID: '5000', PATH: process.env.PATH! },
    {
      scratchDir: join(root, 'scratch'),
      terminationFile: term,
    },
  );
  writeFileSync(join(root, 'launch.sh'), script);
  const r = spawnSync(
    'unshare',
    ['--mount', '--propagation', 'private', '--', 'bash', join(root, 'launch.sh')],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH },
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    },
  );
  return {
    code: r.status ?? -1,
    log: r.stdout + r.stderr,
    summary: parseJobSummary(readFileSync(term, 'utf8')),
  };
}

describe("the ownership script, run for real with exactly the Job's capabilities", () => {
  it(
    // 20k entries: the behaviour at scale (200k) is measured in bench/job-script.ts.
    'leaves every one of 20k+ entries owned by uid:gid, without following symlinks, and proves it',
    { timeout: 120_000 },
    () => {
      const root = mkdtempSync(join(tmpdir(), 'job-'));
      const files = 201;
      const entries = makeTree(join(root, 'pv'), 100, files);
      expect(entries).toBeGreaterThanOrEqual(20_000);
      const r = runJob(root, ['CHOWN', 'FOWNER', 'DAC_OVERRIDE']);
      expect(r.code).toBe(0);
      expect(r.summary).toMatchObject({
        ok: true,
        uid: 5000,
        gid: 5000,
        scanned: entries,
        // the first folder and its files were done by an interrupted earlier run
        changed: entries - (files + 1),
      });
      const left = execFileSync(
        'find',
        [join(root, 'pv'), '(', '!', '-uid', '5000', '-o', '!', '-gid', '5000', ')', '-print'],
        { encoding: 'utf8' },
      );
      expect(left.split('\n').filter((l) => l && l !== join(root, 'pv'))).toEqual([]);
      expect(lstatSync(join(root, 'pv', 'data', 'pg_wal')).isSymbolicLink()).toBe(true);
      expect(lstatSync(join(root, 'pv', 'data', 'pg_wal')).uid).toBe(5000);

      const again = runJob(root, ['CHOWN', 'FOWNER', 'DAC_OVERRIDE']);
      expect(again.summary).toMatchObject({ ok: true, scanned: entries, changed: 0 });
    },
  );

  it(
    'shares a volume among workers and proves a volume mounted inside it on its own',
    { timeout: 60_000 },
    () => {
      const root = mkdtempSync(join(tmpdir(), 'job-'));
      const pv = join(root, 'pv');
      const entries = makeTree(pv, 4, 50);
      // more top-level entries to share, one a dangling symlink; and a WAL volume inside
      execFileSync('bash', [
        '-c',
        'mkdir "$1/extra" && touch "$1/extra/"{a,b,c} && ln -s /nowhere "$1/dangling" && chown -R -h 1000:1000 "$1/extra" "$1/dangling" && mkdir -p "$2/pg_wal" && touch "$2/pg_wal/"{1,2,3,4,5} && chown -R 1000:1000 "$2"',
        'tree',
        pv,
        join(root, 'wal'),
      ]);
      const r = runJob(root, ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'], ['wal']);
      expect(r.code).toBe(0);
      const mnt = join(root, 'mnt');
      expect(r.summary).toMatchObject({
        ok: true,
        scanned: entries + 5 + 7,
        changed: entries - 51 + 5 + 7,
        paths: [
          { path: mnt, skipped: false, scanned: entries + 5, changed: entries - 51 + 5 },
          { path: join(mnt, 'wal'), skipped: false, scanned: 7, changed: 7 },
        ],
      });
      const left = execFileSync(
        'find',
        [pv, join(root, 'wal'), '(', '!', '-uid', '5000', '-o', '!', '-gid', '5000', ')', '-print'],
        { encoding: 'utf8' },
      );
      // the mount point made for the WAL volume is the parent's, hidden under the mount
      expect(left.split('\n').filter((l) => l && l !== pv && l !== join(pv, 'wal'))).toEqual([]);
      expect(lstatSync(join(pv, 'dangling')).uid).toBe(5000);

      const again = runJob(root, ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'], ['wal']);
      expect(again.summary).toMatchObject({ ok: true, scanned: entries + 12, changed: 0 });
    },
  );

  it('fails clearly without the capabilities, changing nothing it may not', { timeout: 60_000 }, () => {
    const root = mkdtempSync(join(tmpdir(), 'job-'));
    makeTree(join(root, 'pv'), 2, 10);
    const r = runJob(root, []);
    expect(r.code).toBe(1);
    expect(r.log).toMatch(/Operation not permitted/);
    expect(r.log).toMatch(/runas-migrate: could not change ownership under/);
    expect(r.summary?.ok).toBe(false);
    expect(lstatSync(join(root, 'pv', 'data', 'base', '1', '3')).uid).toBe(1000);
  });
});
