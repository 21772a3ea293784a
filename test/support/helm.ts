/**
 * A Helm chart repository on 127.0.0.1 serving the bed's chart, and helm's own folders for it
 * (never the user's): what an operator's worker host has after `helm repo add`.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { DatabasesChart } from '../../testbed/fixture.js';

const run = promisify(execFile);

/** A served chart repository. */
export interface ChartRepository {
  /** The repository's name in helm's config: charts are `<name>/iax-databases`. */
  name: string;
  url: string;
  /** helm's folders (HELM_CONFIG_HOME, HELM_CACHE_HOME, …): give them to every helm the test runs. */
  env: Record<string, string>;
  /** Adds the bed's chart again as `version` (a newer release of the vendor's chart) and updates helm's index. */
  publish(version: string): Promise<void>;
  close(): Promise<void>;
}

/** Packages the bed's chart, serves it with its index, and adds the repository to a fresh helm home. */
export async function serveChartRepository(helm: string, name = 'bed'): Promise<ChartRepository> {
  const home = mkdtempSync(join(tmpdir(), 'runas-migrate-helm-home-'));
  const charts = join(home, 'charts');
  const env = {
    HELM_CONFIG_HOME: join(home, 'config'),
    HELM_CACHE_HOME: join(home, 'cache'),
    HELM_DATA_HOME: join(home, 'data'),
    HELM_REPOSITORY_CONFIG: join(home, 'config', 'repositories.yaml'),
    HELM_REPOSITORY_CACHE: join(home, 'cache', 'repository'),
  };
  const helmEnv = { ...process.env, ...env };
  await run(helm, ['package', DatabasesChart, '--destination', charts], { env: helmEnv });
  const server = createServer((req, res) => {
    try {
      res.end(readFileSync(join(charts, basename(req.url ?? '/'))));
    } catch {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  await run(helm, ['repo', 'index', charts, '--url', url], { env: helmEnv });
  await run(helm, ['repo', 'add', name, url], { env: helmEnv });
  return {
    name,
    url,
    env,
    async publish(version: string) {
      await run(helm, ['package', DatabasesChart, '--version', version, '--destination', charts], {
        env: helmEnv,
      });
      await run(helm, ['repo', 'index', charts, '--url', url], { env: helmEnv });
      await run(helm, ['repo', 'update', name], { env: helmEnv });
    },
    async close() {
      await new Promise((resolve) => server.close(resolve));
      rmSync(home, { recursive: true, force: true });
    },
  };
}

/** A helm command about `release` whose JSON output is returned, parsed. */
async function helmJson<T>(helm: string, kubeconfig: string, namespace: string, args: string[]): Promise<T> {
  const { stdout } = await run(helm, [
    ...args,
    '--namespace',
    namespace,
    '--kubeconfig',
    kubeconfig,
    '--output',
    'json',
  ]);
  return JSON.parse(stdout) as T;
}

/** `helm history` of a release: each revision's number, status and chart (`<name>-<version>`). */
export const releaseHistory = (helm: string, kubeconfig: string, namespace: string, release: string) =>
  helmJson<{ revision: number; status: string; description: string; chart: string }[]>(
    helm,
    kubeconfig,
    namespace,
    ['history', release],
  );

/** `helm get values` of a release (the user-supplied values). */
export const releaseValues = (helm: string, kubeconfig: string, namespace: string, release: string) =>
  helmJson<{ securityContext: { pod: Record<string, unknown> }; databases: unknown[] }>(
    helm,
    kubeconfig,
    namespace,
    ['get', 'values', release],
  );
