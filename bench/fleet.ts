/**
 * Fleet load on one worker: a real `runas-migrate worker` process migrates one namespace, then
 * NAMESPACES namespaces started at the same time (fixtures seeded beforehand, FILES files per
 * data volume, `admission` mode, no approvals, Jobs on the host runner, which runs every Job as
 * a host process). Reports the total time of each, per-run times and windows, and the worker's
 * memory: VmHWM from /proc/<pid>/status at the end, and VmRSS sampled throughout.
 *
 * Once per worker variant (WORKERS, `<waits>/<kube connections>` each, by default
 * `watch/per-request,watch/pooled`: a worker process each, fresh namespaces each), side by side in
 * one run: the worker's CPU time per run and its memory, each variant against the first. A probe
 * inside each worker (support/memory-probe.js) tells its JavaScript heap from the rest of its RSS.
 *
 * Bars: NAMESPACES at once in ≤ 3× the time of one; worker peak RSS ≤ 300 MB.
 * `npm run bench -- fleet` (NAMESPACES=…; FILES=…; ROUNDS=… single-namespace runs, median;
 * WORKERS=`<waits>/<connections>[/<node flags>][@<checkout>]`,… e.g. `watch/pooled,watch/pooled/--optimize-for-size`;
 * `@<checkout>` runs the worker of another built checkout, e.g. a `git worktree` of the commit before).
 */
import { cpus, loadavg } from 'node:os';
import { basename } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { MigrationInputRaw } from '../src/core/input.js';
import { startRun } from '../src/app/runs.js';
import { connectClient, ensureSweeperSchedule, sweeperScheduleId } from '../src/app/worker.js';
import { policyState, type PolicyState } from '../test/support/policy-state.js';
import { kubeConfigOf, up } from '../testbed/bed.js';
import { hostRunnerRun, removeFixture, seedItrsFixture, waitForFixtureReady } from '../testbed/fixture.js';
import {
  cpuSeconds,
  machineBusySeconds,
  median,
  memoryProbe,
  procStatusKb,
  renderPeaks,
  type MemoryPeaks,
  rssSampler,
  startWorkerProcess,
  type WorkerProcess,
} from './support/worker-process.js';
import type { MigrationReport } from '../src/workflows/messages.js';
import { cpuByProgram, processCpu } from './support/cpu.js';
import { renderWindowTimes, windowTimes, type WindowTimes } from './support/steps.js';
import type { WaitMode } from '../src/services/workloads.js';
import type { KubeConnections } from '../src/cluster/connections.js';

const fleetSize = Number(process.env.NAMESPACES ?? 20);
const files = Number(process.env.FILES ?? 200);
const rounds = Number(process.env.ROUNDS ?? 3);
const timeRatioBar = 3;
const rssBarMb = 300;
const seedConcurrency = 4;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mb = (kb: number) => kb / 1024;

const bed = await up({ name: process.env.RUNAS_MIGRATE_TESTBED ?? 'default', log: () => undefined });
const kc = kubeConfigOf(bed);
const client = await connectClient({ address: bed.temporal.address });
const stamp = Date.now().toString(36);
const taskQueue = `bench-fleet-${stamp}`;
const namespaces: string[] = [];

/** Seeds fresh fixtures, a few at a time, and waits until each is Ready. */
async function seed(prefix: string, count: number): Promise<string[]> {
  const names = Array.from({ length: count }, (_, i) => `${prefix}-${i}-${stamp}`);
  namespaces.push(...names);
  for (let i = 0; i < names.length; i += seedConcurrency) {
    await Promise.all(
      names.slice(i, i + seedConcurrency).map(async (namespace) => {
        // kwok runs the databases here: 20 namespaces of real servers would measure PostgreSQL.
        await seedItrsFixture(kc, {
          namespace,
          pvRoot: bed.pvRoot,
          filesPerVolume: files,
          databases: 'simulated',
        });
        await waitForFixtureReady(kc, namespace, 180_000);
      }),
    );
  }
  return names;
}

