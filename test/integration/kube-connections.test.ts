/**
 * The worker's API calls share keep-alive connections (src/cluster/connections.ts): against the
 * test bed's API server, over its real TLS with client certificates, counted where Node opens
 * them. The client library by itself opens one connection per call.
 */
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PooledKubeConfig, type PooledConnections } from '../../src/cluster/connections.js';
import { Collections } from '../../src/cluster/changes.js';
import { FailureType } from '../../src/core/failures.js';
import { Kube } from '../../src/cluster/kube.js';
import { bed, createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { startIdleCutProxy, type IdleCutProxy } from '../support/idle-cut-proxy.js';

const calls = 12;

/** Counts the TLS connections any https.Agent opens while `fn` runs. */
async function connectionsDuring(fn: () => Promise<void>): Promise<number> {
  const spy = vi.spyOn(
    https.Agent.prototype as unknown as { createConnection: () => Duplex },
    'createConnection',
  );
  try {
    await fn();
    return spy.mock.calls.length;
  } finally {
    spy.mockRestore();
  }
}

afterEach(() => vi.restoreAllMocks());

describe("the worker's connections to the API server", () => {
  it('are kept and reused across calls and a watch, where the library alone opens one per call', async () => {
    const pooledConfig = new PooledKubeConfig();
    pooledConfig.loadFromFile(bed().kubeconfig);
    const pooled = new Kube(pooledConfig);
    const perRequest = Kube.fromKubeconfig(bed().kubeconfig, 'per-request');
    const namespace = uniqueName('missing');

    const library = await connectionsDuring(async () => {
      for (let i = 0; i < calls; i++) await perRequest.listPods(namespace, '');
    });
    const kept = await connectionsDuring(async () => {
      for (let i = 0; i < calls; i++) await pooled.listPods(namespace, '');
      // A watch holds a connection of its own while calls go on beside it.
      const feed = pooled.watchChanges([{ path: Collections.pods(namespace) }]);
      try {
        await feed.changeOrTimeout(300);
        for (let i = 0; i < calls; i++) await pooled.listPods(namespace, '');
      } finally {
        feed.close();
      }
    });
    expect(library).toBe(calls);
    // One for the calls, one for the watch (and one spare should the watch connect mid-call).
    expect(kept).toBeGreaterThanOrEqual(1);
    expect(kept).toBeLessThanOrEqual(3);
    expect(pooledConfig.agentCount).toBe(1);
    pooled.close();
  });
});

/** A pooled client whose API server is reached through `proxy`. */
function pooledThrough(proxy: IdleCutProxy, options?: PooledConnections): Kube {
  const config = new PooledKubeConfig(options);
  config.loadFromFile(bed().kubeconfig);
  const cluster = config.getCurrentCluster()!;
  config.loadFromOptions({
    clusters: [{ ...cluster, server: `https://127.0.0.1:${proxy.port}` }],
    users: config.users,
    contexts: config.contexts,
    currentContext: config.currentContext,
  });
  return new Kube(config);
}

/** `call`'s outcome, or a rejection naming the wait when it takes longer than `ms`. */
function within<T>(ms: number, call: Promise<T>): Promise<T> {
  return Promise.race([
    call,
    sleep(ms, undefined, { ref: false }).then(() => {
      throw new Error(`no answer within ${ms} ms`);
    }),
  ]);
}

describe('kept connections behind a load balancer that cuts idle ones', () => {
  const cutAfterMs = 1_000;
  const target = () => {
    const url = new URL(kubeConfig().getCurrentCluster()!.server);
    return { host: url.hostname, port: Number(url.port) };
  };
  let proxy: IdleCutProxy | undefined;
  let kube: Kube | undefined;
  afterEach(async () => {
    kube?.close();
    await proxy?.close();
    kube = proxy = undefined;
  });

  it('a connection the balancer forgot silently costs one call its deadline, and the next call gets a new one', async () => {
    proxy = await startIdleCutProxy(target(), cutAfterMs, 'silent');
    // Kept longer than the balancer remembers it: the hazard itself.
    kube = pooledThrough(proxy, { idleMs: 60_000, callMs: 2_000 });
    const namespace = uniqueName('missing');
    await kube.listPods(namespace, '');
    await sleep(cutAfterMs * 1.5);
    expect(proxy.cut).toBe(1);

    const started = Date.now();
    const lost = await within(10_000, kube.listPods(namespace, '')).catch((err: unknown) => err);
    expect(lost).toMatchObject({ type: FailureType.KubeUnavailable });
    expect((lost as Error).message).toMatch(/did not answer within 2 s/);
    expect(Date.now() - started).toBeLessThan(5_000);
    // Retried, as a step's retry policy does: a new connection answers.
    await expect(within(5_000, kube.listPods(namespace, ''))).resolves.toEqual([]);
    expect(proxy.opened).toBe(2);
  });

  it('a kept connection is closed before a balancer forgets it, so the call after a pause answers at once', async () => {
    proxy = await startIdleCutProxy(target(), cutAfterMs, 'silent');
    kube = pooledThrough(proxy, { idleMs: cutAfterMs / 2, callMs: 60_000 });
    const namespace = uniqueName('missing');
    await kube.listPods(namespace, '');
    await sleep(cutAfterMs * 1.5);
    await expect(within(5_000, kube.listPods(namespace, ''))).resolves.toEqual([]);
    // Our side closed first: the balancer had nothing to cut.
    expect(proxy.cut).toBe(0);
    expect(proxy.opened).toBe(2);
  });

  it('a connection the balancer resets is dropped from the pool, and the next call answers', async () => {
    proxy = await startIdleCutProxy(target(), cutAfterMs, 'reset');
    kube = pooledThrough(proxy);
    const namespace = uniqueName('missing');
    await kube.listPods(namespace, '');
    await sleep(cutAfterMs * 1.5);
    expect(proxy.cut).toBe(1);
    await expect(within(5_000, kube.listPods(namespace, ''))).resolves.toEqual([]);
    expect(proxy.opened).toBe(2);
  });

  it('a watch quiet for longer than the idle timeout keeps its connection', async () => {
    const config = new PooledKubeConfig({ idleMs: 300 });
    config.loadFromFile(bed().kubeconfig);
    kube = new Kube(config);
    const name = uniqueName('quiet');
    const feed = kube.watchChanges([{ path: '/api/v1/namespaces', fieldSelector: `metadata.name=${name}` }]);
    let deleteNamespace: (() => Promise<void>) | undefined;
    try {
      await sleep(1_500);
      deleteNamespace = await createNamespace(kubeConfig(), name);
      await feed.changeOrTimeout(10_000);
      expect(feed.counts.events).toBeGreaterThanOrEqual(1);
      expect(feed.counts.watches).toBe(1);
      expect(feed.counts.errors).toBe(0);
    } finally {
      feed.close();
      await deleteNamespace?.();
    }
  });
});
