/**
 * A fleet over two clusters through `migrateFleet`: NAMESPACES namespaces (default 100), half on
 * the bed's cluster and half on a second simulated cluster (`ensureCluster`), a canary then waves
 * of WAVE (default 20), each cluster's runs on its own worker process (`--cluster`), the fleet
 * on a third. Before it, ROUNDS single runs on the bed's cluster give the window to compare with.
 * kwok runs the databases (FILES files per data volume); the Jobs run on each cluster's host runner.
 *
 * Bars: 0 failures; every policy exactly as before; each worker's peak RSS ≤ 300 MB; the
 * fleet's median window within 2× of a single run's.
 * `npm run bench -- fleet-waves` (NAMESPACES=…; WAVE=…; FILES=…; ROUNDS=…).
 */
import { isDeepStrictEqual } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import type { KubeConfig } from '@kubernetes/client-node';
import { startFleet } from '../src/app/fleets.js';
import { startRun } from '../src/app/runs.js';
import { connectClient, ensureSweeperSchedule, sweeperScheduleId } from '../src/app/worker.js';
import type { FleetReport } from '../src/workflows/fleet-messages.js';
import type { MigrationReport } from '../src/workflows/messages.js';
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
const singles = await seed('bed', 'bench-one', rounds);
const onBed = await seed('bed', 'bench-waves-bed', Math.ceil(total / 2));
const onEast = await seed('east', 'bench-waves-east', Math.floor(total / 2));
const namespacePolicy = (p: PolicyState) => ({ labels: p.labels, annotations: p.annotations });
const before = new Map<string, PolicyState>();
for (const { cluster, namespace } of seeded)
  before.set(`${cluster}/${namespace}`, await policyState(clusters[cluster]!.kc, namespace));

const queues = [taskQueue, `${taskQueue}-bed`, `${taskQueue}-east`];
// A worker keeps an existing Schedule; a sweep every minute would only add load here.
for (const q of queues) await ensureSweeperSchedule(client, q, '1 hour');
const workers: Record<string, WorkerProcess> = {};
const samplers: Record<string, ReturnType<typeof rssSampler>> = {};
const probes: Record<string, ReturnType<typeof memoryProbe>> = {};
const memory: Record<string, string> = {};
const single: { seconds: number; window: number }[] = [];
let fleetSeconds = 0;
let report: FleetReport | undefined;
let fleetError: string | undefined;
const peaks: Record<string, number> = {};
const cpu: Record<string, number> = {};
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

  const t = performance.now();
  const { handle } = await startFleet(
    client,
    {
      name: `bench-${stamp}`,
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
    },
    { taskQueue },
  );
  try {
    report = (await handle.result()) as FleetReport;
  } catch (err) {
    if (!(err instanceof WorkflowFailedError)) throw err;
    fleetError = err.cause?.message ?? err.message;
    report =
      ((err.cause as { details?: unknown[] } | undefined)?.details?.[0] as FleetReport | undefined) ??
      undefined;
  }
  fleetSeconds = (performance.now() - t) / 1000;
} finally {
  for (const [k, s] of Object.entries(samplers)) {
    peaks[k] = Math.max(s.lap(), procStatusKb(workers[k]!.pid, 'VmHWM') ?? 0);
    s.stop();
  }
  for (const [k, p] of Object.entries(probes)) {
    memory[k] = renderPeaks(p.lap());
    p.remove();
  }
  for (const [k, w] of Object.entries(workers)) cpu[k] = cpuSeconds(w.pid);
  for (const w of Object.values(workers)) await w.stop();
  for (const q of queues)
    await client.schedule
      .getHandle(sweeperScheduleId(q))
      .delete()
      .catch(() => undefined);
}

let exact = 0;
const drifted: string[] = [];
for (const { cluster, namespace } of seeded) {
  const after = await policyState(clusters[cluster]!.kc, namespace);
  const b = before.get(`${cluster}/${namespace}`)!;
  const same =
    isDeepStrictEqual(namespacePolicy(after), namespacePolicy(b)) &&
    isDeepStrictEqual(after.constraints, b.constraints);
  if (same) exact++;
  else drifted.push(`${cluster}/${namespace}`);
}
await client.connection.close();
for (const { cluster, namespace } of seeded)
  await removeFixture(clusters[cluster]!.kc, namespace, clusters[cluster]!.pvRoot);

const targets = report?.targets ?? [];
const failed = targets.filter((t) => t.state !== 'succeeded');
const windows = targets.flatMap((t) => (t.windowSeconds === null ? [] : [t.windowSeconds]));
const windowsOn = (cluster: string) =>
  targets.flatMap((t) => (t.cluster === cluster && t.windowSeconds !== null ? [t.windowSeconds] : []));
const medianOf = (xs: number[]) => (xs.length ? `${median(xs).toFixed(2)} s` : '-');
const oneWindow = median(single.map((s) => s.window));
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
const verdict = (ok: boolean) => (ok ? 'PASS' : 'MISS');
const peakMb = Math.max(...Object.values(peaks).map(mb));
process.stdout.write(
  [
    `fleet over two clusters through migrateFleet: ${total} ITRS-like namespaces (${onBed.length} on the bed's cluster, ${onEast.length} on a second), a canary then waves of ${wave}; kwok's databases, ~${files} files per data volume; a worker process per cluster and one for the fleet`,
    `  single run on the bed's cluster (median of ${rounds}): ${median(single.map((s) => s.seconds)).toFixed(2)} s, window ${oneWindow.toFixed(2)} s`,
    `  fleet: ${fleetSeconds.toFixed(1)} s in all (${(fleetSeconds / total).toFixed(2)} s per namespace); phase ${report?.phase ?? 'unknown'}${fleetError ? ` (${fleetError})` : ''}; continued as new ${report?.continuedAsNew ?? 0}×`,
    `    waves: ${[...byWave]
      .sort(([a], [b]) => a - b)
      .map(([w, x]) => `${w}: ${x.n} in ${((x.end - x.start) / 1000).toFixed(1)} s`)
      .join('; ')}`,
    `  runs failed or not run: ${failed.length}/${targets.length} (bar 0): ${verdict(failed.length === 0 && targets.length === total)}${failed
      .slice(0, 5)
      .map((f) => `\n    ${f.id}: ${f.state} ${f.message ?? ''}`)
      .join('')}`,
    `  window per run in the fleet: median ${windows.length ? median(windows).toFixed(2) : '-'} s, max ${windows.length ? Math.max(...windows).toFixed(2) : '-'} s; median / single ${windowRatio.toFixed(2)}× (bar ≤ 2×): ${verdict(windowRatio <= 2)}`,
    `    by cluster: bed (Gatekeeper) median ${medianOf(windowsOn('bed'))}, east (no Gatekeeper) median ${medianOf(windowsOn('east'))}`,
    `  worker peak RSS: ${Object.entries(peaks)
      .map(([k, v]) => `${k} ${mb(v).toFixed(0)} MB`)
      .join(', ')} (bar ≤ ${rssBarMb} MB each): ${verdict(peakMb <= rssBarMb)}`,
    ...Object.entries(memory).map(([k, m]) => `    ${k} worker at its peaks: ${m}`),
    `  worker CPU: ${Object.entries(cpu)
      .map(([k, v]) => `${k} ${v.toFixed(1)} s`)
      .join(', ')}`,
    `  policies exactly as before (namespace labels and annotations, constraints): ${exact}/${seeded.length}${drifted.length ? ` — drifted: ${drifted.slice(0, 5).join(', ')}` : ''}`,
  ].join('\n') + '\n',
);
