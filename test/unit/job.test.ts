import { execFileSync, spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1PersistentVolumeClaim, V1StatefulSet } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { parseMigrationInput } from '../../src/input.js';
import { buildOwnershipJob, ownershipJobName, parseJobSummary, type JobTarget } from '../../src/job.js';
import { planDatabase, PlanningError, preflight } from '../../src/plan.js';
import type { RelaxationRecord } from '../../src/policy.js';
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
const target = (paths: string[]): JobTarget => ({
  statefulSet: 'timescale',
  ordinal: 1,
  image: 'docker.itrsgroup.com/iax/timescale:2.17.0',
  volumes: paths.map((p, i) => ({ volume: `v${i}`, claimName: `v${i}-timescale-1`, mountPath: p })),
});

describe('buildOwnershipJob', () => {
  it("runs as root with only CHOWN, FOWNER and DAC_OVERRIDE, once, with the replica's volumes", () => {
    const job = buildOwnershipJob(input, target(['/var/lib/postgresql', '/var/lib/postgresql/wal']));
    const pod = job.spec!.template.spec!;
    const c = pod.containers[0]!;
    expect(job.metadata?.name).toBe('runas-migrate-timescale-1');
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
    expect(job.metadata?.labels).toMatchObject({
      team: 'x',
      'app.kubernetes.io/managed-by': 'runas-migrate',
      'runas-migrate.dev/ordinal': '1',
    });
    expect(c.env).toEqual([
      { name: 'TARGET_UID', value: '5000' },
      { name: 'TARGET_GID', value: '5000' },
    ]);
  });

  it('keeps Job names within 63 characters', () => {
    expect(ownershipJobName('a'.repeat(80), 12)).toHaveLength(63);
    expect(ownershipJobName('a'.repeat(80), 12).endsWith('-12')).toBe(true);
  });

  it('reads its own summary and nothing else', () => {
    expect(
      parseJobSummary('{"ok":true,"uid":1,"gid":1,"scanned":3,"changed":2,"seconds":0.1,"paths":[]}\n')
        ?.changed,
    ).toBe(2);
    expect(parseJobSummary('chown: Operation not permitted')).toBeUndefined();
    expect(parseJobSummary(undefined)).toBeUndefined();
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
    expect(plan.jobs.map((j) => j.name)).toEqual([
      'runas-migrate-timescale-0',
      'runas-migrate-timescale-1',
      'runas-migrate-timescale-2',
    ]);
    expect(plan.jobs[1]?.volumes).toEqual([
      { volume: 'data', claimName: 'data-timescale-1', mountPath: '/var/lib/postgresql' },
      { volume: 'wal', claimName: 'wal-timescale-1', mountPath: '/var/lib/postgresql/wal' },
    ]);
    expect(plan.image).toBe('img:1');
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
  const job = buildOwnershipJob(input, {
    ...target([mount]),
    volumes: [
      { volume: 'data', claimName: 'x', mountPath: mount },
      ...nested.map((n) => ({ volume: n, claimName: n, mountPath: join(mount, n) })),
    ],
  });
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
    'leaves every one of 100k+ entries owned by uid:gid, without following symlinks, and proves it',
    { timeout: 120_000 },
    () => {
      const root = mkdtempSync(join(tmpdir(), 'job-'));
      const entries = makeTree(join(root, 'pv'), 100, 1001);
      expect(entries).toBeGreaterThanOrEqual(100_000);
      const r = runJob(root, ['CHOWN', 'FOWNER', 'DAC_OVERRIDE']);
      expect(r.code).toBe(0);
      expect(r.summary).toMatchObject({
        ok: true,
        uid: 5000,
        gid: 5000,
        scanned: entries,
        changed: entries - 1002,
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
