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
 */
import { createHash } from 'node:crypto';
import https from 'node:https';
import { KubeConfig, type RequestContext } from '@kubernetes/client-node';

/** How the worker connects to the API server. */
export type KubeConnections = 'pooled' | 'per-request';
/** The connection modes, for the CLI and the environment. */
export const KubeConnectionModes = ['pooled', 'per-request'] as const satisfies readonly KubeConnections[];
/** Environment variable of the connection mode (`pooled` unless it says `per-request`). */
export const KubeConnectionsEnv = 'RUNAS_MIGRATE_KUBE_CONNECTIONS';

/** The TLS options of an agent that decide which connections it may share. */
const identity = (o: https.AgentOptions): string => {
  const h = createHash('sha256');
  for (const v of [o.ca, o.cert, o.key, o.pfx, o.passphrase, o.servername, o.rejectUnauthorized])
    h.update(v === undefined ? '\0' : Array.isArray(v) ? v.map(String).join('\n') : String(v)).update('\x1f');
  return h.digest('hex');
};

/** A kubeconfig whose requests share keep-alive connections (see the module's comment). */
export class PooledKubeConfig extends KubeConfig {
  private readonly agents = new Map<string, https.Agent>();

  private pooled(agent: unknown): https.Agent | undefined {
    // Proxy agents and plain http are left as the library builds them.
    if (!(agent instanceof https.Agent) || agent.constructor !== https.Agent) return undefined;
    const key = identity(agent.options);
    let shared = this.agents.get(key);
    if (!shared) {
      shared = new https.Agent({ ...agent.options, keepAlive: true, maxFreeSockets: 16 });
      this.agents.set(key, shared);
    }
    return shared;
  }

  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    await super.applySecurityAuthentication(context);
    const shared = this.pooled(context.getAgent());
    if (shared) context.setAgent(shared);
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