// Simulated pods cannot be exec'ed: the pod checks (Ready, admitted as uid:gid) stay.
const input = (namespace: string): MigrationInputRaw => ({
  ...hostRunnerRun(namespace, 'admission'),
  verify: { checks: [] },
});

interface Outcome {
  namespace: string;
  workflowId: string;
  seconds: number;
  report?: MigrationReport;
  error?: string;
}

/** Starts a run per namespace at the same time; each outcome is timed from the common start. */
async function migrate(names: string[]): Promise<{ total: number; outcomes: Outcome[] }> {
  const t0 = performance.now();
  const handles = await Promise.all(names.map((n) => startRun(client, input(n), { taskQueue })));
  const outcomes = await Promise.all(
    handles.map(({ input: i, handle }) =>
      (handle.result() as Promise<MigrationReport>).then(
        (report) => ({
          namespace: i.namespace,
          workflowId: handle.workflowId,
          seconds: (performance.now() - t0) / 1000,
          report,
        }),
        (err: unknown) => ({
          namespace: i.namespace,
          workflowId: handle.workflowId,
          seconds: (performance.now() - t0) / 1000,
          error: rootMessage(err),
        }),
      ),
    ),
  );
  return { total: (performance.now() - t0) / 1000, outcomes };
}

/** The innermost message of a failure (a run's failure wraps its activity's, which wraps the cause). */
function rootMessage(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  while (e?.cause) e = e.cause;
  return e?.message ?? String(err);
}

/** Seconds before the first window opened, relaxed, and after the last one closed. */
function phases(r: MigrationReport): { before: number; window: number; after: number } | undefined {
  const first = r.windows[0];
  const last = r.windows.at(-1);
  if (!first?.openedAt || !last?.closedAt) return undefined;
  const t = (iso: string) => Date.parse(iso) / 1000;
  return {
    before: t(first.openedAt) - t(r.startedAt),
    window: r.windowSeconds,
    after: t(r.finishedAt) - t(last.closedAt),
  };
}

const loadBefore = loadavg()[0]!;
/**
 * A worker process's settings: how its waits look, how it connects to the API server, and Node
 * flags beyond those of its launcher's first line (to weigh memory against CPU).
 */
interface Variant {
  waits: WaitMode;
  connections: KubeConnections;
  nodeFlags: string[];
  /** Another checkout (built) whose worker runs instead of this one's: a baseline. */
  checkout?: string;
}
const variants: Variant[] = (process.env.WORKERS ?? 'watch/per-request,watch/pooled').split(',').map((v) => {
  const [settings, checkout] = v.split('@') as [string, string | undefined];
  const [waits, connections, flags] = settings.split('/') as [
    WaitMode,
    KubeConnections | undefined,
    string | undefined,
  ];
  return {
    waits,
    connections: connections ?? 'pooled',
    nodeFlags: flags?.split(/\s+/).filter(Boolean) ?? [],
    ...(checkout ? { checkout } : {}),
  };
});
const nameOf = (v: Variant) =>
  [
    `${v.waits}/${v.connections}`,
    ...v.nodeFlags,
    ...(v.checkout ? [`(build of ${basename(v.checkout)})`] : []),
  ].join(' ');

/** What one worker process (its `variant`) did: single runs, then the fleet at once. */
interface Measured {
  variant: Variant;
  singles: string[];
  fleet: string[];
  single: Outcome[];
  many: { total: number; outcomes: Outcome[] };
  rss: { startup: number; single: number; fleet: number; hwm: number; end: number };
  cpu: { startup: number; single: number; fleet: number };
  /** The whole machine's busy CPU seconds (the bed's every process) over the single runs and the fleet. */
  machine: { single: number; fleet: number };
  /** The fleet's machine CPU by program, largest first. */
  programs: [string, number][];
  /** The main isolate's memory at its peaks, from the probe inside the worker. */
  memory: { startup: MemoryPeaks; single: MemoryPeaks; fleet: MemoryPeaks };
  startupSeconds: number;
  /** Where the first window of each run went, single runs and the fleet's. */
  windows: { single: WindowTimes[]; fleet: WindowTimes[] };
}

