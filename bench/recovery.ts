/**
 * Recovery after the worker dies with the security window open: a real `runas-migrate worker`
 * process (own process group) is SIGKILLed while the policies are relaxed, a new one is started
 * at once, and the namespace is polled until the policies are back (the relaxation annotation
 * gone and PSA `enforce` at its original value). Two scenarios, each on a fresh fixture:
 *
 * - `Jobs in progress`: `job-duration` mode; the worker dies while the run waits for its Jobs,
 *   whose pods are held Pending (by a node label) until the kill and then run on the host runner
 *   over FILES files per data volume while no worker is alive, as long-running Jobs would; the
 *   run must finish by itself.
 * - `held open + abort`: the Jobs' pods can never be scheduled, so the window stays open; the
 *   worker dies and the operator aborts at once; the compensations must put everything back.
 *
 * Bar: kill → policies restored ≤ the activity heartbeat timeout (30 s) + 10 s, median of ROUNDS.
 * `npm run bench -- recovery` (FILES=… files per data volume; ROUNDS=…).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { BatchV1Api, CoreV1Api, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import type { Client } from '@temporalio/client';
import type { MigrationInputRaw } from '../src/core/input.js';
import { RelaxationAnnotation } from '../src/core/policy.js';
import { queryStatus, startRun } from '../src/app/runs.js';
import { connectClient, ensureSweeperSchedule, sweeperScheduleId } from '../src/app/worker.js';
import { policyState } from '../test/support/policy-state.js';
import { namespaceSnapshot, type NamespaceSnapshot } from '../test/support/snapshot.js';
import { HostRunnerNodeName, kubeConfigOf, up } from '../testbed/bed.js';
import { hostRunnerRun, removeFixture, seedItrsFixture, waitForFixtureReady } from '../testbed/fixture.js';
import { HostRunnerPlacement } from '../testbed/host-runner/runner.js';
import { waitFor } from '../testbed/process.js';
import { abortSignal, type MigrationReport } from '../src/workflows/messages.js';

const files = Number(process.env.FILES ?? 10_000);
const rounds = Number(process.env.ROUNDS ?? 3);
const heartbeatTimeoutSeconds = 30;
const barSeconds = heartbeatTimeoutSeconds + 10;
const giveUpSeconds = 180;
const EnforceLabel = 'pod-security.kubernetes.io/enforce';
const HoldLabel = 'runas-migrate.dev/bench-hold';
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** `p`'s value, or undefined after `seconds`; the timer does not keep the process alive. */
const within = <T>(p: Promise<T>, seconds: number) =>
  Promise.race([p, new Promise<undefined>((r) => setTimeout(() => r(undefined), seconds * 1000).unref())]);

