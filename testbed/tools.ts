/**
 * The test bed's tools: found on PATH or through an environment variable, or built once from
 * the package registries (Go module proxy, Maven Central) into a cache outside the repository.
 *
 * Every tool has a variable that points at an existing binary; one found on PATH whose
 * `--version` names the pinned version is used as is; otherwise it is built into
 * `${RUNAS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/runas-migrate}/tools/<component>-<version>/`.
 */
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { basename, delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Directory of the test bed's sources (wrapper Go modules, the Maven pom). */
export const testbedDir = (() => {
  // From testbed/ or from its compiled copy in dist/testbed/: the sources (go.mod, pom.xml, the
  // host runner) are always those of the project folder.
  const here = dirname(fileURLToPath(import.meta.url));
  return basename(dirname(here)) === 'dist' ? join(dirname(dirname(here)), 'testbed') : here;
})();

/** Root of everything the project caches outside the repository. */
export function cacheRoot(): string {
  if (process.env.RUNAS_MIGRATE_CACHE) return process.env.RUNAS_MIGRATE_CACHE;
  return join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'runas-migrate');
}

const kubernetesVersion = '1.35.4';

/** Pinned versions of every tool the test bed uses. */
export const ToolVersions = {
  temporal: '1.5.1',
  kubernetes: kubernetesVersion,
  etcd: '3.6.16',
  kwok: '0.8.0',
  temporalTestServer: '1.34.0',
  /**
   * The host runner's exec server (kube/hostexec), built from the kubelet's code of this
   * Kubernetes version. Its cache folder is named after the version: bump the revision whenever
   * hostexec/main.go changes, or beds keep the old binary.
   */
  hostExec: `${kubernetesVersion}-2`,
  gatekeeper: '3.23.1',
  /**
   * The Compose checker (testbed/compose-check): compose-go's version, then a revision to bump
   * whenever main.go changes.
   */
  composeCheck: '2.16.2-1',
  /** Helm 3, for runs with `securityContext.apply: helm` against a release of the bed's chart. */
  helm: '3.22.0',
} as const;

/** Where Gatekeeper's CRDs are in its Go module. */
export const GatekeeperCrdsInModule = 'manifest_staging/charts/gatekeeper/crds';

/** Names of the binaries the test bed needs. */
export const ToolName = {
  Temporal: 'temporal',
  KubeApiserver: 'kube-apiserver',
  KubeControllerManager: 'kube-controller-manager',
  KubeScheduler: 'kube-scheduler',
  Kubectl: 'kubectl',
  Etcd: 'etcd',
  Kwok: 'kwok',
  Kwokctl: 'kwokctl',
  TemporalTestServer: 'temporal-test-server',
  HostExec: 'host-exec',
  Gatekeeper: 'gatekeeper',
  ComposeCheck: 'compose-check',
  Helm: 'helm',
} as const;
export type ToolName = (typeof ToolName)[keyof typeof ToolName];

interface Component {
  /** Cache folder name, `<component>-<version>`. */
  readonly id: string;
  readonly version: string;
  readonly binaries: readonly ToolName[];
  /** Builds every binary of the component into `binDir`. */
  build(binDir: string, log: Log): Promise<void>;
  /** Runs once the component is in its final place (scripts that name their own folder). */
  finish?(binDir: string): void;
  /** Whether `--version` output of a binary on PATH names this version. */
  matchesVersion(output: string): boolean;
  /** Its cold build on two cores, roughly, in seconds: the longest start first. */
  readonly coldSeconds: number;
}

/** Where progress lines go. */
export type Log = (line: string) => void;

/** Environment variable that points at an existing binary for each tool. */
export function overrideVariable(tool: ToolName): string {
  return `RUNAS_MIGRATE_${tool.toUpperCase().replace(/-/g, '_')}`;
}

const goEnv = (): NodeJS.ProcessEnv => ({
  ...process.env,
  GOWORK: 'off',
  GOTOOLCHAIN: 'local',
  CGO_ENABLED: '0',
  GOFLAGS: '-mod=mod',
});

