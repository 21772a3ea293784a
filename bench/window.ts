/**
 * The security window and the end-to-end time of runas-migrate (`admission` window mode) against
 * the vendor's manual procedure (bench/manual-procedure.sh, run literally), side by side in one
 * run on the test bed, for volumes of FILES_SMALL files and of FILES_LARGE files.
 *
 * - Small case: every data and tablespace volume holds FILES_SMALL files (the WAL volumes a
 *   quarter of that, as the fixture seeds them); ROUNDS rounds.
 * - Large case: each of the three data volumes (pgplatform-0, timescale-0, timescale-1) holds
 *   FILES_LARGE files, the WAL and tablespace volumes stay as in the small case; ROUNDS_LARGE
 *   rounds. Its files are created once, then moved into each fresh namespace and given back to
 *   the old owner, because creating millions of files takes far longer than migrating them.
 *
 * Window: runas-migrate's own record (report.windowSeconds: relaxed → re-enforced and verified);
 * the manual's timestamps (just before the first relabel → just after the last constraint patch).
 * A watch on the namespace and the constraints observes both the same way, as a cross-check.
 * Every run gets a fresh namespace, removed afterwards with its PersistentVolumes and host folders.
 *
 * `npm run bench -- window` (FILES_SMALL, FILES_LARGE, ROUNDS, ROUNDS_LARGE, SETTLE_SECONDS for
 * the manual's `sleep 60`, HELM_WAIT=true for its literal `helm upgrade --wait`, which real
 * databases never pass, CASES=small,large).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Watch, type KubeConfig } from '@kubernetes/client-node';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import type { MigrationInputRaw } from '../src/core/input.js';
import { startRun } from '../src/app/runs.js';
import { createWorker } from '../src/app/worker.js';
import { policyState, type PolicyState } from '../test/support/policy-state.js';
import { kubeConfigOf, up } from '../testbed/bed.js';
import {
  Gatekeeper,
  ItrsDatabases,
  pvDirectory,
  seedItrsFixture,
  waitForFixtureReady,
  hostRunnerRun,
  removeFixture,
} from '../testbed/fixture.js';
import { HostRunnerNode } from '../testbed/host-runner/runner.js';
import { toolPathDirs } from '../testbed/tools.js';
import type { MigrationReport } from '../src/workflows/messages.js';

const run = promisify(execFile);
const filesSmall = Number(process.env.FILES_SMALL ?? 1000);
const filesLarge = Number(process.env.FILES_LARGE ?? 1_000_000);
const roundsSmall = Number(process.env.ROUNDS ?? 3);
const roundsLarge = Number(process.env.ROUNDS_LARGE ?? 1);
const settleSeconds = Number(process.env.SETTLE_SECONDS ?? 60);
const cases = (process.env.CASES ?? 'small,large').split(',');
const oldUid = 1000;
const target = { uid: 5000, gid: 5000 };
const EnforceLabel = 'pod-security.kubernetes.io/enforce';
const script = fileURLToPath(new URL('manual-procedure.sh', import.meta.url));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * The ways of migrating that are compared. `runas, no audit` is runas-migrate with
 * `verify.audit: false`: its database checks still run, but it does not wait for a Gatekeeper
 * audit pass that started after the databases came back (the manual reads the constraints
 * once, whatever pass they show). That wait is up to one audit interval (5 s on the bed, 60 s
 * by default) and is the run's critical path once the databases are up.
 */
type Way = 'runas-migrate' | 'runas, no audit' | 'manual';

/** What one migration of one namespace measured. */
interface Measurement {
  window: number;
  /** The same window as seen by a watch on the namespace and the constraints. */
  observed: number | undefined;
  total: number;
  /** Policy fields that differ from before the run (empty: restored exactly). */
  policyDiff: string[];
  /** Entries on the namespace's volumes not owned by the target uid:gid afterwards. */
  leftOwners: number;
}