/** The window breakdown of each run that opened and closed one. */
async function windowsOf(os: Outcome[]): Promise<WindowTimes[]> {
  const out: WindowTimes[] = [];
  for (const o of os) {
    const w = windowTimes(await client.workflow.getHandle(o.workflowId).fetchHistory());
    if (w) out.push(w);
  }
  return out;
}

// The worker keeps an existing Schedule; a minute-by-minute sweep would only add load here.
await ensureSweeperSchedule(client, taskQueue, '1 hour');
const policiesBefore = new Map<string, PolicyState>();
const namespacePolicy = (p: PolicyState) => ({ labels: p.labels, annotations: p.annotations });

/** Seeds fresh namespaces, starts a worker of `variant`, and measures single runs and the fleet. */
async function measure(variant: Variant, index: number): Promise<Measured> {
  const singles = await seed(`bench-fleet-one-${index}`, rounds);
  const fleet = await seed(`bench-fleet-many-${index}`, fleetSize);
  for (const n of [...singles, ...fleet]) policiesBefore.set(n, await policyState(kc, n));
  let worker: WorkerProcess | undefined;
  let sampler: ReturnType<typeof rssSampler> | undefined;
  const single: Outcome[] = [];
  const rss = { startup: 0, single: 0, fleet: 0, hwm: 0, end: 0 };
  const cpu = { startup: 0, single: 0, fleet: 0 };
  const machine = { single: 0, fleet: 0 };
  const probe = memoryProbe();
  try {
    const args = [
      '--task-queue',
      taskQueue,
      '--waits',
      variant.waits,
      '--kube-connections',
      variant.connections,
    ];
    worker = await startWorkerProcess(
      args,
      { KUBECONFIG: bed.kubeconfig, TEMPORAL_ADDRESS: bed.temporal.address, ...probe.env },
      variant.nodeFlags,
      variant.checkout,
    );
    const pid = worker.pid;
    sampler = rssSampler(pid);
    const startupSeconds = worker.startupSeconds;
    await sleep(1000);
    rss.startup = sampler.lap();
    const memory = { startup: probe.lap(), single: probe.lap(), fleet: probe.lap() };
    cpu.startup = cpuSeconds(pid);
    const busySingle = machineBusySeconds();
    for (const n of singles) single.push(...(await migrate([n])).outcomes);
    machine.single = machineBusySeconds() - busySingle;
    rss.single = sampler.lap();
    memory.single = probe.lap();
    cpu.single = cpuSeconds(pid) - cpu.startup;
    const busy = machineBusySeconds();
    const processesBefore = processCpu();
    const many = await migrate(fleet);
    machine.fleet = machineBusySeconds() - busy;
    const programs = cpuByProgram(processesBefore, processCpu(), machine.fleet);
    rss.fleet = sampler.lap();
    memory.fleet = probe.lap();
    cpu.fleet = cpuSeconds(pid) - cpu.startup - cpu.single;
    rss.hwm = procStatusKb(pid, 'VmHWM') ?? 0;
    rss.end = procStatusKb(pid, 'VmRSS') ?? 0;
    const windows = { single: await windowsOf(single), fleet: await windowsOf(many.outcomes) };
    return {
      variant,
      singles,
      fleet,
      single,
      many,
      rss,
      cpu,
      machine,
      programs,
      memory,
      startupSeconds,
      windows,
    };
  } finally {
    sampler?.stop();
    await worker?.stop();
    probe.remove();
  }
}

