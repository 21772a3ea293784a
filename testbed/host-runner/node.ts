/**
 * The host runner's Node object: registered once, then kept Ready by heartbeats — node status
 * with its conditions, and the node's lease in `kube-node-lease` — as a kubelet keeps its own.
 */
import {
  PatchStrategy,
  setHeaderOptions,
  type CoordinationV1Api,
  type CoreV1Api,
  type V1Node,
} from '@kubernetes/client-node';

/** Labels and taint that mark the host runner's node. */
export const HostRunnerNode = {
  Label: 'runas-migrate.dev/host-runner',
  TaintKey: 'runas-migrate.dev/host-runner',
} as const;

/** The `job` placement that sends migration Jobs to the host runner's node. */
export const HostRunnerPlacement = {
  nodeSelector: { [HostRunnerNode.Label]: 'true' },
  tolerations: [{ key: HostRunnerNode.TaintKey, operator: 'Exists' as const, effect: 'NoSchedule' as const }],
};

/** What a {@link HostNode} needs. */
export interface HostNodeOptions {
  core: CoreV1Api;
  leases: CoordinationV1Api;
  nodeName: string;
  /** Port of the kubelet endpoint (logs) on 127.0.0.1, advertised in the node status. */
  port: number;
  /** Value of the {@link HostRunnerNode.Label} label. */
  placementValue: string;
  log: (line: string) => void;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

const heartbeatIntervalMs = 10_000;

/** Registers the host runner's node and keeps it Ready. */
export class HostNode {
  private timer?: NodeJS.Timeout;

  constructor(private readonly opts: HostNodeOptions) {}

  /** Registers the node (kept if it exists), sends a first heartbeat and then one every 10 s. */
  async start(): Promise<void> {
    await this.register();
    await this.heartbeat();
    this.timer = setInterval(
      () => void this.heartbeat().catch((e: unknown) => this.opts.log(`heartbeat: ${String(e)}`)),
      heartbeatIntervalMs,
    );
  }

  /** Stops the heartbeats; the node object stays. */
  stop(): void {
    clearInterval(this.timer);
  }

  private nodeObject(): V1Node {
    return {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: this.opts.nodeName,
        labels: {
          'kubernetes.io/hostname': this.opts.nodeName,
          'kubernetes.io/os': 'linux',
          'kubernetes.io/arch': 'amd64',
          [HostRunnerNode.Label]: this.opts.placementValue,
        },
      },
      spec: { taints: [{ key: HostRunnerNode.TaintKey, value: 'true', effect: 'NoSchedule' }] },
    };
  }

  private async register(): Promise<void> {
    try {
      await this.opts.core.createNode({ body: this.nodeObject() });
      this.opts.log(`registered node ${this.opts.nodeName}`);
    } catch (err) {
      if ((err as { code?: number }).code !== 409) throw err;
    }
  }

  private async heartbeat(): Promise<void> {
    const now = new Date();
    await this.opts.core.patchNodeStatus(
      { name: this.opts.nodeName, body: { status: this.nodeStatus(now) } },
      mergePatch,
    );
    await this.renewLease(now);
  }

  private nodeStatus(now: Date) {
    const condition = (type: string, status: string, reason: string) => ({
      type,
      status,
      reason,
      message: reason,
      lastHeartbeatTime: now,
      lastTransitionTime: now,
    });
    return {
      capacity: { cpu: '2', memory: '8Gi', pods: '110' },
      allocatable: { cpu: '2', memory: '8Gi', pods: '110' },
      addresses: [
        { type: 'InternalIP', address: '127.0.0.1' },
        { type: 'Hostname', address: '127.0.0.1' },
      ],
      daemonEndpoints: { kubeletEndpoint: { Port: this.opts.port } },
      nodeInfo: {
        architecture: 'amd64',
        operatingSystem: 'linux',
        kubeletVersion: 'runas-migrate-host-runner',
        kubeProxyVersion: '',
        containerRuntimeVersion: 'host://unshare',
        kernelVersion: '',
        osImage: 'host',
        machineID: '',
        systemUUID: '',
        bootID: '',
      },
      conditions: [
        condition('Ready', 'True', 'HostRunnerReady'),
        condition('MemoryPressure', 'False', 'HostRunnerHasSufficientMemory'),
        condition('DiskPressure', 'False', 'HostRunnerHasNoDiskPressure'),
        condition('PIDPressure', 'False', 'HostRunnerHasSufficientPID'),
      ],
    };
  }

  private async renewLease(now: Date): Promise<void> {
    // Lease times are MicroTime: the API server wants six fractional digits.
    const renewTime = now.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
    const lease = { name: this.opts.nodeName, namespace: 'kube-node-lease' };
    const body = { spec: { holderIdentity: this.opts.nodeName, leaseDurationSeconds: 40, renewTime } };
    try {
      await this.opts.leases.patchNamespacedLease({ ...lease, body }, mergePatch);
    } catch (err) {
      if ((err as { code?: number }).code !== 404) throw err;
      await this.opts.leases.createNamespacedLease({
        namespace: lease.namespace,
        body: { metadata: { name: lease.name } },
      });
      await this.opts.leases.patchNamespacedLease({ ...lease, body }, mergePatch);
    }
  }
}