function run(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv },
  log: Log,
) {
  log(`$ ${cmd} ${args.join(' ')}`);
  return new Promise<void>((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let tail = '';
    const keep = (chunk: Buffer) => {
      tail = (tail + chunk.toString()).slice(-4000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const started = Date.now();
    const ticker = setInterval(
      () => log(`  … still building (${Math.round((Date.now() - started) / 1000)} s)`),
      30_000,
    );
    child.on('error', (err) => {
      clearInterval(ticker);
      reject(err);
    });
    child.on('close', (code) => {
      clearInterval(ticker);
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}:\n${tail}`));
    });
  });
}

const k8sLdflags = (version: string) =>
  [
    '-s -w',
    `-X k8s.io/component-base/version.gitVersion=v${version}`,
    `-X k8s.io/component-base/version.gitMajor=${version.split('.')[0]}`,
    `-X k8s.io/component-base/version.gitMinor=${version.split('.')[1]}`,
    '-X k8s.io/component-base/version.gitTreeState=clean',
    `-X k8s.io/client-go/pkg/version.gitVersion=v${version}`,
  ].join(' ');

const components: readonly Component[] = [
  {
    id: `temporal-${ToolVersions.temporal}`,
    coldSeconds: 274,
    version: ToolVersions.temporal,
    binaries: [ToolName.Temporal],
    matchesVersion: (out) => out.includes(`temporal version ${ToolVersions.temporal}`),
    build: (binDir, log) =>
      run(
        'go',
        [
          'install',
          '-trimpath',
          '-ldflags=-s -w',
          `github.com/temporalio/cli/cmd/temporal@v${ToolVersions.temporal}`,
        ],
        { env: { ...goEnv(), GOFLAGS: '', GOBIN: binDir } },
        log,
      ),
  },
  {
    id: `kwok-${ToolVersions.kwok}`,
    coldSeconds: 151,
    version: ToolVersions.kwok,
    binaries: [ToolName.Kwok, ToolName.Kwokctl],
    matchesVersion: (out) => out.includes(`v${ToolVersions.kwok}`),
    build: (binDir, log) =>
      run(
        'go',
        [
          'install',
          '-trimpath',
          `sigs.k8s.io/kwok/cmd/kwok@v${ToolVersions.kwok}`,
          `sigs.k8s.io/kwok/cmd/kwokctl@v${ToolVersions.kwok}`,
        ],
        { env: { ...goEnv(), GOFLAGS: '', GOBIN: binDir } },
        log,
      ),
  },
  {
    id: `etcd-${ToolVersions.etcd}`,
    coldSeconds: 56,
    version: ToolVersions.etcd,
    binaries: [ToolName.Etcd],
    matchesVersion: (out) => out.includes(`etcd Version: ${ToolVersions.etcd}`),
    build: (binDir, log) =>
      run(
        'go',
        ['build', '-trimpath', '-ldflags=-s -w', '-o', join(binDir, 'etcd'), 'go.etcd.io/etcd/server/v3'],
        { cwd: join(testbedDir, 'etcd'), env: goEnv() },
        log,
      ),
  },
  {
    id: `kubernetes-${ToolVersions.kubernetes}`,
    coldSeconds: 366,
    version: ToolVersions.kubernetes,
    binaries: [
      ToolName.KubeApiserver,
      ToolName.KubeControllerManager,
      ToolName.KubeScheduler,
      ToolName.Kubectl,
    ],
    matchesVersion: (out) => out.includes(`v${ToolVersions.kubernetes}`),
    build: (binDir, log) =>
      run(
        'go',
        [
          'build',
          '-trimpath',
          `-ldflags=${k8sLdflags(ToolVersions.kubernetes)}`,
          '-o',
          binDir + '/',
          ...['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubectl'].map(
            (c) => `k8s.io/kubernetes/cmd/${c}`,
          ),
        ],
        { cwd: join(testbedDir, 'kube'), env: goEnv() },
        log,
      ),
  },
  {
    id: `host-exec-${ToolVersions.hostExec}`,
    coldSeconds: 1,
    version: ToolVersions.hostExec,
    binaries: [ToolName.HostExec],
    // Our own program: never one found on PATH.
    matchesVersion: () => false,
    build: (binDir, log) =>
      run(
        'go',
        ['build', '-trimpath', '-ldflags=-s -w', '-o', join(binDir, ToolName.HostExec), './hostexec'],
        { cwd: join(testbedDir, 'kube'), env: goEnv() },
        log,
      ),
  },
  {
    id: `gatekeeper-${ToolVersions.gatekeeper}`,
    coldSeconds: 343,
    version: ToolVersions.gatekeeper,
    binaries: [ToolName.Gatekeeper],
    // Its binary has no --version: never one found on PATH (RUNAS_MIGRATE_GATEKEEPER points at one).
    matchesVersion: () => false,
    build: async (binDir, log) => {
      const module = `github.com/open-policy-agent/gatekeeper/v3@v${ToolVersions.gatekeeper}`;
      const env = { ...goEnv(), GOFLAGS: '', GOBIN: binDir };
      await run('go', ['install', '-ldflags=-s -w', module], { env }, log);
      // Its CRDs ship in the module: kept beside bin/ for the bed to apply.
      const { Dir } = JSON.parse(
        execFileSync('go', ['mod', 'download', '-json', module], { env, encoding: 'utf8' }),
      ) as { Dir: string };
      cpSync(join(Dir, GatekeeperCrdsInModule), join(dirname(binDir), 'crds'), { recursive: true });
    },
  },
  {
    id: `compose-check-${ToolVersions.composeCheck}`,
    coldSeconds: 15,
    version: ToolVersions.composeCheck,
    binaries: [ToolName.ComposeCheck],
    // Our own program: never one found on PATH.
    matchesVersion: () => false,
    build: (binDir, log) =>
      run(
        'go',
        ['build', '-trimpath', '-ldflags=-s -w', '-o', join(binDir, ToolName.ComposeCheck), '.'],
        { cwd: join(testbedDir, 'compose-check'), env: goEnv() },
        log,
      ),
  },
  {
    id: `helm-${ToolVersions.helm}`,
    coldSeconds: 113,
    version: ToolVersions.helm,
    binaries: [ToolName.Helm],
    matchesVersion: (out) =>
      out.trim().startsWith(`v${ToolVersions.helm}+`) || out.trim() === `v${ToolVersions.helm}`,
    build: (binDir, log) =>
      run(
        'go',
        [
          'install',
          '-trimpath',
          // Its Makefile stamps the version this way; without it `helm version` says only "v3.22".
          `-ldflags=-s -w -X helm.sh/helm/v3/internal/version.version=v${ToolVersions.helm} -X helm.sh/helm/v3/internal/version.gitTreeState=clean`,
          `helm.sh/helm/v3/cmd/helm@v${ToolVersions.helm}`,
        ],
        { env: { ...goEnv(), GOFLAGS: '', GOBIN: binDir } },
        log,
      ),
  },
  {
    id: `temporal-test-server-${ToolVersions.temporalTestServer}`,
    coldSeconds: 26,
    version: ToolVersions.temporalTestServer,
    binaries: [ToolName.TemporalTestServer],
    matchesVersion: () => false,
    finish: (binDir) => {
      const script = join(binDir, ToolName.TemporalTestServer);
      // exec matters: the SDK kills the process it started, which must be the JVM itself.
      writeFileSync(
        script,
        `#!/bin/sh\nexec java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp '${join(dirname(binDir), 'lib')}/*' io.temporal.testserver.TestServer "$@"\n`,
      );
      chmodSync(script, 0o755);
    },
    build: async (binDir, log) => {
      const libDir = join(dirname(binDir), 'lib');
      await run(
        'mvn',
        [
          '-B',
          '-q',
          '-f',
          join(testbedDir, 'time-skipping', 'pom.xml'),
          `-Dtemporal.version=${ToolVersions.temporalTestServer}`,
          'dependency:copy-dependencies',
          `-DoutputDirectory=${libDir}`,
        ],
        {},
        log,
      );
    },
  },
];

function componentOf(tool: ToolName): Component {
  const c = components.find((x) => x.binaries.includes(tool));
  if (!c) throw new Error(`unknown tool ${tool}`);
  return c;
}

function binDirOf(c: Component): string {
  return join(cacheRoot(), 'tools', c.id, 'bin');
}

function onPath(tool: ToolName, c: Component): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const candidate = join(dir, tool);
    if (!dir || !existsSync(candidate) || candidate.startsWith(join(cacheRoot(), 'tools'))) continue;
    try {
      const out = execFileSync(
        candidate,
        tool === ToolName.Kubectl
          ? ['version', '--client']
          : tool === ToolName.Helm
            ? ['version', '--short']
            : ['--version'],
        {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'pipe'],
          timeout: 10_000,
        },
      );
      if (c.matchesVersion(out)) return candidate;
    } catch {
      // not usable: build our own
    }
    return undefined;
  }
  return undefined;
}

