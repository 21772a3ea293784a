/**
 * A fleet over two clusters through `migrateFleet`: NAMESPACES namespaces (default 100), half on
 * the bed's cluster and half on a second simulated cluster (`ensureCluster`), a canary then waves
 * of WAVE (default 20), each cluster's runs on its own worker process (`--cluster`), the fleet
 * on a third. Before it, ROUNDS single runs on the bed's cluster give the window to compare with.
 * kwok runs the databases (FILES files per data volume); the Jobs run on each cluster's host runner.
 *
 * Once per OPEN_WINDOWS variant (default `none,4`: no limit, then `maxOpenWindows: 4`), each on
 * fresh namespaces, side by side in one run with the same workers: the fleet's time, its windows
 * against a single run's, and how many namespaces were relaxed at once at most (from each run's
 * windows).
 *
 * Bars: 0 failures; every policy exactly as before; each worker's peak RSS ≤ 300 MB; the
 * fleet's median window within 2× of a single run's.
 * `npm run bench -- fleet-waves` (NAMESPACES=…; WAVE=…; FILES=…; ROUNDS=…; OPEN_WINDOWS=…).
 */
import { isDeepStrictEqual } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import type { KubeConfig } from '@kubernetes/client-node';
import { startFleet } from '../src/app/fleets.js';
import { startRun } from '../src/app/runs.js';
import { connectClient, ensureSweeperSchedule, sweeperScheduleId } from '../src/app/worker.js';
import type { FleetReport } from '../src/workflows/fleet-messages.js';
import type { MigrationReport } from '../src/workflows/messages.js';
import { renderWindowTimes, windowTimes, type WindowTimes } from './support/steps.js';
import { policyState, type PolicyState } from '../test/support/policy-state.js';
import { clusterConfig, ensureCluster, kubeConfigOf, up } from '../testbed/bed.js';
import { hostRunnerRun, removeFixture, seedItrsFixture, waitForFixtureReady } from '../testbed/fixture.js';
import {
  cpuSeconds,
  median,
  procStatusKb,
  memoryProbe,
  renderPeaks,
  rssSampler,
  startWorkerProcess,
  type WorkerProcess,
} from './support/worker-process.js';

const total = Number(process.env.NAMESPACES ?? 100);
const wave = Number(process.env.WAVE ?? 20);
const files = Number(process.env.FILES ?? 20);
const rounds = Number(process.env.ROUNDS ?? 3);
/** maxOpenWindows of each fleet; undefined: no limit. */
const variants = (process.env.OPEN_WINDOWS ?? 'none,4')
  .split(',')
  .map((v) => (v === 'none' ? undefined : Number(v)));
const rssBarMb = 300;
const seedConcurrency = 4;
const mb = (kb: number) => kb / 1024;

const bed = await up({ log: () => undefined });
const east = await ensureCluster(bed, 'east');
const clusters: Record<string, { kc: KubeConfig; pvRoot: string; kubeconfig: string }> = {
  bed: { kc: kubeConfigOf(bed), pvRoot: bed.pvRoot, kubeconfig: bed.kubeconfig },
  east: { kc: clusterConfig(east), pvRoot: east.pvRoot, kubeconfig: east.kubeconfig },
};
const client = await connectClient({ address: bed.temporal.address });
const stamp = Date.now().toString(36);
const taskQueue = `bench-waves-${stamp}`;
const seeded: { cluster: string; namespace: string }[] = [];

/** Seeds `count` namespaces on `cluster`, a few at a time, each Ready. */
async function seed(cluster: string, prefix: string, count: number): Promise<string[]> {
  const { kc, pvRoot } = clusters[cluster]!;
  const names = Array.from({ length: count }, (_, i) => `${prefix}-${i}-${stamp}`);
  for (let i = 0; i < names.length; i += seedConcurrency) {
    await Promise.all(
      names.slice(i, i + seedConcurrency).map(async (namespace) => {
        seeded.push({ cluster, namespace });
        await seedItrsFixture(kc, {
          namespace,
          pvRoot,
          filesPerVolume: files,
          databases: 'simulated',
          constraints: cluster === 'bed',
        });
        await waitForFixtureReady(kc, namespace, 180_000);
      }),
    );
  }
  return names;
}

