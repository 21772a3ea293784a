/**
 * Connections to the API server that are kept and reused. `@kubernetes/client-node` 1.x builds
 * a new `https.Agent` for every request (`KubeConfig.createAgent`, called from
 * `applySecurityAuthentication` and `applyToFetchOptions`), so every call opens its own TCP
 * connection, builds a new TLS context from the kubeconfig's CA, certificate and key, and does a
 * full handshake; the old agents' native TLS state lingers until a garbage collection. A worker
 * running 20 migrations makes thousands of calls: that cost is measured in `bench/fleet.ts`.
 *
 * {@link PooledKubeConfig} hands every request one keep-alive agent per set of TLS options
 * instead (a certificate rotated by an exec plugin gets an agent of its own).
 *
 * A kept connection can outlive what lies between the worker and the API server: a cloud load
 * balancer or a NAT table forgets an idle flow silently (no FIN, no reset), and a call sent on it
 * then waits for TCP to give up, many minutes. So a kept connection is closed after
 * {@link PooledConnections.idleMs} idle, below every common balancer's idle timeout, and every
 * call has a deadline, {@link PooledConnections.callMs}, after which it fails as
 * `KubeUnavailable` (retried by the step) and its connection is destroyed.
 */
import { createHash } from 'node:crypto';
import https from 'node:https';
import { KubeConfig, type RequestContext } from '@kubernetes/client-node';

import { KubeConnectionModes, KubeConnectionsEnv, type KubeConnections } from '../core/settings.js';

export { KubeConnectionModes, KubeConnectionsEnv, type KubeConnections };

/** The TLS options of an agent that decide which connections it may share. */
const identity = (o: https.AgentOptions): string => {
  const h = createHash('sha256');
  for (const v of [o.ca, o.cert, o.key, o.pfx, o.passphrase, o.servername, o.rejectUnauthorized])
    h.update(v === undefined ? '\0' : Array.isArray(v) ? v.map(String).join('\n') : String(v)).update('\x1f');
  return h.digest('hex');
};

/** How long kept connections live and calls may take. */
export interface PooledConnections {
  /**
   * A kept connection idle this long is closed [10 s]: below the idle timeouts of cloud load
   * balancers (60 s and more) and of the API server itself, so neither cuts one under a call.
   */
  idleMs?: number;
  /**
   * A call without an answer this long is abandoned and its connection destroyed [75 s]: the API
   * server ends its own requests after 60 s, so only a lost connection goes past it. Watches and
   * logs, which the API server lets run long, have none.
   */
  callMs?: number;
}

/** The defaults of {@link PooledConnections}. */
export const PooledConnectionDefaults = { idleMs: 10_000, callMs: 75_000 } as const;

/** A kubeconfig whose requests share keep-alive connections (see the module's comment). */
export class PooledKubeConfig extends KubeConfig {
  private readonly agents = new Map<string, https.Agent>();
  /** How long a kept connection may stay idle. */
  readonly idleMs: number;
  /** The deadline of every call but watches and log reads (both long-running by design). */
  readonly callMs: number;

  constructor(options: PooledConnections = {}) {
    super();
    this.idleMs = options.idleMs ?? PooledConnectionDefaults.idleMs;
    this.callMs = options.callMs ?? PooledConnectionDefaults.callMs;
  }

  private pooled(agent: unknown): https.Agent | undefined {
    // Proxy agents and plain http are left as the library builds them.
    if (!(agent instanceof https.Agent) || agent.constructor !== https.Agent) return undefined;
    const key = identity(agent.options);
    let shared = this.agents.get(key);
    if (!shared) {
      // Node destroys a kept socket idle for `timeout`; one in use (a quiet watch) stays open.
      shared = new https.Agent({
        ...agent.options,
        keepAlive: true,
        maxFreeSockets: 16,
        timeout: this.idleMs,
      });
      this.agents.set(key, shared);
    }
    return shared;
  }

  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    await super.applySecurityAuthentication(context);
    const shared = this.pooled(context.getAgent());
    if (shared) context.setAgent(shared);
    // node-fetch destroys the request's socket on abort, so a lost connection is not kept. A log
    // is a long-running request to the API server, not cut at 60 s: it gets no deadline.
    if (!context.getSignal() && !new URL(context.getUrl()).pathname.endsWith('/log'))
      context.setSignal(AbortSignal.timeout(this.callMs));
  }

  /** `err` in words an operator can act on when it is a call abandoned at its deadline. */
  explain(err: unknown): unknown {
    if ((err as { name?: unknown } | null)?.name !== 'AbortError') return err;
    return new Error(
      `the API server did not answer within ${this.callMs / 1000} s (its connection was lost or stuck, and is closed: the next call opens a new one)`,
    );
  }

  override async applyToFetchOptions(
    opts: https.RequestOptions,
  ): ReturnType<KubeConfig['applyToFetchOptions']> {
    const init = await super.applyToFetchOptions(opts);
    const shared = this.pooled(init.agent);
    if (shared) init.agent = shared;
    return init;
  }

  /** Closes the kept connections. */
  close(): void {
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
  }

  /** How many agents (sets of TLS options) this kubeconfig has used. */
  get agentCount(): number {
    return this.agents.size;
  }
}

/** A kubeconfig for `mode`: pooled connections, or the library's own agent per request. */
export function kubeConfigFor(mode: KubeConnections): KubeConfig {
  return mode === 'pooled' ? new PooledKubeConfig() : new KubeConfig();
}

/** The connection mode of `value` (a flag or {@link KubeConnectionsEnv}); `pooled` when unset. */
export function kubeConnectionsOf(value: string | undefined): KubeConnections {
  if (value === undefined || value === '' || value === 'pooled') return 'pooled';
  if (value === 'per-request') return 'per-request';
  throw new Error(
    `kube connections: "${value}" is not a connection mode; use pooled or per-request (${KubeConnectionsEnv})`,
  );
}