/** Finds a tool without building it: the override variable, PATH at the pinned version, or the cache. */
export function findTool(tool: ToolName): string | undefined {
  const override = process.env[overrideVariable(tool)];
  if (override) {
    if (!existsSync(override)) throw new Error(`${overrideVariable(tool)}=${override}: no such file`);
    return override;
  }
  const c = componentOf(tool);
  const cached = join(binDirOf(c), tool);
  if (existsSync(cached)) return cached;
  return onPath(tool, c);
}

/**
 * Returns the path of a tool, building its component first when it is nowhere to be found.
 *
 * @throws an error with one line naming the tool and how to provide it, when the build fails.
 */
export async function ensureTool(tool: ToolName, log: Log = defaultLog): Promise<string> {
  const found = findTool(tool);
  if (found) return found;
  const c = componentOf(tool);
  await buildComponent(c, log);
  return join(binDirOf(c), tool);
}

const inFlight = new Map<string, Promise<void>>();

async function buildComponent(c: Component, log: Log): Promise<void> {
  const pending = inFlight.get(c.id);
  if (pending) return pending;
  const job = (async () => {
    const finalBin = binDirOf(c);
    const staging = join(cacheRoot(), 'tools', `${c.id}.partial`);
    rmSync(staging, { recursive: true, force: true });
    const stagingBin = join(staging, 'bin');
    mkdirSync(stagingBin, { recursive: true });
    const started = Date.now();
    log(`building ${c.id} (${c.binaries.join(', ')}) into ${dirname(finalBin)} — minutes when cold`);
    try {
      // Several components may build at once: every line names its component.
      await c.build(stagingBin, (line) => log(`${c.id}: ${line}`));
    } catch (err) {
      const names = c.binaries.map((b) => `${overrideVariable(b)}=/path/to/${b}`).join(' ');
      throw new Error(
        `could not build ${c.id}: provide it with ${names} (or put version ${c.version} on PATH)\n${String(err)}`,
      );
    }
    // The Maven build writes lib/ beside bin/, which must move with it.
    rmSync(dirname(finalBin), { recursive: true, force: true });
    mkdirSync(dirname(dirname(finalBin)), { recursive: true });
    renameSync(staging, dirname(finalBin));
    c.finish?.(finalBin);
    log(
      `built ${c.id} in ${Math.round((Date.now() - started) / 1000)} s: ${readdirSync(finalBin).join(', ')}`,
    );
  })();
  inFlight.set(c.id, job);
  try {
    await job;
  } finally {
    inFlight.delete(c.id);
  }
}

