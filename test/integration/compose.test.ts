/**
 * docker-compose.yml and the worker's Dockerfile, checked without a Docker engine: loaded by
 * compose-go (Docker Compose's own loader) and parsed by BuildKit's parser and linter (the
 * compose-check tool), then the image's build replayed in a folder and its worker started with
 * the compose service's environment against the bed.
 */
import { execFile, spawn } from 'node:child_process';
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  existsSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaskQueue } from '../../src/core/names.js';
import { temporal } from '@temporalio/proto';
import { connectClient, sweeperScheduleId } from '../../src/app/worker.js';
import { waitFor } from '../../testbed/process.js';
import { ensureTool, ToolName } from '../../testbed/tools.js';
import { bed } from '../support/bed.js';
import { outcome } from '../support/cli.js';

const exec = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const WorkerService = 'runas-migrate-worker';

interface Command {
  instruction: string;
  source: string;
  args?: string[];
  from?: string;
  user?: string;
}
interface Stage {
  name: string;
  base: string;
  commands: Command[];
}
interface Service {
  image?: string;
  build?: { context: string; dockerfile: string; args?: Record<string, string> };
  environment?: Record<string, string | null>;
  depends_on?: Record<string, { condition: string }>;
  ports?: { target: number; published: string }[];
  healthcheck?: { test: string[] };
  networks?: Record<string, unknown>;
  volumes?: { type: string; source: string; target: string; read_only?: boolean }[];
  entrypoint?: string[];
  command?: string[];
}
interface Checked {
  project: { name: string; services: Record<string, Service> };
  dockerfiles: Record<string, { stages: Stage[]; warnings: { rule: string; message: string }[] }>;
}

let checker: string;
let checked: Checked;
const work = mkdtempSync(join(tmpdir(), 'compose-'));
const env = (k: string) =>
  Object.fromEntries(
    readFileSync(join(root, '.env'), 'utf8')
      .split('\n')
      .filter((l) => /^[A-Z_]+=/.test(l))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  )[k];

/** Runs the checker on a compose file in `dir` (the project's by default). */
const check = (dir = root, file = 'docker-compose.yml') =>
  outcome(
    exec(checker, ['-f', join(dir, file), '-project-directory', dir], {
      env: { PATH: process.env.PATH, HOME: '/home/operator' },
    }),
  );

