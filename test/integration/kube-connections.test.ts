/**
 * The worker's API calls share keep-alive connections (src/cluster/connections.ts): against the
 * test bed's API server, over its real TLS with client certificates, counted where Node opens
 * them. The client library by itself opens one connection per call.
 */
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PooledKubeConfig } from '../../src/cluster/connections.js';
import { Collections } from '../../src/cluster/changes.js';
import { Kube } from '../../src/cluster/kube.js';
import { bed, uniqueName } from '../support/bed.js';

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