/**
 * Environment variable: how many components build at once (default 1). Two at once measured
 * slower on two cores, 1.10× (`npm run bench -- tool-builds`): a Go build keeps both cores busy
 * by itself.
 */
export const ToolBuildsEnv = 'RUNAS_MIGRATE_TOOL_BUILDS';

/** How many components build at once, from `value` (default {@link ToolBuildsEnv}'s). */
export function toolBuildsAtOnce(value: string | undefined = process.env[ToolBuildsEnv]): number {
  if (value === undefined || value === '') return 1;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new Error(
      `${ToolBuildsEnv}=${value}: give how many tool builds may run at once, a whole number from 1`,
    );
  return n;
}

/**
 * Builds (or finds) every tool, or those of `only`; returns tool name → path. The components not
 * found build `atOnce` at a time (see {@link ToolBuildsEnv}), the longest first.
 */
export async function ensureAllTools(
  log: Log = defaultLog,
  opts: { atOnce?: number; only?: readonly ToolName[] } = {},
): Promise<Record<ToolName, string>> {
  const tools = opts.only ?? Object.values(ToolName);
  const queue = [...new Set(tools.filter((t) => !findTool(t)).map(componentOf))].sort(
    (a, b) => b.coldSeconds - a.coldSeconds,
  );
  const builder = async () => {
    for (let c = queue.shift(); c; c = queue.shift()) await buildComponent(c, log);
  };
  await Promise.all(
    Array.from({ length: Math.min(opts.atOnce ?? toolBuildsAtOnce(), queue.length) }, builder),
  );
  const result = {} as Record<ToolName, string>;
  for (const tool of tools) result[tool] = await ensureTool(tool, log);
  return result;
}

/** Directories to put first on PATH so the built `temporal` and `kubectl` are the ones users run. */
export function toolPathDirs(paths: Partial<Record<ToolName, string>>): string[] {
  return [...new Set(Object.values(paths).map((p) => dirname(p)))];
}

function defaultLog(line: string): void {
  process.stderr.write(`[tools] ${line}\n`);
}