// Constraints are cluster-wide: compared once at the end; each namespace's own labels and
// annotations as soon as its variant is done, before its fixtures go (several variants' fixtures
// at once would fill the bed's nodes).
let namespacesExact = 0;
let constraintsAfter: PolicyState['constraints'] = {};
async function checkAndRemove(names: readonly string[]): Promise<void> {
  for (const n of names) {
    const after = await policyState(kc, n);
    constraintsAfter = after.constraints;
    if (isDeepStrictEqual(namespacePolicy(after), namespacePolicy(policiesBefore.get(n)!))) namespacesExact++;
  }
  await removeFixtures(names);
}

/** Removes fixtures a few at a time (each waits for its namespace to be gone). */
async function removeFixtures(names: readonly string[]): Promise<void> {
  for (let i = 0; i < names.length; i += seedConcurrency * 2) {
    const some = names.slice(i, i + seedConcurrency * 2);
    await Promise.all(some.map((n) => removeFixture(kc, n, bed.pvRoot)));
    for (const n of some) namespaces.splice(namespaces.indexOf(n), 1);
  }
}

const measured: Measured[] = [];
try {
  for (const [i, v] of variants.entries()) {
    const m = await measure(v, i);
    measured.push(m);
    await checkAndRemove([...m.singles, ...m.fleet]);
  }
} finally {
  await client.schedule
    .getHandle(sweeperScheduleId(taskQueue))
    .delete()
    .catch(() => undefined);
  await removeFixtures([...namespaces]);
}
const loadAfter = loadavg()[0]!;
const constraintsBefore = policiesBefore.values().next().value!.constraints;
const constraintDiffs = Object.keys({ ...constraintsBefore, ...constraintsAfter })
  .filter((k) => !isDeepStrictEqual(constraintsBefore[k], constraintsAfter[k]))
  .map(
    (k) => `${k}: was ${JSON.stringify(constraintsBefore[k])}, now ${JSON.stringify(constraintsAfter[k])}`,
  );
await client.connection.close();

const stats = (xs: number[]) =>
  xs.length
    ? `min ${Math.min(...xs).toFixed(2)}, median ${median(xs).toFixed(2)}, max ${Math.max(...xs).toFixed(2)} s`
    : 'none';
const reportsOf = (os: Outcome[]) => os.flatMap((o) => (o.report ? [o.report] : []));
const phaseLine = (os: Outcome[]) => {
  const ps = reportsOf(os).flatMap((r) => phases(r) ?? []);
  return ps.length
    ? `before the window ${median(ps.map((p) => p.before)).toFixed(2)} s, window ${median(ps.map((p) => p.window)).toFixed(2)} s, after it ${median(ps.map((p) => p.after)).toFixed(2)} s (medians)`
    : 'no completed run';
};
const verdict = (value: number, bar: number, unit: string) =>
  value <= bar ? 'PASS' : `MISS (by ${(value - bar).toFixed(unit === 'MB' ? 0 : 2)} ${unit})`;