const { namespace: _unused, ...defaults } = hostRunnerRun('unused');
const runDefaults = { ...defaults, verify: { checks: [] } };
const namespacePolicy = (p: PolicyState) => ({ labels: p.labels, annotations: p.annotations });
const before = new Map<string, PolicyState>();
/** Records the policies of every seeded namespace not recorded yet. */
async function recordPolicies(): Promise<void> {
  for (const { cluster, namespace } of seeded)
    if (!before.has(`${cluster}/${namespace}`))
      before.set(`${cluster}/${namespace}`, await policyState(clusters[cluster]!.kc, namespace));
}
let exact = 0;
let checked = 0;
const drifted: string[] = [];
/**
 * Compares the policies of every seeded namespace with what they were, then removes them: a
 * kwok node takes only so many pods, so each fleet's namespaces go before the next one's come.
 */
async function checkAndRemove(): Promise<void> {
  for (const { cluster, namespace } of seeded.splice(0)) {
    const after = await policyState(clusters[cluster]!.kc, namespace);
    const b = before.get(`${cluster}/${namespace}`)!;
    const same =
      isDeepStrictEqual(namespacePolicy(after), namespacePolicy(b)) &&
      isDeepStrictEqual(after.constraints, b.constraints);
    checked++;
    if (same) exact++;
    else drifted.push(`${cluster}/${namespace}`);
    await removeFixture(clusters[cluster]!.kc, namespace, clusters[cluster]!.pvRoot);
  }
}
const singles = await seed('bed', 'bench-one', rounds);
await recordPolicies();

const queues = [taskQueue, `${taskQueue}-bed`, `${taskQueue}-east`];
// A worker keeps an existing Schedule; a sweep every minute would only add load here.
for (const q of queues) await ensureSweeperSchedule(client, q, '1 hour');
const workers: Record<string, WorkerProcess> = {};
const samplers: Record<string, ReturnType<typeof rssSampler>> = {};
const probes: Record<string, ReturnType<typeof memoryProbe>> = {};
const single: { seconds: number; window: number }[] = [];
/** What one fleet of a variant did, and what its workers used meanwhile. */
interface FleetRun {
  maxOpenWindows: number | undefined;
  seconds: number;
  report: FleetReport | undefined;
  error: string | undefined;
  /** The most namespaces relaxed at the same instant, from each run's windows. */
  mostOpen: number;
  peaks: Record<string, number>;
  memory: Record<string, string>;
  cpu: Record<string, number>;
  /** Where each run's first window went, by cluster (from its history). */
  breakdowns: Record<string, WindowTimes[]>;
}
const runs: FleetRun[] = [];
/** Each worker's VmHWM at the end: its peak over every variant. */
const hwm: Record<string, number> = {};