beforeAll(async () => {
  checker = await ensureTool(ToolName.ComposeCheck);
  const r = await check();
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  checked = JSON.parse(r.stdout) as Checked;
}, 300_000);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('docker-compose.yml, loaded as Docker Compose loads it', () => {
  it('has Temporal on PostgreSQL, its schema setup, namespace creation, Web UI and the worker, started in order', () => {
    const s = checked.project.services;
    expect(Object.keys(s).sort()).toEqual(
      [
        'postgresql',
        'temporal-schema-setup',
        'temporal',
        'temporal-create-namespace',
        'temporal-ui',
        WorkerService,
      ].sort(),
    );
    expect(s.postgresql!.healthcheck!.test.join(' ')).toContain('pg_isready');
    const after = (svc: string) =>
      Object.fromEntries(Object.entries(s[svc]!.depends_on ?? {}).map(([k, v]) => [k, v.condition]));
    expect(after('temporal-schema-setup')).toEqual({ postgresql: 'service_healthy' });
    expect(after('temporal')).toEqual({ 'temporal-schema-setup': 'service_completed_successfully' });
    expect(after('temporal-create-namespace')).toEqual({ temporal: 'service_started' });
    expect(after('temporal-ui')).toEqual({ temporal: 'service_started' });
    expect(after(WorkerService)).toEqual({ 'temporal-create-namespace': 'service_completed_successfully' });
    // The schema step sets up both of Temporal's databases.
    const setup = s['temporal-schema-setup']!.command!.join('\n');
    for (const db of ['temporal', 'temporal_visibility'])
      expect(setup).toContain(`--database ${db} setup-schema`);
  });

  it('every address a service dials is a service on its network, on a port that service listens on', () => {
    const s = checked.project.services;
    const published = (svc: string) => (s[svc]!.ports ?? []).map((p) => p.target);
    expect(published('temporal')).toContain(7233);
    expect(published('temporal-ui')).toContain(8080);
    for (const [name, svc] of Object.entries(s)) {
      const target = svc.environment?.TEMPORAL_ADDRESS;
      if (!target) continue;
      const [host, port] = target.split(':');
      expect(s[host!], `${name} dials ${target}`).toBeDefined();
      expect(published(host!), `${name} dials ${target}`).toContain(Number(port));
      const shared = Object.keys(svc.networks ?? {}).filter((n) => n in (s[host!]!.networks ?? {}));
      expect(shared.length, `${name} and ${host} share a network`).toBeGreaterThan(0);
    }
    expect(s.temporal!.environment!.POSTGRES_SEEDS).toBe('postgresql');
    // The worker's metrics port is the one it is told to serve on.
    const metrics = s[WorkerService]!.environment!.RUNAS_MIGRATE_METRICS_ADDRESS!;
    expect(published(WorkerService)).toContain(Number(metrics.split(':')[1]));
  });

  it("pins Temporal's server, admin tools and Web UI to the versions the test bed runs", async () => {
    const temporal = await ensureTool(ToolName.Temporal);
    const { stdout } = await exec(temporal, ['--version']);
    const [, server, ui] = /Server ([\d.]+), UI ([\d.]+)/.exec(stdout)!;
    const s = checked.project.services;
    expect(s.temporal!.image).toBe(`temporalio/server:${server}`);
    expect(s['temporal-ui']!.image).toBe(`temporalio/ui:${ui}`);
    expect(s['temporal-schema-setup']!.image).toMatch(new RegExp(`^temporalio/admin-tools:${server}-`));
    expect(s['temporal-create-namespace']!.image).toBe(s['temporal-schema-setup']!.image);
    expect(env('TEMPORAL_VERSION')).toBe(server);
  });

  it('sets only environment variables the worker reads, and mounts its kubeconfig read-only', async () => {
    const worker = checked.project.services[WorkerService]!;
    const { stdout: help } = await exec(
      process.execPath,
      [join(root, 'bin/runas-migrate.js'), 'worker', '--help'],
      {
        env: { PATH: process.env.PATH },
      },
    );
    const reads = new Set([...help.matchAll(/env:\s+([A-Z_]+)/g)].map((m) => m[1]));
    expect(reads).toContain('TEMPORAL_ADDRESS');
    for (const name of Object.keys(worker.environment ?? {})) expect(reads, name).toContain(name);
    const kubeconfig = worker.volumes!.find((v) => v.target === worker.environment!.KUBECONFIG);
    expect(kubeconfig).toMatchObject({
      type: 'bind',
      read_only: true,
      source: '/home/operator/.kube/config',
    });
  });

  it('fails, naming the cause, on a dependency that does not exist and on a variable .env does not set', async () => {
    const dir = join(work, 'broken');
    mkdirSync(dir, { recursive: true });
    cpSync(join(root, '.env'), join(dir, '.env'));
    const compose = readFileSync(join(root, 'docker-compose.yml'), 'utf8');
    writeFileSync(
      join(dir, 'missing.yml'),
      compose.replace(
        'temporal-create-namespace:\n        condition',
        'temporal-namespace:\n        condition',
      ),
    );
    const missing = await check(dir, 'missing.yml');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/depends on undefined service "?temporal-namespace"?/);
    writeFileSync(join(dir, 'unset.yml'), compose.replace('${TEMPORAL_UI_VERSION}', '${TEMPORAL_UI_TAG}'));
    const unset = await check(dir, 'unset.yml');
    expect(unset.code).toBe(1);
    expect(unset.stderr).toContain('"TEMPORAL_UI_TAG" variable is not set');
  });
});