const bed = await up({ name: process.env.RUNAS_MIGRATE_TESTBED ?? 'default', log: () => undefined });
const kc = kubeConfigOf(bed);
const pool = join(bed.pvRoot, '.window-large-files');
const dataClaims = ItrsDatabases.flatMap((db) =>
  db.claims
    .filter((c) => c.seed === 'pgdata')
    .flatMap((c) => Array.from({ length: db.replicas }, (_, i) => `${c.claim}-${db.statefulSet}-${i}`)),
);
// The extra files live in a second database folder of PGDATA, next to the fixture's base/1.
const extraFolder = join('data', 'base', '16385');

const taskQueue = `bench-window-${Date.now().toString(36)}`;
// The worker's runtime logs stay quiet in the figures.
Runtime.install({ logger: new DefaultLogger('WARN') });
const w = await createWorker({
  address: bed.temporal.address,
  kubeconfig: bed.kubeconfig,
  taskQueue,
  sweepEvery: '1 hour',
  log: () => undefined,
});
const running = w.worker.run();

// Folders just created belong to the old owner already: no walk to give them back.
const fresh = new Set<number>();

/** Creates, once, one folder of `count` files per data volume, owned by the old uid. */
async function createLargeFiles(count: number): Promise<void> {
  await Promise.all(
    dataClaims.map(async (_, i) => {
      const dir = join(pool, String(i));
      if (existsSync(dir)) return;
      const partial = `${dir}.partial`;
      rmSync(partial, { recursive: true, force: true });
      mkdirSync(partial, { recursive: true, mode: 0o700 });
      // As the old owner, so the files need no second walk to change hands; started inside the
      // folder because the old owner cannot traverse the bed's parent folders.
      await run('chown', [`${oldUid}:${oldUid}`, partial]);
      await run(
        'setpriv',
        [
          `--reuid=${oldUid}`,
          `--regid=${oldUid}`,
          '--clear-groups',
          'bash',
          '-c',
          `umask 077; seq 1 ${count} | xargs touch`,
        ],
        { cwd: partial, timeout: 30 * 60_000 },
      );
      renameSync(partial, dir);
      fresh.add(i);
    }),
  );
}

/** Moves the large folders into a fresh namespace's data volumes, owned by the old uid again. */
async function lendLargeFiles(namespace: string): Promise<void> {
  await Promise.all(
    dataClaims.map(async (claim, i) => {
      const dir = join(pool, String(i));
      if (!fresh.delete(i))
        await run('chown', ['-R', '-P', `${oldUid}:${oldUid}`, dir], { timeout: 30 * 60_000 });
      renameSync(dir, join(pvDirectory(bed.pvRoot, namespace, claim), extraFolder));
    }),
  );
}

/** Takes the large folders back from a namespace, before its folders are removed. */
function takeBackLargeFiles(namespace: string): void {
  dataClaims.forEach((claim, i) => {
    const lent = join(pvDirectory(bed.pvRoot, namespace, claim), extraFolder);
    if (existsSync(lent)) renameSync(lent, join(pool, String(i)));
  });
}

/** Seeds a fresh fixture namespace for one case. */
async function prepare(namespace: string, large: boolean): Promise<void> {
  await seedItrsFixture(kc, { namespace, pvRoot: bed.pvRoot, oldUid, filesPerVolume: filesSmall });
  if (large) await lendLargeFiles(namespace);
  await waitForFixtureReady(kc, namespace);
}

/** Removes a fixture namespace, its PersistentVolumes and its host folders. */
async function remove(namespace: string): Promise<void> {
  takeBackLargeFiles(namespace);
  await removeFixture(kc, namespace, bed.pvRoot);
}

/**
 * Watches whether the namespace's policies are relaxed (PSA `enforce` other than before, or the
 * namespace in a constraint's excludedNamespaces) and keeps when they first were and when they
 * last stopped being.
 */
