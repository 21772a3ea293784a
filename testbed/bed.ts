/**
 * The test bed: a Temporal dev server with its Web UI, a simulated cluster (kwokctl binary
 * runtime with admission on, so Pod Security Admission is real), the host runner, and the
 * ITRS-like fixture. State lives outside the repository; every process is recorded by PID.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { SearchAttribute, SearchAttributeTypes } from '../src/core/names.js';
import { createFakeNodes, installClusterFixture, seedItrsFixture, waitForFixtureReady } from './fixture.js';
import {
  gatekeeperCrdDir,
  gatekeeperReady,
  installConstraintTemplates,
  installGatekeeperObjects,
  makeServingCertificate,
  planGatekeeper,
  registerWebhook,
  startGatekeeper,
  webhookConfiguration,
  type GatekeeperState,
} from './gatekeeper.js';
import {
  GiveUp,
  freePort,
  isAlive,
  processesWith,
  startDetached,
  stopProcess,
  waitFor,
  type RecordedProcess,
} from './process.js';
import { cacheRoot, ensureTool, testbedDir, toolPathDirs, ToolName, type Log } from './tools.js';

const run = promisify(execFile);

/** Name of the host runner's node. */
export const HostRunnerNodeName = 'host-runner';

/** Namespace of the fixture that `up` seeds. */
export const FixtureNamespace = 'itrs';

/** What a running test bed recorded about itself. */
export interface BedState {
  name: string;
  dir: string;
  kubeconfig: string;
  pvRoot: string;
  temporal: {
    address: string;
    uiUrl: string;
    port: number;
    uiPort: number;
    dbFile: string;
    process?: RecordedProcess;
  };
  cluster: { name: string; workdir: string };
  runner: { port: number; process?: RecordedProcess };
  /** Absent from the state of a bed started before Gatekeeper ran on it. */
  gatekeeper?: GatekeeperState;
  /** Tool name → path, for PATH and for tests that drive the CLIs. */
  tools: Partial<Record<ToolName, string>>;
  /** Further simulated clusters, started on demand ({@link ensureCluster}), by name. */
  clusters?: Record<string, ExtraCluster>;
  startedAt: string;
}

/**
 * A further simulated cluster of a bed, for fleets over several clusters: its own control plane
 * (kwokctl, admission on), host runner and fake nodes; no Temporal and no Gatekeeper of its own.
 */
export interface ExtraCluster {
  name: string;
  /** kwokctl's name of it. */
  clusterName: string;
  kubeconfig: string;
  pvRoot: string;
  runner: { port: number; process?: RecordedProcess };
}

/** Folder of a named test bed. */
export function bedDir(name: string): string {
  return join(cacheRoot(), 'testbed', name);
}

const stateFile = (name: string) => join(bedDir(name), 'state.json');

/** Reads the recorded state of a test bed, if any. */
export function readState(name: string): BedState | undefined {
  const f = stateFile(name);
  if (!existsSync(f)) return undefined;
  return JSON.parse(readFileSync(f, 'utf8')) as BedState;
}

function writeState(state: BedState): void {
  writeFileSync(stateFile(state.name), JSON.stringify(state, null, 2));
}

/** Loads the bed's kubeconfig. */
export function kubeConfigOf(state: BedState): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(state.kubeconfig);
  return kc;
}

/** Health of each part of a bed. */
export interface BedHealth {
  temporal: boolean;
  apiserver: boolean;
  runner: boolean;
  runnerNodeReady: boolean;
  gatekeeper: boolean;
}

async function temporalHealthy(state: BedState): Promise<boolean> {
  if (!state.tools.temporal) return false;
  try {
    const { stdout } = await run(
      state.tools.temporal,
      ['operator', 'cluster', 'health', '--address', state.temporal.address],
      {
        timeout: 10_000,
      },
    );
    return stdout.includes('SERVING');
  } catch {
    return false;
  }
}

/** Checks every part of a bed. */
export async function health(state: BedState): Promise<BedHealth> {
  const result: BedHealth = {
    temporal: false,
    apiserver: false,
    runner: isAlive(state.runner.process),
    runnerNodeReady: false,
    gatekeeper: isAlive(state.gatekeeper?.process) && (await gatekeeperReady(state.gatekeeper!)),
  };
  result.temporal = isAlive(state.temporal.process) && (await temporalHealthy(state));
  if (existsSync(state.kubeconfig)) {
    try {
      const core = kubeConfigOf(state).makeApiClient(CoreV1Api);
      const node = await core.readNode({ name: HostRunnerNodeName });
      result.apiserver = true;
      result.runnerNodeReady =
        node.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
    } catch (err) {
      result.apiserver = (err as { code?: number }).code === 404;
    }
  }
  return result;
}