describe("the worker's Dockerfile, parsed by BuildKit", () => {
  const stages = () => checked.dockerfiles[WorkerService]!.stages;

  it('builds in one stage and runs as a non-root user in another, on the same Node image, with no lint warning', () => {
    expect(checked.dockerfiles[WorkerService]!.warnings).toEqual([]);
    const [build, final] = [stages()[0]!, stages().at(-1)!];
    expect(stages().length).toBeGreaterThanOrEqual(2);
    expect(final.base).toBe(build.base);
    expect(final.base).toMatch(/^node:\$\{NODE_VERSION\}/);
    const runs = build.commands.filter((c) => c.instruction === 'RUN').map((c) => c.args!.join(' '));
    expect(runs.some((r) => r.includes('npm ci'))).toBe(true);
    expect(runs.some((r) => r.includes('npm run -s build'))).toBe(true);
    // The build script makes the workflow bundle: the image never runs webpack.
    expect(
      (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: { build: string } }).scripts
        .build,
    ).toContain('workflow-bundle.js');
    const user = final.commands.filter((c) => c.instruction === 'USER').at(-1)?.user;
    expect(user).toBeDefined();
    expect(['root', '0']).not.toContain(user!.split(':')[0]);
    expect(checked.project.services[WorkerService]!.build!.args!.NODE_VERSION).toBe(env('NODE_VERSION'));
  });

  it(
    'replayed in a folder, builds from only what it copies, and its entry point runs the worker with the compose environment',
    { timeout: 240_000 },
    async () => {
      const contextDir = checked.project.services[WorkerService]!.build!.context;
      const ignored = readFileSync(join(contextDir, '.dockerignore'), 'utf8').split('\n').filter(Boolean);
      const dirs: Record<string, string> = {};
      let entrypoint: string[] = [];
      let cmd: string[] = [];
      for (const stage of stages()) {
        const dir = (dirs[stage.name] = join(work, stage.name));
        mkdirSync(dir, { recursive: true });
        let workdir = '/';
        const inStage = (p: string) => join(dir, posix.resolve(workdir, p).slice('/app'.length));
        for (const c of stage.commands) {
          if (c.instruction === 'WORKDIR') workdir = c.source.split(/\s+/)[1]!;
          else if (c.instruction === 'COPY') {
            const dest = c.args!.at(-1)!;
            for (const src of c.args!.slice(0, -1)) {
              const from = c.from
                ? join(dirs[c.from]!, posix.resolve(src).slice('/app'.length))
                : join(contextDir, src);
              if (!c.from) expect(ignored, `COPY ${src}: .dockerignore leaves it out`).not.toContain(src);
              expect(existsSync(from), `${c.source}: ${src} exists`).toBe(true);
              const to = dest.endsWith('/') ? join(inStage(dest), posix.basename(src)) : inStage(dest);
              cpSync(from, to, { recursive: true, dereference: false });
            }
          } else if (c.instruction === 'RUN') {
            const steps = c
              .args!.join(' ')
              .split('&&')
              .map((x) => x.trim());
            for (const step of steps) {
              const modules = join(dir, 'node_modules');
              // `npm ci`: the build uses the project's own node_modules. `npm prune --omit=dev`:
              // replayed as a production-only install, so the worker below starts with exactly
              // the packages the image keeps, and a dev dependency needed at run time fails here.
              if (/^npm ci\b/.test(step)) symlinkSync(join(root, 'node_modules'), modules);
              else if (/^npm prune\b/.test(step)) {
                rmSync(modules, { recursive: true, force: true });
                await exec(
                  'npm',
                  ['ci', '--omit=dev', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'],
                  {
                    cwd: dir,
                    env: { PATH: process.env.PATH, HOME: process.env.HOME },
                  },
                );
              } else
                await exec('sh', ['-c', step], {
                  cwd: dir,
                  env: { PATH: process.env.PATH, HOME: process.env.HOME },
                });
            }
          } else if (c.instruction === 'ENTRYPOINT') entrypoint = c.args!;
          else if (c.instruction === 'CMD') cmd = c.args!;
        }
      }
      const image = dirs[stages().at(-1)!.name]!;
      expect(existsSync(join(image, 'dist/workflow-bundle.js'))).toBe(true);
      // The image keeps production packages only: no test runner, no browser driver.
      expect(existsSync(join(image, 'node_modules/@temporalio/worker'))).toBe(true);
      for (const dev of ['vitest', 'playwright-core', 'tsx'])
        expect(existsSync(join(image, 'node_modules', dev)), dev).toBe(false);
      expect([...entrypoint, ...cmd].slice(-2)).toEqual(['bin/runas-migrate.js', 'worker']);

      // The compose service's environment, with the addresses Docker's network and bind mount
      // would give: the bed's Temporal, the bed's kubeconfig, a free local metrics port.
      const service = checked.project.services[WorkerService]!;
      const environment = Object.fromEntries(
        Object.entries(service.environment!).map(([k, v]) => [k, v ?? '']),
      );
      environment.TEMPORAL_ADDRESS = bed().temporal.address;
      environment.KUBECONFIG = bed().kubeconfig;
      environment.RUNAS_MIGRATE_METRICS_ADDRESS = '127.0.0.1:0';
      const [node, ...args] = entrypoint;
      expect(node).toBe('node');
      const child = spawn(process.execPath, [...args, ...cmd], {
        cwd: image,
        env: { PATH: process.env.PATH, ...environment },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const client = await connectClient({ address: bed().temporal.address });
      const sweeper = client.schedule.getHandle(sweeperScheduleId(TaskQueue));
      const hadSweeper = await sweeper.describe().then(
        () => true,
        () => false,
      );
      try {
        await waitFor('the worker polls', () => stderr.includes('worker polling'), 60_000, 200);
        expect(stderr).toContain(`worker polling ${TaskQueue} on ${bed().temporal.address}`);
        // Read from its kubeconfig and records namespace: the guardrails' source is named.
        expect(stderr).toContain(`guardrails from`);
        // RUNAS_MIGRATE_LOG_LEVEL=INFO: the SDK's INFO lines show (the SDK may log its state
        // change just after our own line).
        await waitFor('the SDK logs at INFO', () => /INFO.*Worker state changed/.test(stderr), 20_000, 200);
        const identity = `${child.pid}@`;
        await waitFor(
          'its poller on the task queue',
          async () => {
            const d = await client.workflowService.describeTaskQueue({
              namespace: 'default',
              taskQueue: { name: TaskQueue },
              taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            });
            return (d.pollers ?? []).some((p) => p.identity?.startsWith(identity));
          },
          20_000,
          500,
        );
      } finally {
        child.kill('SIGKILL');
        if (!hadSweeper) await sweeper.delete().catch(() => undefined);
        await client.connection.close();
      }
    },
  );
});