async function watchPolicies(kc: KubeConfig, namespace: string, enforce: string | undefined) {
  const watch = new Watch(kc);
  const relaxed = new Map<string, boolean>();
  let openedAt: number | undefined;
  let closedAt: number | undefined;
  let wasRelaxed = false;
  // Only a change between relaxed and not moves the marks: later events on an unrelaxed object
  // (Gatekeeper writes each constraint's status for a while) must not move the close.
  const update = (key: string, value: boolean) => {
    relaxed.set(key, value);
    const any = [...relaxed.values()].some(Boolean);
    if (any && !wasRelaxed && openedAt === undefined) openedAt = Date.now();
    if (!any && wasRelaxed) closedAt = Date.now();
    wasRelaxed = any;
  };
  type Watched = {
    metadata?: { name?: string; labels?: Record<string, string> };
    spec?: { match?: { excludedNamespaces?: string[] } };
  };
  const ignoreEnd = () => undefined;
  const aborts = [
    await watch.watch(
      '/api/v1/namespaces',
      { fieldSelector: `metadata.name=${namespace}` },
      (type: string, ns: Watched) => {
        if (type !== 'BOOKMARK' && type !== 'ERROR')
          update('namespace', ns.metadata?.labels?.[EnforceLabel] !== enforce);
      },
      ignoreEnd,
    ),
    ...(await Promise.all(
      Gatekeeper.kinds.map((k) =>
        watch.watch(
          `/apis/${Gatekeeper.group}/${Gatekeeper.version}/${k.plural}`,
          {},
          (type: string, c: Watched) => {
            if (type === 'BOOKMARK' || type === 'ERROR') return;
            const excluded =
              type !== 'DELETED' && (c.spec?.match?.excludedNamespaces ?? []).includes(namespace);
            update(`${k.plural}/${c.metadata?.name}`, excluded);
          },
          ignoreEnd,
        ),
      ),
    )),
  ];
  return {
    /** Stops watching; the observed window in seconds, if one opened and closed. */
    stop(): number | undefined {
      aborts.forEach((a) => a.abort());
      return openedAt !== undefined && closedAt !== undefined ? (closedAt - openedAt) / 1000 : undefined;
    },
  };
}

/** Fields that differ between two values, as `path: before → after`. */
function differences(before: unknown, after: unknown, path = ''): string[] {
  if (JSON.stringify(before) === JSON.stringify(after)) return [];
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
  if (isObject(before) && isObject(after) && Array.isArray(before) === Array.isArray(after)) {
    // Key by key: the same fields in another order (constraint kinds listed in another order)
    // are the same policy.
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
    return keys.flatMap((k) => differences(before[k], after[k], `${path}/${k}`));
  }
  return [`${path || '/'}: ${JSON.stringify(before)} → ${JSON.stringify(after)}`];
}

/** Entries of the namespace's volumes not owned by uid:gid, mount points of nested volumes aside. */
async function entriesNotOwned(namespace: string): Promise<number> {
  let count = 0;
  for (const db of ItrsDatabases) {
    const mounts = db.claims.map((c) => c.mountPath);
    for (let i = 0; i < db.replicas; i++) {
      for (const c of db.claims) {
        const root = pvDirectory(bed.pvRoot, namespace, `${c.claim}-${db.statefulSet}-${i}`);
        // What the Job sees there is the nested volume, not this folder.
        const hidden = mounts
          .filter((m) => m !== c.mountPath && m.startsWith(`${c.mountPath}/`))
          .flatMap((m) => ['-path', join(root, m.slice(c.mountPath.length)), '-prune', '-o']);
        const { stdout } = await run(
          'find',
          [
            root,
            ...hidden,
            '(',
            '!',
            '-uid',
            String(target.uid),
            '-o',
            '!',
            '-gid',
            String(target.gid),
            ')',
            '-printf',
            'x',
          ],
          { maxBuffer: 256 << 20, timeout: 30 * 60_000 },
        );
        count += stdout.length;
      }
    }
  }
  return count;
}