/** Runs the fleet of variant `i` and waits for its end. */
async function runFleet(i: number): Promise<FleetRun> {
  const maxOpenWindows = variants[i];
  await checkAndRemove();
  const onBed = await seed('bed', `bench-waves-${i}-bed`, Math.ceil(total / 2));
  const onEast = await seed('east', `bench-waves-${i}-east`, Math.floor(total / 2));
  await recordPolicies();
  for (const sampler of Object.values(samplers)) sampler.lap();
  for (const p of Object.values(probes)) p.lap();
  const cpuBefore = Object.fromEntries(Object.entries(workers).map(([k, w]) => [k, cpuSeconds(w.pid)]));
  const t = performance.now();
  const { handle } = await startFleet(
    client,
    {
      name: `bench-${stamp}-${i}`,
      defaults: runDefaults,
      targets: [
        ...onBed.map((namespace) => ({ namespace, cluster: 'bed' })),
        ...onEast.map((namespace) => ({
          namespace,
          cluster: 'east',
          input: { policies: { gatekeeper: false } },
        })),
      ],
      canary: true,
      waveSize: wave,
      approvals: 'none',
      ...(maxOpenWindows ? { maxOpenWindows } : {}),
    },
    { taskQueue },
  );
  let report: FleetReport | undefined;
  let error: string | undefined;
  try {
    report = (await handle.result()) as FleetReport;
  } catch (err) {
    if (!(err instanceof WorkflowFailedError)) throw err;
    error = err.cause?.message ?? err.message;
    report =
      ((err.cause as { details?: unknown[] } | undefined)?.details?.[0] as FleetReport | undefined) ??
      undefined;
  }
  const seconds = (performance.now() - t) / 1000;
  const windows: [number, number][] = [];
  const breakdowns: Record<string, WindowTimes[]> = { bed: [], east: [] };
  for (const target of report?.targets ?? []) {
    if (target.state !== 'succeeded') continue;
    const handle = client.workflow.getHandle(target.workflowId);
    const r = (await handle.result()) as MigrationReport;
    for (const w of r.windows) if (w.closedAt) windows.push([Date.parse(w.openedAt), Date.parse(w.closedAt)]);
    const w = windowTimes(await handle.fetchHistory());
    if (w) breakdowns[target.cluster ?? 'bed']?.push(w);
  }
  const mostOpen = Math.max(
    0,
    ...windows.map(([from]) => windows.filter(([a, b]) => a <= from && from < b).length),
  );
  const peaks: Record<string, number> = {};
  for (const [k, sampler] of Object.entries(samplers)) peaks[k] = sampler.lap();
  const memory = Object.fromEntries(Object.entries(probes).map(([k, p]) => [k, renderPeaks(p.lap())]));
  const cpu = Object.fromEntries(
    Object.entries(workers).map(([k, w]) => [k, cpuSeconds(w.pid) - cpuBefore[k]!]),
  );
  return { maxOpenWindows, seconds, report, error, mostOpen, peaks, memory, cpu, breakdowns };
}
try {
  const temporal = { TEMPORAL_ADDRESS: bed.temporal.address };
  for (const k of ['fleet', 'bed', 'east']) probes[k] = memoryProbe();
  workers.fleet = await startWorkerProcess(['--task-queue', taskQueue], {
    ...temporal,
    KUBECONFIG: bed.kubeconfig,
    ...probes.fleet!.env,
  });
  for (const c of ['bed', 'east'])
    workers[c] = await startWorkerProcess(['--task-queue', taskQueue, '--cluster', c], {
      ...temporal,
      KUBECONFIG: clusters[c]!.kubeconfig,
      ...probes[c]!.env,
    });
  for (const [k, w] of Object.entries(workers)) samplers[k] = rssSampler(w.pid);

  for (const namespace of singles) {
    const t = performance.now();
    const { handle } = await startRun(
      client,
      { ...runDefaults, namespace },
      { taskQueue: `${taskQueue}-bed` },
    );
    const r = (await handle.result()) as MigrationReport;
    single.push({ seconds: (performance.now() - t) / 1000, window: r.windowSeconds });
  }
  for (const s of Object.values(samplers)) s.lap();
  for (const p of Object.values(probes)) p.lap();
  for (const [i] of variants.entries()) runs.push(await runFleet(i));
} finally {
  for (const [k, s] of Object.entries(samplers)) {
    hwm[k] = procStatusKb(workers[k]!.pid, 'VmHWM') ?? 0;
    s.stop();
  }
  for (const p of Object.values(probes)) p.remove();
  for (const w of Object.values(workers)) await w.stop();
  for (const q of queues)
    await client.schedule
      .getHandle(sweeperScheduleId(q))
      .delete()
      .catch(() => undefined);
}

await checkAndRemove();
await client.connection.close();