const bed = await up({ name: process.env.RUNAS_MIGRATE_TESTBED ?? 'default', log: () => undefined });
const kc = kubeConfigOf(bed);
const core = kc.makeApiClient(CoreV1Api);
const batch = kc.makeApiClient(BatchV1Api);
const cli = fileURLToPath(new URL('../bin/runas-migrate.js', import.meta.url));
const client: Client = await connectClient({ address: bed.temporal.address });
const children: ChildProcess[] = [];
const namespaces: string[] = [];
const schedules: string[] = [];
const suffix = () => `${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;

/** A worker in its own process group, as in production: `runas-migrate worker`. */
interface WorkerProcess {
  child: ChildProcess;
  /** The end of its stderr, for errors. */
  stderr(): string;
  /** Seconds from spawn until it polls its task queue; undefined if it never does. */
  startup: Promise<number | undefined>;
}

function workerProcess(taskQueue: string): WorkerProcess {
  const spawnedAt = performance.now();
  const child = spawn(process.execPath, [cli, 'worker', '--task-queue', taskQueue], {
    env: { ...process.env, KUBECONFIG: bed.kubeconfig, TEMPORAL_ADDRESS: bed.temporal.address },
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  children.push(child);
  let tail = '';
  const startup = new Promise<number | undefined>((resolve) => {
    child.stderr.on('data', (d: Buffer) => {
      tail = (tail + d.toString()).slice(-4000);
      if (tail.includes('worker polling')) resolve((performance.now() - spawnedAt) / 1000);
    });
    child.once('exit', () => resolve(undefined));
  });
  return { child, stderr: () => tail, startup };
}

/** Sets (or with null removes) the label the held Jobs' pods wait for on the host runner's node. */
async function holdRunnerNode(value: string | null): Promise<void> {
  await core.patchNode(
    { name: HostRunnerNodeName, body: { metadata: { labels: { [HoldLabel]: value } } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
  );
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    // already gone
  }
}

async function stopWorker(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  killGroup(child, 'SIGTERM');
  await within(exited, 15);
  killGroup(child, 'SIGKILL');
}

async function fixture(prefix: string, filesPerVolume: number): Promise<string> {
  const namespace = `${prefix}-${suffix()}`;
  namespaces.push(namespace);
  await seedItrsFixture(kc, { namespace, pvRoot: bed.pvRoot, filesPerVolume });
  await waitForFixtureReady(kc, namespace, 120_000);
  return namespace;
}

/** A fresh task queue whose sweeper Schedule is created first with a long interval. */
async function taskQueueFor(prefix: string): Promise<string> {
  const taskQueue = `${prefix}-${suffix()}`;
  // The worker keeps an existing Schedule: a minute-by-minute sweep would only add load, and it
  // leaves live runs alone anyway, so it plays no part in this recovery.
  await ensureSweeperSchedule(client, taskQueue, '1 hour');
  schedules.push(sweeperScheduleId(taskQueue));
  return taskQueue;
}

/** Polls the namespace until the policies are back; seconds since `from`, or undefined. */
async function restoredAfter(namespace: string, enforce: string | undefined, from: number) {
  const deadline = from + giveUpSeconds * 1000;
  while (performance.now() < deadline) {
    const ns = await core.readNamespace({ name: namespace }).catch(() => undefined);
    if (
      ns &&
      ns.metadata?.annotations?.[RelaxationAnnotation] === undefined &&
      ns.metadata?.labels?.[EnforceLabel] === enforce
    )
      return (performance.now() - from) / 1000;
    await sleep(50);
  }
  return undefined;
}

/** Waits until `check` answers, failing early when the worker process died. */
async function until<T>(what: string, worker: WorkerProcess, check: () => Promise<T>) {
  return waitFor(
    what,
    async () => {
      if (worker.child.exitCode !== null)
        throw new Error(`worker exited (${worker.child.exitCode}): ${worker.stderr()}`);
      return check().catch(() => undefined);
    },
    120_000,
    50,
  );
}

/** Whether the run has relaxed the policies and created its Jobs (their pods not yet done). */
async function relaxedWithJobs(namespace: string): Promise<true | undefined> {
  const s = await queryStatus(client, namespace);
  const relaxed = (await core.readNamespace({ name: namespace })).metadata?.annotations?.[
    RelaxationAnnotation
  ];
  return relaxed && s.jobs.length > 0 && s.jobs.every((j) => j.state === 'created') ? true : undefined;
}

interface Round {
  recovery?: number;
  completed?: number;
  exact: boolean;
  /** Seconds the new worker took to poll its task queue. */
  startup?: number;
  detail: string;
}

const input = (namespace: string): MigrationInputRaw => hostRunnerRun(namespace, 'job-duration');

async function jobsRunning(): Promise<Round> {
  const namespace = await fixture('bench-rec-jobs', files);
  const before = await policyState(kc, namespace);
  const taskQueue = await taskQueueFor('bench-rec-jobs');
  const first = workerProcess(taskQueue);
  // The Jobs' pods wait for a node label that is set only after the kill, so the Jobs are in
  // progress when the worker dies and do their work while no worker is alive, as long Jobs would.
  const held = {
    ...input(namespace),
    job: {
      ...HostRunnerPlacement,
      nodeSelector: { ...HostRunnerPlacement.nodeSelector, [HoldLabel]: namespace },
    },
  };
  const { handle } = await startRun(client, held, { taskQueue });
  await until('policies relaxed and Jobs created', first, () => relaxedWithJobs(namespace));
  // Let the run get into waitForJobs, where it spends the life of real Jobs.
  await sleep(1000);
  killGroup(first.child, 'SIGKILL');
  const killedAt = performance.now();
  const second = workerProcess(taskQueue);
  await holdRunnerNode(namespace);
  try {
    const recovery = await restoredAfter(namespace, before.labels[EnforceLabel], killedAt);
    let failure: string | undefined;
    const report = (await within(
      handle.result().catch((err: unknown) => void (failure = String(err))),
      giveUpSeconds,
    )) as MigrationReport | undefined;
    const completed = report ? (performance.now() - killedAt) / 1000 : undefined;
    const exact = isDeepStrictEqual(await policyState(kc, namespace), before);
    const attempts = report?.jobs.map((j) => j.attempts).join('/') ?? '?';
    const jobSeconds = report?.jobs.map((j) => j.seconds?.toFixed(1) ?? '?').join('/') ?? '?';
    const leftJobs = (await batch.listNamespacedJob({ namespace })).items.length;
    return {
      recovery,
      completed,
      exact,
      startup: await second.startup,
      detail: failure
        ? `run failed: ${failure}`
        : `${report?.windows.length ?? '?'} window(s) of ${report?.windowSeconds.toFixed(1)} s, ` +
          `Job attempts ${attempts}, Job seconds ${jobSeconds}, ${leftJobs} Jobs left`,
    };
  } finally {
    await holdRunnerNode(null);
    await stopWorker(second.child);
  }
}

function differences(a: NamespaceSnapshot, b: NamespaceSnapshot): string[] {
  return (Object.keys(a) as (keyof NamespaceSnapshot)[]).filter((k) => !isDeepStrictEqual(a[k], b[k]));
}

async function heldOpenAbort(): Promise<Round> {
  const namespace = await fixture('bench-rec-held', 20);
  const snapshot = await namespaceSnapshot(kc, namespace, bed.pvRoot);
  const taskQueue = await taskQueueFor('bench-rec-held');
  const first = workerProcess(taskQueue);
  const stuck = { ...input(namespace), job: { nodeSelector: { 'runas-migrate.dev/no-such-node': 'true' } } };
  const { handle } = await startRun(client, stuck, { taskQueue });
  await until('policies relaxed and Jobs created', first, () => relaxedWithJobs(namespace));
  await sleep(1000);
  killGroup(first.child, 'SIGKILL');
  const killedAt = performance.now();
  const second = workerProcess(taskQueue);
  try {
    await handle.signal(abortSignal, { reason: 'worker lost during the change window', by: 'bench' });
    const recovery = await restoredAfter(namespace, snapshot.policies.labels[EnforceLabel], killedAt);
    const ended = await within(
      handle.result().then(
        () => 'completed',
        () => 'aborted',
      ),
      giveUpSeconds,
    );
    const completed = ended ? (performance.now() - killedAt) / 1000 : undefined;
    const after = await namespaceSnapshot(kc, namespace, bed.pvRoot);
    const diff = differences(snapshot, after);
    return {
      recovery,
      completed,
      exact: isDeepStrictEqual(after.policies, snapshot.policies),
      startup: await second.startup,
      detail: `run ${ended ?? 'still open'}, namespace snapshot ${diff.length ? `differs in ${diff.join(', ')}` : 'equal to before'}`,
    };
  } finally {
    await stopWorker(second.child);
  }
}

const scenarios = [
  {
    name: `Jobs in progress (job-duration mode, ${files} files per data volume, Jobs run on while no worker is alive)`,
    run: jobsRunning,
  },
  { name: 'held open + abort (Jobs unschedulable, operator aborts at once)', run: heldOpenAbort },
];
const results = new Map<string, Round[]>(scenarios.map((s) => [s.name, []]));
const loadBefore = loadavg()[0]!;
try {
  for (let r = 0; r < rounds; r++) {
    for (const s of scenarios) {
      const round = await s.run();
      results.get(s.name)!.push(round);
      process.stderr.write(
        `[recovery] ${s.name} round ${r + 1}: restored ${round.recovery?.toFixed(1) ?? 'never'} s, ` +
          `ended ${round.completed?.toFixed(1) ?? 'never'} s, new worker polling after ${round.startup?.toFixed(1) ?? '?'} s; ${round.detail}\n`,
      );
    }
  }
} finally {
  for (const c of children) killGroup(c, 'SIGKILL');
  for (const id of schedules)
    await client.schedule
      .getHandle(id)
      .delete()
      .catch(() => undefined);
  await client.connection.close();
  for (const name of namespaces) {
    await removeFixture(kc, name, bed.pvRoot);
  }
}

const fmt = (xs: (number | undefined)[]) =>
  xs.map((x) => (x === undefined ? `> ${giveUpSeconds}` : x.toFixed(1))).join(', ');
const lines = [
  `recovery after a SIGKILLed worker with the window open (a new worker started at once; median of ${rounds}; ` +
    `machine load average ${loadBefore.toFixed(1)} before, ${loadavg()[0]!.toFixed(1)} after)`,
];
for (const [name, rs] of results) {
  const recovery = median(rs.map((r) => r.recovery ?? Infinity));
  const completed = median(rs.map((r) => r.completed ?? Infinity));
  const verdict =
    recovery <= barSeconds
      ? 'PASS'
      : `MISS (by ${Number.isFinite(recovery) ? (recovery - barSeconds).toFixed(1) : '∞'} s)`;
  lines.push(
    `  ${name}:`,
    `    kill → policies restored ${recovery.toFixed(1)} s (bar ≤ ${barSeconds} s: heartbeat timeout ${heartbeatTimeoutSeconds} s + 10 s): ${verdict}`,
    `    kill → run ended ${completed.toFixed(1)} s; rounds: restored ${fmt(rs.map((r) => r.recovery))} s, ended ${fmt(rs.map((r) => r.completed))} s`,
    `    policies exactly as before: ${rs.filter((r) => r.exact).length}/${rs.length}; ` +
      `new worker polling after ${fmt(rs.map((r) => r.startup))} s`,
    ...rs.map((r, i) => `    round ${i + 1}: ${r.detail}`),
  );
}
process.stdout.write(lines.join('\n') + '\n');