/** Migrates one namespace with runas-migrate; returns its window and end-to-end seconds. */
async function runasMigrate(namespace: string, audit = true): Promise<{ window: number; total: number }> {
  const base = hostRunnerRun(namespace);
  const input: MigrationInputRaw = {
    ...base,
    ...target,
    ...(audit ? {} : { verify: { ...base.verify, audit: false } }),
  };
  const t = performance.now();
  const { handle } = await startRun(w.client, input, { taskQueue });
  const report = (await handle.result()) as MigrationReport;
  return { window: report.windowSeconds, total: (performance.now() - t) / 1000 };
}

/** Migrates one namespace with the manual procedure; returns its window and end-to-end seconds. */
async function manual(namespace: string): Promise<{ window: number; total: number }> {
  const t = performance.now();
  const { stdout } = await run('bash', [script, namespace, String(target.uid), String(target.gid)], {
    env: {
      ...process.env,
      KUBECONFIG: bed.kubeconfig,
      PATH: [...toolPathDirs(bed.tools), process.env.PATH].join(':'),
      SETTLE_SECONDS: String(settleSeconds),
      // The manual's `helm upgrade --wait` cannot succeed on real databases (they crash on files
      // the Jobs have not changed yet): the operator goes on without it.
      HELM_WAIT: process.env.HELM_WAIT ?? 'false',
      JOB_NODE_SELECTOR: `${HostRunnerNode.Label}=true`,
      JOB_TOLERATION_KEY: HostRunnerNode.TaintKey,
    },
    maxBuffer: 64 << 20,
    timeout: 60 * 60_000,
  }).catch((err: unknown) => {
    const e = err as { stderr?: string; message: string };
    throw new Error(
      `manual procedure failed in ${namespace}: ${e.message}\n${(e.stderr ?? '').slice(-3000)}`,
    );
  });
  const total = (performance.now() - t) / 1000;
  const mark = (name: string) => {
    const m = new RegExp(`^${name} (\\d+\\.\\d+)$`, 'm').exec(stdout);
    if (!m) throw new Error(`the manual procedure printed no "${name}" line`);
    return Number(m[1]);
  };
  return { window: mark('last-policy-restore') - mark('first-policy-change'), total };
}

/** Runs one way on one fresh namespace and measures it. */
async function measure(way: Way, caseName: string, round: number, large: boolean): Promise<Measurement> {
  const short = { 'runas-migrate': 'runas', 'runas, no audit': 'noaudit', manual: 'manual' }[way];
  const namespace = `window-${caseName}-${short}-${round}-${Date.now().toString(36)}`;
  try {
    await prepare(namespace, large);
    const before: PolicyState = await policyState(kc, namespace);
    const watching = await watchPolicies(kc, namespace, before.labels[EnforceLabel]);
    const { window, total } = await (way === 'manual'
      ? manual(namespace)
      : runasMigrate(namespace, way === 'runas-migrate'));
    const observed = watching.stop();
    const policyDiff = differences(before, await policyState(kc, namespace));
    return { window, observed, total, policyDiff, leftOwners: await entriesNotOwned(namespace) };
  } finally {
    await remove(namespace);
  }
}

const ways: Way[] = ['runas-migrate', 'runas, no audit', 'manual'];
const results: { name: string; title: string; rounds: number; by: Record<Way, Measurement[]> }[] = [];
try {
  for (const c of [
    { key: 'small', name: '1k', files: filesSmall, rounds: roundsSmall, large: false },
    { key: 'large', name: '1M', files: filesLarge, rounds: roundsLarge, large: true },
  ]) {
    if (!cases.includes(c.key)) continue;
    const title = c.large
      ? `${c.files} files on each data volume (3), ${filesSmall} on each tablespace volume (4)`
      : `${c.files} files on each data and tablespace volume (7)`;
    if (c.large) await createLargeFiles(c.files - filesSmall);
    const by: Record<Way, Measurement[]> = { 'runas-migrate': [], 'runas, no audit': [], manual: [] };
    for (let r = 0; r < c.rounds; r++) {
      // Alternate which way goes first, so neither always finds a warmer cache.
      for (const way of r % 2 ? [...ways].reverse() : ways) {
        const m = await measure(way, c.key, r, c.large);
        by[way].push(m);
        // Progress, so that a later failure does not lose what was measured.
        process.stderr.write(`[window] ${c.name} round ${r + 1} ${way}: ${JSON.stringify(m)}\n`);
      }
    }
    results.push({ name: c.name, title, rounds: c.rounds, by });
  }
} finally {
  w.worker.shutdown();
  await running;
  await w.close();
  rmSync(pool, { recursive: true, force: true });
}