const lines: string[] = [
  `fleet load on one worker process per variant (${fleetSize} ITRS-like namespaces at once vs 1; 3 Jobs and 9 volumes each, ~${files} files per data volume; admission mode; Jobs on the host runner); machine load average ${loadBefore.toFixed(1)} before, ${loadAfter.toFixed(1)} after`,
];
const perVariant: { name: string; single: number; fleet: number; ratio: number; peakMb: number }[] = [];
for (const m of measured) {
  const { single, many, rss, cpu } = m;
  const failed = [...single, ...many.outcomes].filter((o) => o.error);
  const one = median(single.map((o) => o.seconds));
  const all = many.total;
  const ratio = all / one;
  const peakMb = mb(Math.max(rss.hwm, rss.fleet, rss.single, rss.startup));
  const jobSeconds = reportsOf(many.outcomes).flatMap((r) => r.jobs.map((j) => j.seconds ?? 0));
  perVariant.push({
    name: nameOf(m.variant),
    single: cpu.single / single.length,
    fleet: cpu.fleet / fleetSize,
    ratio,
    peakMb,
  });
  lines.push(
    `worker: --waits ${m.variant.waits} --kube-connections ${m.variant.connections}${m.variant.nodeFlags.length ? `; node ${m.variant.nodeFlags.join(' ')}` : ''}${m.variant.checkout ? `; the build of ${basename(m.variant.checkout)}` : ''}`,
    `  1 namespace (median of ${rounds}): ${one.toFixed(2)} s (${single.map((o) => o.seconds.toFixed(2)).join(', ')}); ${phaseLine(single)}`,
    `  ${fleetSize} namespaces at once: ${all.toFixed(2)} s in total; ratio ${ratio.toFixed(2)}× (bar ≤ ${timeRatioBar}×): ${verdict(ratio, timeRatioBar, '×')}`,
    `    per run, from the common start: ${stats(many.outcomes.map((o) => o.seconds))}; ${phaseLine(many.outcomes)}`,
    `    window per run: ${stats(reportsOf(many.outcomes).map((r) => r.windowSeconds))}`,
    `    where a window went, single runs: ${renderWindowTimes(m.windows.single)}`,
    `    where a window went, the fleet's runs: ${renderWindowTimes(m.windows.fleet)}`,
    `    ownership Job time (${jobSeconds.length} Jobs on the host runner): ${stats(jobSeconds)}`,
    `    worker CPU: ${(cpu.single / single.length).toFixed(2)} s per single run, ${(cpu.fleet / fleetSize).toFixed(2)} s per run of the fleet (${cpu.fleet.toFixed(1)} s over its ${all.toFixed(1)} s); ${cpu.startup.toFixed(1)} s to start in ${m.startupSeconds.toFixed(1)} s`,
    `    machine CPU (every process of the bed): ${(m.machine.single / single.length).toFixed(1)} s per single run, ${(m.machine.fleet / fleetSize).toFixed(1)} s per run of the fleet (${m.machine.fleet.toFixed(0)} s over its ${all.toFixed(1)} s: ${(m.machine.fleet / all).toFixed(2)} of ${cpus().length} cores busy); at that cost ${fleetSize} runs need at least ${(m.machine.fleet / cpus().length / one).toFixed(1)}× one run's time here`,
    `      by program: ${m.programs
      .filter(([, sec]) => sec >= 0.5)
      .map(([program, sec]) => `${program} ${sec.toFixed(1)} s`)
      .join(', ')}`,
    `  worker peak RSS ${peakMb.toFixed(0)} MB (bar ≤ ${rssBarMb} MB): ${verdict(peakMb, rssBarMb, 'MB')}`,
    `    VmHWM ${mb(rss.hwm).toFixed(0)} MB; sampled VmRSS peaks: started and idle ${mb(rss.startup).toFixed(0)} MB, single runs ${mb(rss.single).toFixed(0)} MB, fleet ${mb(rss.fleet).toFixed(0)} MB; at the end ${mb(rss.end).toFixed(0)} MB`,
    `    memory at its peaks: idle ${renderPeaks(m.memory.startup)}; single runs ${renderPeaks(m.memory.single)}; fleet ${renderPeaks(m.memory.fleet)}`,
    `  runs failed: ${failed.length}/${single.length + many.outcomes.length}${failed.map((f) => `\n    ${f.namespace}: ${f.error}`).join('')}`,
  );
}
const [first, ...others] = perVariant;
for (const o of first ? others : [])
  lines.push(
    `${o.name} against ${first!.name}: worker CPU per run ${(o.single / first!.single).toFixed(2)}× single, ${(o.fleet / first!.fleet).toFixed(2)}× in the fleet; fleet time ratio ${o.ratio.toFixed(2)}× against ${first!.ratio.toFixed(2)}×; peak RSS ${o.peakMb.toFixed(0)} against ${first!.peakMb.toFixed(0)} MB`,
  );
lines.push(
  `namespace labels and annotations exactly as before: ${namespacesExact}/${policiesBefore.size}; Gatekeeper constraints exactly as before: ${constraintDiffs.length ? `no — ${constraintDiffs.join('; ')}` : 'yes'}`,
);
process.stdout.write(lines.join('\n') + '\n');