const medianOf = (xs: number[]) => (xs.length ? `${median(xs).toFixed(2)} s` : '-');
const oneWindow = median(single.map((s) => s.window));
const verdict = (ok: boolean) => (ok ? 'PASS' : 'MISS');
const lines = [
  `fleet over two clusters through migrateFleet: ${total} ITRS-like namespaces a fleet (${Math.ceil(total / 2)} on the bed's cluster, ${Math.floor(total / 2)} on a second), a canary then waves of ${wave}; kwok's databases, ~${files} files per data volume; a worker process per cluster and one for the fleet; a fleet per maxOpenWindows, one after the other on fresh namespaces`,
  `  single run on the bed's cluster (median of ${rounds}): ${median(single.map((s) => s.seconds)).toFixed(2)} s, window ${oneWindow.toFixed(2)} s`,
];
for (const run of runs) {
  const targets = run.report?.targets ?? [];
  const failed = targets.filter((t) => t.state !== 'succeeded');
  const windows = targets.flatMap((t) => (t.windowSeconds === null ? [] : [t.windowSeconds]));
  const windowsOn = (cluster: string) =>
    targets.flatMap((t) => (t.cluster === cluster && t.windowSeconds !== null ? [t.windowSeconds] : []));
  const windowRatio = windows.length ? median(windows) / oneWindow : NaN;
  const byWave = new Map<number, { start: number; end: number; n: number }>();
  for (const t of targets) {
    if (!t.startedAt || !t.finishedAt) continue;
    const w = byWave.get(t.wave) ?? { start: Infinity, end: 0, n: 0 };
    byWave.set(t.wave, {
      start: Math.min(w.start, Date.parse(t.startedAt)),
      end: Math.max(w.end, Date.parse(t.finishedAt)),
      n: w.n + 1,
    });
  }
  const peakMb = Math.max(...Object.values(run.peaks).map(mb));
  lines.push(
    `maxOpenWindows ${run.maxOpenWindows ?? 'unset (no limit)'}`,
    `  fleet: ${run.seconds.toFixed(1)} s in all (${(run.seconds / total).toFixed(2)} s per namespace); phase ${run.report?.phase ?? 'unknown'}${run.error ? ` (${run.error})` : ''}; continued as new ${run.report?.continuedAsNew ?? 0}×`,
    `    waves: ${[...byWave]
      .sort(([a], [b]) => a - b)
      .map(([w, x]) => `${w}: ${x.n} in ${((x.end - x.start) / 1000).toFixed(1)} s`)
      .join('; ')}`,
    `  runs failed or not run: ${failed.length}/${targets.length} (bar 0): ${verdict(failed.length === 0 && targets.length === total)}${failed
      .slice(0, 5)
      .map((f) => `\n    ${f.id}: ${f.state} ${f.message ?? ''}`)
      .join('')}`,
    `  namespaces relaxed at once, at most: ${run.mostOpen}`,
    `  window per run in the fleet: median ${windows.length ? median(windows).toFixed(2) : '-'} s, max ${windows.length ? Math.max(...windows).toFixed(2) : '-'} s; median / single ${windowRatio.toFixed(2)}× (bar ≤ 2×): ${verdict(windowRatio <= 2)}`,
    `    by cluster: bed (Gatekeeper) median ${medianOf(windowsOn('bed'))}, east (no Gatekeeper) median ${medianOf(windowsOn('east'))}`,
    ...Object.entries(run.breakdowns).map(
      ([c, ws]) =>
        `    where a window went on ${c}, relax step's end to restore step's end: ${renderWindowTimes(ws)}`,
    ),
    `  worker peak RSS (sampled): ${Object.entries(run.peaks)
      .map(([k, v]) => `${k} ${mb(v).toFixed(0)} MB`)
      .join(', ')} (bar ≤ ${rssBarMb} MB each): ${verdict(peakMb <= rssBarMb)}`,
    ...Object.entries(run.memory).map(([k, m]) => `    ${k} worker at its peaks: ${m}`),
    `  worker CPU: ${Object.entries(run.cpu)
      .map(([k, v]) => `${k} ${v.toFixed(1)} s`)
      .join(', ')}`,
  );
}
const [first, ...others] = runs;
const limitOf = (r: FleetRun) =>
  r.maxOpenWindows === undefined ? 'no limit' : `maxOpenWindows ${r.maxOpenWindows}`;
for (const run of first ? others : []) {
  const med = (r: FleetRun) =>
    median((r.report?.targets ?? []).flatMap((t) => (t.windowSeconds === null ? [] : [t.windowSeconds])));
  lines.push(
    `${limitOf(run)} against ${limitOf(first!)}: median window ${(med(run) / med(first!)).toFixed(2)}×, fleet time ${(run.seconds / first!.seconds).toFixed(2)}×, at most ${run.mostOpen} relaxed at once against ${first!.mostOpen}`,
  );
}
lines.push(
  `  workers' VmHWM over the whole bench: ${Object.entries(hwm)
    .map(([k, v]) => `${k} ${mb(v).toFixed(0)} MB`)
    .join(', ')}`,
  `  policies exactly as before (namespace labels and annotations, constraints): ${exact}/${checked}${drifted.length ? ` — drifted: ${drifted.slice(0, 5).join(', ')}` : ''}`,
);
process.stdout.write(lines.join('\n') + '\n');