const s = (x: number) => `${x.toFixed(2)} s`;
const lines: string[] = [
  `security window and end-to-end time, runas-migrate (admission mode) vs the manual procedure, on the test bed (3 Jobs, 9 volumes; target ${target.uid}:${target.gid}; the manual's sleep is ${settleSeconds} s)`,
];
const medians = new Map<string, Record<Way, { window: number; total: number }>>();
for (const r of results) {
  lines.push(`  ${r.name}: ${r.title}; median of ${r.rounds} round(s)`);
  const m = {} as Record<Way, { window: number; total: number }>;
  for (const way of ways) {
    const xs = r.by[way];
    const observed = xs.map((x) => x.observed).filter((x): x is number => x !== undefined);
    const diffs = [...new Set(xs.flatMap((x) => x.policyDiff))];
    m[way] = { window: median(xs.map((x) => x.window)), total: median(xs.map((x) => x.total)) };
    lines.push(
      `    ${way.padEnd(15)} window ${s(m[way].window)} (watched: ${observed.length ? s(median(observed)) : 'n/a'}), end-to-end ${s(m[way].total)}; ` +
        `policies ${diffs.length ? `NOT restored exactly: ${diffs.join('; ')}` : 'restored exactly'}; ` +
        `entries left with another owner: ${xs.map((x) => x.leftOwners).join(', ')}`,
    );
  }
  medians.set(r.name, m);
}

const bar = (what: string, value: number, limit: number, unit: string) => {
  const shown = (v: number) => (unit === 's' ? `${v.toFixed(2)} s` : `${v.toFixed(3)}×`);
  const verdict =
    value <= limit
      ? 'PASS'
      : `MISS (by ${unit === 's' ? `${(value - limit).toFixed(2)} s` : `${((value / limit - 1) * 100).toFixed(0)}%`})`;
  return `  ${what}: ${shown(value)} (bar ≤ ${shown(limit)}): ${verdict}`;
};
lines.push('bars');
for (const [name, m] of medians)
  lines.push(bar(`window in admission mode, ${name}, median`, m['runas-migrate'].window, 5, 's'));
const small = medians.get('1k');
const large = medians.get('1M');
if (small && large)
  lines.push(
    bar(
      'window(1M) / window(1k), runas-migrate',
      large['runas-migrate'].window / small['runas-migrate'].window,
      1.5,
      '×',
    ),
  );
for (const [name, m] of medians)
  lines.push(
    bar(`window runas-migrate / manual, ${name}`, m['runas-migrate'].window / m.manual.window, 0.1, '×'),
  );
for (const [name, m] of medians)
  lines.push(
    bar(`end-to-end runas-migrate / manual, ${name}`, m['runas-migrate'].total / m.manual.total, 0.5, '×'),
    bar(
      `end-to-end runas, no audit / manual, ${name}`,
      m['runas, no audit'].total / m.manual.total,
      0.5,
      '×',
    ),
  );
if (settleSeconds > 0) {
  lines.push(`without the manual's fixed sleep of ${settleSeconds} s (for reading only, not a bar):`);
  for (const [name, m] of medians)
    lines.push(
      `  ${name}: window ratio ${(m['runas-migrate'].window / (m.manual.window - settleSeconds)).toFixed(3)}×, ` +
        `end-to-end ratio ${(m['runas-migrate'].total / (m.manual.total - settleSeconds)).toFixed(3)}×`,
    );
}
process.stdout.write(lines.join('\n') + '\n');