const healthy = (h: BedHealth) => h.temporal && h.apiserver && h.runner && h.runnerNodeReady && h.gatekeeper;

/** Options of `up`. */
export interface UpOptions {
  name?: string;
  log?: Log;
  /** Seed the ITRS-like fixture in namespace `itrs`. @default true */
  fixture?: boolean;
}

/**
 * Starts a test bed, or reuses the running one when every part is healthy.
 *
 * @returns the bed's recorded state.
 */
export async function up(opts: UpOptions = {}): Promise<BedState> {
  const name = opts.name ?? 'default';
  const log = opts.log ?? ((l: string) => process.stderr.write(`[testbed] ${l}\n`));
  const started = Date.now();
  const existing = readState(name);
  if (existing) {
    const h = await health(existing);
    if (healthy(h)) {
      log(`reusing running test bed "${name}"`);
      return existing;
    }
    log(`test bed "${name}" is not healthy (${JSON.stringify(h)}): restarting it`);
    await down({ name, log });
  }
  const tools: Partial<Record<ToolName, string>> = {};
  for (const t of [
    ToolName.Temporal,
    ToolName.Kubectl,
    ToolName.KubeApiserver,
    ToolName.KubeControllerManager,
    ToolName.KubeScheduler,
    ToolName.Etcd,
    ToolName.Kwok,
    ToolName.Kwokctl,
    ToolName.HostExec,
    ToolName.Gatekeeper,
  ]) {
    tools[t] = await ensureTool(t, log);
  }
  const dir = bedDir(name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  let uiPort = await freePort();
  while (uiPort === port) uiPort = await freePort();
  const state: BedState = {
    name,
    dir,
    kubeconfig: join(dir, 'kubeconfig.yaml'),
    pvRoot: join(dir, 'pv'),
    temporal: {
      address: `127.0.0.1:${port}`,
      uiUrl: `http://127.0.0.1:${uiPort}`,
      port,
      uiPort,
      dbFile: join(dir, 'temporal.db'),
    },
    cluster: { name: `runas-migrate-${name}`, workdir: join(dir, 'kwok') },
    runner: { port: await freePort() },
    tools,
    startedAt: new Date().toISOString(),
  };
  writeState(state);

  log(`starting Temporal dev server on ${state.temporal.address} (Web UI ${state.temporal.uiUrl})`);
  state.temporal.process = startTemporal(state);
  writeState(state);

  log('creating the simulated cluster (kwokctl, binary runtime, admission on)');
  await createCluster(state, log);
  const kc = kubeConfigOf(state);

  log('starting Gatekeeper');
  const gatekeeper = await planGatekeeper(dir);
  const caPem = makeServingCertificate(gatekeeper);
  await installGatekeeperObjects(kc, gatekeeperCrdDir(tools[ToolName.Gatekeeper]!));
  gatekeeper.process = startGatekeeper(tools[ToolName.Gatekeeper]!, gatekeeper, state.kubeconfig);
  state.gatekeeper = gatekeeper;
  writeState(state);

  log('starting the host runner');
  state.runner.process = startRunner(state);
  writeState(state);

  await createFakeNodes(kc, 2);
  await waitFor('Temporal dev server', () => temporalHealthy(state), 60_000, 500);
  await waitFor(
    'host runner node Ready',
    async () => {
      if (!isAlive(state.runner.process)) {
        throw new GiveUp(`host runner exited: see ${state.runner.process?.logFile}`);
      }
      return (await health(state)).runnerNodeReady;
    },
    60_000,
    500,
  );
  await waitFor(
    'Gatekeeper ready',
    async () => {
      if (!isAlive(gatekeeper.process))
        throw new GiveUp(`Gatekeeper exited: see ${gatekeeper.process?.logFile}`);
      return gatekeeperReady(gatekeeper);
    },
    120_000,
    200,
  );
  await registerWebhook(kc, webhookConfiguration(gatekeeper, caPem));
  await installConstraintTemplates(kc);
  log(`Gatekeeper ready (webhook failurePolicy ${gatekeeper.failurePolicy})`);
  if (opts.fixture !== false) {
    log(`seeding the ITRS-like fixture in namespace ${FixtureNamespace}`);
    await seedItrsFixture(kc, {
      namespace: FixtureNamespace,
      pvRoot: state.pvRoot,
      databases: process.env.RUNAS_MIGRATE_TESTBED_DATABASES === 'simulated' ? 'simulated' : 'postgres',
    });
    await waitForFixtureReady(kc, FixtureNamespace);
  }
  log(`test bed "${name}" up in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return state;
}

function startTemporal(state: BedState): RecordedProcess {
  const args = [
    'server',
    'start-dev',
    '--ip',
    '127.0.0.1',
    '--port',
    String(state.temporal.port),
    '--ui-port',
    String(state.temporal.uiPort),
    '--db-filename',
    state.temporal.dbFile,
    '--log-level',
    'warn',
    ...Object.values(SearchAttribute).flatMap((a) => [
      '--search-attribute',
      `${a}=${SearchAttributeTypes[a]}`,
    ]),
  ];
  return startDetached(state.tools.temporal!, args, {
    logFile: join(state.dir, 'temporal.log'),
    marker: state.temporal.dbFile,
  });
}

/** Restarts the Temporal dev server on the same port and database file (fault tests). */
export async function restartTemporal(state: BedState): Promise<BedState> {
  // The file, not the caller's copy: a copy read before a second cluster was started would drop
  // it from the record (and `down` would leave it running), and a copy from before an earlier
  // restart names a server that no longer runs.
  const current = readState(state.name) ?? state;
  await stopProcess(current.temporal.process);
  current.temporal.process = startTemporal(current);
  writeState(current);
  Object.assign(state, current);
  await waitFor('Temporal dev server', () => temporalHealthy(state), 60_000, 250);
  return state;
}

function kwokEnv(state: BedState): NodeJS.ProcessEnv {
  return { ...process.env, KWOK_WORKDIR: state.cluster.workdir };
}

async function createCluster(
  state: BedState,
  log: Log,
  cluster: { clusterName: string; kubeconfig: string } = {
    clusterName: state.cluster.name,
    kubeconfig: state.kubeconfig,
  },
): Promise<void> {
  const t = state.tools;
  const args = [
    'create',
    'cluster',
    '--name',
    cluster.clusterName,
    '--runtime',
    'binary',
    '--kubeconfig',
    cluster.kubeconfig,
    '--kube-apiserver-binary',
    t[ToolName.KubeApiserver]!,
    '--kube-controller-manager-binary',
    t[ToolName.KubeControllerManager]!,
    '--kube-scheduler-binary',
    t[ToolName.KubeScheduler]!,
    '--etcd-binary',
    t[ToolName.Etcd]!,
    '--kwok-controller-binary',
    t[ToolName.Kwok]!,
    '--kube-admission',
    '--extra-args',
    'kwok-controller=manage-all-nodes=false',
    '--extra-args',
    `kwok-controller=manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake`,
    // One instance each: without leader election they ride out an API server restart instead of
    // exiting when their lease cannot be renewed (nothing here would start them again).
    '--extra-args',
    'kube-controller-manager=leader-elect=false',
    '--extra-args',
    'kube-scheduler=leader-elect=false',
    '--wait',
    '120s',
  ];
  try {
    await run(t[ToolName.Kwokctl]!, args, { env: kwokEnv(state), timeout: 180_000, maxBuffer: 16 << 20 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`kwokctl create cluster failed: ${e.message}\n${(e.stderr ?? '').slice(-3000)}`);
  }
  log(`cluster ${cluster.clusterName} created`);
}

function startRunner(state: BedState, extra?: ExtraCluster): RecordedProcess {
  const clusterName = extra?.clusterName ?? state.cluster.name;
  const pki = join(state.cluster.workdir, 'clusters', clusterName, 'pki');
  const main = join(testbedDir, 'host-runner', 'main.ts');
  const dir = extra ? join(state.dir, 'clusters', extra.name) : state.dir;
  return startDetached(process.execPath, ['--import', 'tsx', main, `--bed=${dir}`], {
    logFile: join(dir, 'host-runner.log'),
    marker: `--bed=${dir}`,
    cwd: join(testbedDir, '..'),
    env: {
      ...process.env,
      KUBECONFIG: extra?.kubeconfig ?? state.kubeconfig,
      HOST_RUNNER_NODE: HostRunnerNodeName,
      HOST_RUNNER_STATE_DIR: join(dir, 'host-runner'),
      HOST_RUNNER_PORT: String((extra?.runner ?? state.runner).port),
      HOST_RUNNER_TLS_CERT: join(pki, 'admin.crt'),
      HOST_RUNNER_TLS_KEY: join(pki, 'admin.key'),
      // Absent from the state of a bed started before exec was served: the runner then refuses it.
      ...(state.tools[ToolName.HostExec] ? { HOST_RUNNER_EXEC_HELPER: state.tools[ToolName.HostExec] } : {}),
    },
  });
}

/**
 * Restarts the simulated cluster's kube-apiserver with its own command line (fault tests):
 * SIGKILL, wait for it to exit, start it again, record the new PID where kwokctl keeps it so
 * `down` still stops it, and wait until it serves again. etcd and everything else stay up.
 *
 * @returns how long the API server did not answer, in milliseconds.
 */
export async function restartApiserver(state: BedState): Promise<number> {
  const clusterDir = join(state.cluster.workdir, 'clusters', state.cluster.name);
  const pidFile = join(clusterDir, 'pids', 'kube-apiserver.pid');
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  const logFile = join(clusterDir, 'logs', 'kube-apiserver.log');
  const stoppedAt = Date.now();
  // Killed like a crashed process (a graceful stop drains watches for a minute); only this PID.
  process.kill(pid, 'SIGKILL');
  // Gone or a zombie: only then are its sockets closed (its command line empties earlier).
  await waitFor('kube-apiserver exited', () => ['gone', 'Z'].includes(processState(pid)), 30_000, 50);
  const core = kubeConfigOf(state).makeApiClient(CoreV1Api);
  for (let attempt = 1; ; attempt++) {
    const started = startDetached(argv[0]!, argv.slice(1), { logFile, cwd: clusterDir, marker: argv[0]! });
    writeFileSync(pidFile, String(started.pid));
    try {
      await waitFor(
        'kube-apiserver serving again',
        async () => {
          if (!isAlive(started)) throw new GiveUp(`kube-apiserver exited at start: see ${logFile}`);
          return core.readNode({ name: HostRunnerNodeName });
        },
        60_000,
        100,
      );
      break;
    } catch (err) {
      if (!(err instanceof GiveUp) || attempt >= 5) {
        const tail = readFileSync(logFile, 'utf8').split('\n').slice(-15).join('\n');
        throw new Error(`${(err as Error).message}\n${tail}`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  return Date.now() - stoppedAt;
}

/** A process's state letter from /proc (`R`, `S`, `Z`, …), or `gone`. */
function processState(pid: number): string {
  try {
    return /\) (\S) /.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1] ?? 'gone';
  } catch {
    return 'gone';
  }
}

/** Restarts the host runner (after a kill). */
export async function restartRunner(state: BedState): Promise<void> {
  await stopProcess(state.runner.process);
  state.runner.process = startRunner(state);
  writeState(state);
}

/** Stops exactly what `up` started, by recorded PIDs; works after a crash too. */
export async function down(opts: { name?: string; log?: Log } = {}): Promise<void> {
  const name = opts.name ?? 'default';
  const log = opts.log ?? ((l: string) => process.stderr.write(`[testbed] ${l}\n`));
  const state = readState(name);
  if (!state) {
    log(`no test bed "${name}" is recorded`);
    return;
  }
  // Each part's seconds go into the last line: CI reads where a slow teardown spends its time.
  const took: string[] = [];
  let mark = Date.now();
  const lap = (part: string) => {
    took.push(`${part} ${((Date.now() - mark) / 1000).toFixed(1)} s`);
    mark = Date.now();
  };
  await stopProcess(state.runner.process);
  lap('host runner');
  for (const extra of Object.values(state.clusters ?? {})) {
    await stopProcess(extra.runner.process);
    await deleteCluster(state, extra.clusterName, extra.kubeconfig, log);
  }
  // And those a record rewritten from an older copy lost: their host runners by their folder,
  // their control planes by kwokctl's.
  for (const p of processesWith(`--bed=${join(state.dir, 'clusters')}/`)) await stopProcess(p);
  const kwokClusters = join(state.cluster.workdir, 'clusters');
  const recorded = new Set([
    state.cluster.name,
    ...Object.values(state.clusters ?? {}).map((c) => c.clusterName),
  ]);
  for (const lost of existsSync(kwokClusters)
    ? readdirSync(kwokClusters).filter((n) => !recorded.has(n))
    : [])
    await deleteCluster(state, lost, join(kwokClusters, lost, 'kubeconfig.yaml'), log);
  lap('further clusters');
  await stopProcess(state.gatekeeper?.process);
  lap('Gatekeeper');
  await deleteCluster(state, state.cluster.name, state.kubeconfig, log);
  lap('cluster');
  await stopProcess(state.temporal.process);
  lap('Temporal');
  // Volumes were chowned to other users by the tests: remove as root, which we are. After a full
  // `npm test` that took 237 s (every fixture's PostgreSQL data): the bed is moved aside at once
  // and removed by a detached `rm -rf`, so nobody waits for it.
  const trash = `${state.dir}.removing-${process.pid}-${Date.now()}`;
  try {
    renameSync(state.dir, trash);
    spawn('rm', ['-rf', trash], { detached: true, stdio: 'ignore' }).unref();
  } catch {
    rmSync(state.dir, { recursive: true, force: true });
  }
  lap('files');
  log(`test bed "${name}" stopped (${took.join(', ')})`);
}

async function deleteCluster(
  state: BedState,
  clusterName: string,
  kubeconfig: string,
  log: Log,
): Promise<void> {
  const kwokctl = state.tools[ToolName.Kwokctl];
  if (!existsSync(join(state.cluster.workdir, 'clusters', clusterName)) || !kwokctl) return;
  try {
    await run(kwokctl, ['delete', 'cluster', '--name', clusterName, '--kubeconfig', kubeconfig], {
      env: kwokEnv(state),
      timeout: 120_000,
    });
  } catch (err) {
    log(`kwokctl delete cluster ${clusterName}: ${(err as Error).message}`);
  }
}

/**
 * Starts the further cluster `name` of a running bed (or reuses it when its API server answers
 * and its host runner's node is Ready): a kwokctl cluster, its host runner, two fake nodes, and
 * the fixture's cluster-wide objects without Gatekeeper's constraints.
 */
export async function ensureCluster(
  state: BedState,
  name: string,
  log: Log = () => undefined,
): Promise<ExtraCluster> {
  const known = (readState(state.name) ?? state).clusters?.[name];
  if (known && isAlive(known.runner.process)) {
    try {
      const node = await clusterConfig(known).makeApiClient(CoreV1Api).readNode({ name: HostRunnerNodeName });
      if (node.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) return known;
    } catch {
      // not serving: start it again below
    }
  }
  if (known) {
    await stopProcess(known.runner.process);
    await deleteCluster(state, known.clusterName, known.kubeconfig, log);
  }
  const dir = join(state.dir, 'clusters', name);
  mkdirSync(dir, { recursive: true });
  const extra: ExtraCluster = {
    name,
    clusterName: `${state.cluster.name}-${name}`,
    kubeconfig: join(dir, 'kubeconfig.yaml'),
    pvRoot: join(dir, 'pv'),
    runner: { port: await freePort() },
  };
  log(`creating cluster ${extra.clusterName}`);
  await createCluster(state, log, extra);
  extra.runner.process = startRunner(state, extra);
  // Recorded on the state as the file has it now: the caller's copy may be older (a test's copy
  // from the start of the run misses a Temporal server a fault test restarted since, and writing
  // it back would leave that server running after `down`).
  const current = readState(state.name) ?? state;
  current.clusters = { ...current.clusters, [name]: extra };
  state.clusters = current.clusters;
  writeState(current);
  const kc = clusterConfig(extra);
  await createFakeNodes(kc, 2);
  await installClusterFixture(kc, { constraints: false, gatekeeper: false });
  await waitFor(
    `host runner node of cluster ${name} Ready`,
    async () => {
      if (!isAlive(extra.runner.process))
        throw new GiveUp(`host runner exited: see ${extra.runner.process?.logFile}`);
      const node = await kc.makeApiClient(CoreV1Api).readNode({ name: HostRunnerNodeName });
      return node.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
    },
    60_000,
    500,
  );
  return extra;
}

/** The KubeConfig of a further cluster. */
export function clusterConfig(extra: ExtraCluster): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(extra.kubeconfig);
  return kc;
}

/** Lines for `eval "$(npm run -s testbed -- env)"`. */
export function envLines(state: BedState): string[] {
  return [
    `export KUBECONFIG=${state.kubeconfig}`,
    `export TEMPORAL_ADDRESS=${state.temporal.address}`,
    `export TEMPORAL_UI=${state.temporal.uiUrl}`,
    `export PATH=${toolPathDirs(state.tools).join(':')}:$PATH`,
  ];
}
