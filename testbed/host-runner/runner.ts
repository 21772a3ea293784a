/**
 * A minimal kubelet for one node that kwok does not manage: it keeps the node Ready, runs the
 * containers of pods bound to it as host processes (see launch.ts), reports their phase, exit
 * code and termination message, and serves their logs to the API server.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:https';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import {
  CoordinationV1Api,
  CoreV1Api,
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type KubeConfig,
  type V1Container,
  type V1ContainerStatus,
  type V1Node,
  type V1Pod,
} from '@kubernetes/client-node';
import { identityOf, launchScript, type HostMount } from './launch.js';
import { serveContainerLogs } from './logs.js';
import { processGroupMembers, processStartTicks, stopProcessGroup } from './processes.js';

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

/** Options of a host runner. */
export interface HostRunnerOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  /** Folder for per-pod scratch files and container logs. */
  stateDir: string;
  /** Port of the kubelet endpoint (logs) on 127.0.0.1. */
  port: number;
  tlsCert: string;
  tlsKey: string;
  /**
   * Value of the {@link HostRunnerNode.Label} label on the node: a second runner (tests) with its
   * own value takes only the pods that select it, none of {@link HostRunnerPlacement}'s.
   * @default "true"
   */
  placementValue?: string;
  log?: (line: string) => void;
}

interface RunningContainer {
  child?: ChildProcess;
  /** The container's process group (its first process is the leader). */
  pgid: number;
  logFile: string;
  terminationFile: string;
  startedAt: Date;
  done: Promise<void>;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** Runs the pods bound to one node as host processes. */
export class HostRunner {
  private readonly core: CoreV1Api;
  private readonly leases: CoordinationV1Api;
  private readonly pods = new Map<string, Map<string, RunningContainer>>();
  private readonly handled = new Set<string>();
  private readonly terminating = new Set<string>();
  /** Per pod, the start or stop in progress: a stop waits until the start is done with. */
  private readonly work = new Map<string, Promise<void>>();
  private timers: NodeJS.Timeout[] = [];
  private server?: Server;
  private watchAbort?: AbortController;
  private stopped = false;
  private readonly log: (line: string) => void;

  constructor(private readonly opts: HostRunnerOptions) {
    this.core = opts.kubeConfig.makeApiClient(CoreV1Api);
    this.leases = opts.kubeConfig.makeApiClient(CoordinationV1Api);
    this.log = opts.log ?? ((l) => process.stderr.write(`[host-runner] ${l}\n`));
  }

  /** Registers the node, starts heartbeats, the log endpoint and the pod watch. */
  async start(): Promise<void> {
    mkdirSync(this.opts.stateDir, { recursive: true });
    this.server = createServer(
      { cert: readFileSync(this.opts.tlsCert), key: readFileSync(this.opts.tlsKey) },
      (req, res) =>
        serveContainerLogs(
          req,
          res,
          (ns, pod, container) => this.logFileOf(ns, pod, container),
          (ns, pod, c) => this.isRunning(ns, pod, c),
        ),
    );
    await new Promise<void>((resolve) => this.server!.listen(this.opts.port, '127.0.0.1', resolve));
    await this.registerNode();
    await this.heartbeat();
    this.timers.push(
      setInterval(
        () => void this.heartbeat().catch((e: unknown) => this.log(`heartbeat: ${String(e)}`)),
        10_000,
      ),
    );
    await this.failOrphans();
    await this.watchPods();
  }

  /** Stops watching and kills every container it started. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.timers.forEach(clearInterval);
    this.watchAbort?.abort();
    for (const containers of this.pods.values())
      for (const c of containers.values()) {
        try {
          process.kill(-c.pgid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
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
          [HostRunnerNode.Label]: this.opts.placementValue ?? 'true',
        },
      },
      spec: { taints: [{ key: HostRunnerNode.TaintKey, value: 'true', effect: 'NoSchedule' }] },
    };
  }

  private async registerNode(): Promise<void> {
    try {
      await this.core.createNode({ body: this.nodeObject() });
      this.log(`registered node ${this.opts.nodeName}`);
    } catch (err) {
      if ((err as { code?: number }).code !== 409) throw err;
    }
  }

  private async heartbeat(): Promise<void> {
    const now = new Date();
    const condition = (type: string, status: string, reason: string) => ({
      type,
      status,
      reason,
      message: reason,
      lastHeartbeatTime: now,
      lastTransitionTime: now,
    });
    await this.core.patchNodeStatus(
      {
        name: this.opts.nodeName,
        body: {
          status: {
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
          },
        },
      },
      mergePatch,
    );
    // Lease times are MicroTime: the API server wants six fractional digits.
    const renewTime = now.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
    const lease = { name: this.opts.nodeName, namespace: 'kube-node-lease' };
    const body = { spec: { holderIdentity: this.opts.nodeName, leaseDurationSeconds: 40, renewTime } };
    try {
      await this.leases.patchNamespacedLease({ ...lease, body }, mergePatch);
    } catch (err) {
      if ((err as { code?: number }).code !== 404) throw err;
      await this.leases.createNamespacedLease({
        namespace: lease.namespace,
        body: { metadata: { name: lease.name } },
      });
      await this.leases.patchNamespacedLease({ ...lease, body }, mergePatch);
    }
  }

  /**
   * Pods left Running by a previous runner process can never report an exit: stop what is left
   * of their processes and fail them.
   */
  private async failOrphans(): Promise<void> {
    const list = await this.core.listPodForAllNamespaces({
      fieldSelector: `spec.nodeName=${this.opts.nodeName}`,
    });
    for (const pod of list.items) {
      if (pod.status?.phase === 'Running') {
        await Promise.all(this.recordedGroups(pod).map((g) => stopProcessGroup(g, 0)));
        await this.patchStatus(pod, {
          phase: 'Failed',
          reason: 'HostRunnerRestarted',
          message: 'the host runner restarted while this pod ran',
        });
      }
    }
  }

  private async watchPods(): Promise<void> {
    const watch = new Watch(this.opts.kubeConfig);
    const list = await this.core.listPodForAllNamespaces({
      fieldSelector: `spec.nodeName=${this.opts.nodeName}`,
    });
    for (const pod of list.items) this.onPod(pod);
    // Re-list and watch again after any end of the watch, for as long as the API server is away.
    const ended = (err: unknown): void => {
      if (this.stopped) return;
      if (err)
        this.log(`watch ended: ${err instanceof Error ? err.message : JSON.stringify(err)}; re-listing`);
      setTimeout(() => {
        void this.core
          .listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${this.opts.nodeName}` })
          .then((l) => {
            l.items.forEach((p) => this.onPod(p));
            return begin(l.metadata?.resourceVersion);
          })
          .catch(ended);
      }, 500);
    };
    const begin = async (resourceVersion: string | undefined) => {
      if (this.stopped) return;
      this.watchAbort = await watch.watch(
        '/api/v1/pods',
        {
          fieldSelector: `spec.nodeName=${this.opts.nodeName}`,
          allowWatchBookmarks: true,
          ...(resourceVersion ? { resourceVersion } : {}),
        },
        (type: string, pod: V1Pod) => {
          if (type === 'BOOKMARK' || type === 'ERROR') return;
          if (type === 'DELETED') this.onDeleted(pod);
          else this.onPod(pod);
        },
        ended,
      );
    };
    await begin(list.metadata?.resourceVersion);
  }

  /** Retries an API read while the API server cannot be reached, as a kubelet does for volume setup. */
  private async retryWhileUnreachable<T>(fn: () => Promise<T>, timeoutMs = 120_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        const code = (err as { code?: number }).code;
        const unreachable = /ECONNREFUSED|ECONNRESET|socket hang up|FetchError/.test(String(err));
        if (!(unreachable || (code !== undefined && code >= 500)) || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  private key(pod: V1Pod): string {
    return `${pod.metadata!.namespace}/${pod.metadata!.name}/${pod.metadata!.uid}`;
  }

  /** Runs `fn` after whatever else is in progress for the pod. */
  private serial(key: string, fn: () => Promise<void>): Promise<void> {
    const next = (this.work.get(key) ?? Promise.resolve()).then(fn);
    const settled = next.catch(() => undefined);
    this.work.set(key, settled);
    void settled.then(() => {
      if (this.work.get(key) === settled) this.work.delete(key);
    });
    return next;
  }

  private onPod(pod: V1Pod): void {
    const key = this.key(pod);
    if (pod.metadata?.deletionTimestamp) {
      this.stopPod(pod, true);
      return;
    }
    if (this.handled.has(key) || pod.status?.phase !== 'Pending') return;
    this.handled.add(key);
    void this.serial(key, () => this.runPod(pod)).catch(async (e: unknown) => {
      this.log(`pod ${key} failed to start: ${String(e)}`);
      await this.patchStatus(pod, { phase: 'Failed', reason: 'HostRunnerError', message: String(e) }).catch(
        () => {},
      );
    });
  }

  /** A pod removed without a graceful deletion (forced, or its namespace gone): its processes still stop. */
  private onDeleted(pod: V1Pod): void {
    this.stopPod(pod, false);
  }

  private stopPod(pod: V1Pod, removeObject: boolean): void {
    const key = this.key(pod);
    if (this.terminating.has(key)) return;
    this.terminating.add(key);
    void this.serial(key, () => this.terminate(pod, removeObject)).catch((e: unknown) =>
      this.log(`terminate ${key}: ${String(e)}`),
    );
  }

  private podDir(pod: V1Pod): string {
    return join(
      this.opts.stateDir,
      'pods',
      `${pod.metadata!.namespace}_${pod.metadata!.name}_${pod.metadata!.uid}`,
    );
  }

  private async hostMounts(pod: V1Pod, container: V1Container): Promise<HostMount[]> {
    const mounts: HostMount[] = [];
    for (const vm of container.volumeMounts ?? []) {
      const volume = pod.spec?.volumes?.find((v) => v.name === vm.name);
      if (!volume) throw new Error(`volumeMount ${vm.name} has no volume`);
      let source: string | undefined;
      if (volume.persistentVolumeClaim) {
        const pvc = await this.core.readNamespacedPersistentVolumeClaim({
          name: volume.persistentVolumeClaim.claimName,
          namespace: pod.metadata!.namespace!,
        });
        if (!pvc.spec?.volumeName)
          throw new Error(`PVC ${volume.persistentVolumeClaim.claimName} is not bound`);
        const pv = await this.core.readPersistentVolume({ name: pvc.spec.volumeName });
        source = pv.spec?.hostPath?.path ?? pv.spec?.local?.path;
        if (!source) throw new Error(`PV ${pv.metadata?.name} has no hostPath or local path`);
      } else if (volume.hostPath) {
        source = volume.hostPath.path;
      } else if (volume.emptyDir) {
        source = join(this.podDir(pod), 'volumes', vm.name);
        mkdirSync(source, { recursive: true });
      } else {
        continue; // projected tokens, config maps: nothing our containers read
      }
      mounts.push({
        source,
        ...(vm.subPath ? { subPath: vm.subPath } : {}),
        target: vm.mountPath,
        readOnly: vm.readOnly ?? false,
      });
    }
    return mounts;
  }

  private envOf(pod: V1Pod, container: V1Container): Record<string, string> {
    const env: Record<string, string> = {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOSTNAME: pod.metadata!.name!,
      HOME: '/root',
    };
    for (const e of container.env ?? []) {
      if (e.value !== undefined) env[e.name] = e.value;
      else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = pod.metadata!.name!;
      else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace')
        env[e.name] = pod.metadata!.namespace!;
    }
    return env;
  }

  private async runPod(pod: V1Pod): Promise<void> {
    const dir = this.podDir(pod);
    mkdirSync(dir, { recursive: true });
    const containers = new Map<string, RunningContainer>();
    this.pods.set(this.key(pod), containers);
    const startedAt = new Date();
    for (const container of pod.spec?.containers ?? []) {
      const identity = identityOf(pod, container);
      if (identity.runAsNonRoot && identity.uid === 0) {
        await this.patchStatus(pod, {
          phase: 'Pending',
          waiting: {
            container: container.name,
            reason: 'CreateContainerConfigError',
            message: 'container has runAsNonRoot and image will run as root',
          },
        });
        return;
      }
      const cdir = join(dir, container.name);
      mkdirSync(cdir, { recursive: true });
      const terminationFile = join(cdir, 'termination-log');
      writeFileSync(terminationFile, '');
      const mounts = await this.retryWhileUnreachable(() => this.hostMounts(pod, container));
      // Deleted while its volumes were being looked up: it must not start at all.
      if (this.terminating.has(this.key(pod))) return;
      const script = launchScript(container, identity, mounts, this.envOf(pod, container), {
        scratchDir: cdir,
        terminationFile,
      });
      writeFileSync(join(cdir, 'launch.sh'), script);
      const logFile = join(cdir, 'container.log');
      const child = spawn(
        'unshare',
        ['--mount', '--propagation', 'private', '--', 'bash', join(cdir, 'launch.sh')],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
          detached: true,
        },
      );
      // detached: the container is its own process group, so a stop reaches every process it forks.
      const pgid = child.pid!;
      // The runner's record of the group, for a runner restarted while the container runs.
      writeFileSync(join(cdir, 'pid'), `${pgid} ${processStartTicks(pgid) ?? ''}\n`);
      const out = createWriteStream(logFile, { flags: 'a' });
      const pipe = (stream: NodeJS.ReadableStream, name: string) =>
        createInterface({ input: stream }).on('line', (line) =>
          out.write(`${new Date().toISOString()} ${name} F ${line}\n`),
        );
      pipe(child.stdout, 'stdout');
      pipe(child.stderr, 'stderr');
      const running: RunningContainer = {
        child,
        pgid,
        logFile,
        terminationFile,
        startedAt,
        done: Promise.resolve(),
      };
      running.done = new Promise<void>((resolve) => {
        child.on('close', (code, signal) => {
          out.end();
          running.child = undefined;
          const exitCode = code ?? (signal ? 128 + (signal === 'SIGKILL' ? 9 : 15) : 1);
          void this.onContainerExit(pod, container.name, exitCode).finally(resolve);
        });
      });
      containers.set(container.name, running);
      this.log(
        `started ${this.key(pod)} container ${container.name} as ${identity.uid}:${identity.gid} caps=[${identity.capabilities.join(',')}]`,
      );
    }
    await this.patchStatus(pod, { phase: 'Running' });
  }

  private exits = new Map<string, Map<string, number>>();

  private async onContainerExit(pod: V1Pod, name: string, exitCode: number): Promise<void> {
    const key = this.key(pod);
    const exits = this.exits.get(key) ?? new Map<string, number>();
    exits.set(name, exitCode);
    this.exits.set(key, exits);
    const total = pod.spec?.containers?.length ?? 1;
    if (exits.size < total) return;
    const failed = [...exits.values()].some((c) => c !== 0);
    this.log(`pod ${key} finished: ${[...exits].map(([n, c]) => `${n}=${c}`).join(' ')}`);
    await this.patchStatus(pod, { phase: failed ? 'Failed' : 'Succeeded' });
  }

  private containerStatuses(
    pod: V1Pod,
    phase: string,
    waiting?: { container: string; reason: string; message: string },
  ): V1ContainerStatus[] {
    const containers = this.pods.get(this.key(pod));
    const exits = this.exits.get(this.key(pod));
    return (pod.spec?.containers ?? []).map((c) => {
      const run = containers?.get(c.name);
      const base = {
        name: c.name,
        image: c.image ?? '',
        imageID: '',
        containerID: `host://${pod.metadata!.uid}/${c.name}`,
        restartCount: 0,
      };
      const exitCode = exits?.get(c.name);
      if (waiting?.container === c.name || !run) {
        return {
          ...base,
          ready: false,
          started: false,
          state: { waiting: { reason: waiting?.reason ?? 'ContainerCreating', message: waiting?.message } },
        };
      }
      if (exitCode !== undefined) {
        const message = existsSync(run.terminationFile)
          ? readFileSync(run.terminationFile, 'utf8').slice(0, 4096)
          : '';
        return {
          ...base,
          ready: false,
          started: false,
          state: {
            terminated: {
              exitCode,
              reason: exitCode === 0 ? 'Completed' : 'Error',
              ...(message ? { message } : {}),
              startedAt: run.startedAt,
              finishedAt: new Date(),
              containerID: base.containerID,
            },
          },
        };
      }
      return {
        ...base,
        ready: phase === 'Running',
        started: true,
        state: { running: { startedAt: run.startedAt } },
      };
    });
  }

  private async patchStatus(
    pod: V1Pod,
    change: {
      phase: string;
      reason?: string;
      message?: string;
      waiting?: { container: string; reason: string; message: string };
    },
  ): Promise<void> {
    const now = new Date();
    const ready = change.phase === 'Running' ? 'True' : 'False';
    const cond = (type: string, status: string) => ({
      type,
      status,
      lastProbeTime: null,
      lastTransitionTime: now,
    });
    const status = {
      phase: change.phase,
      ...(change.reason ? { reason: change.reason, message: change.message } : {}),
      hostIP: '127.0.0.1',
      hostIPs: [{ ip: '127.0.0.1' }],
      podIP: '127.0.0.1',
      podIPs: [{ ip: '127.0.0.1' }],
      startTime: pod.status?.startTime ?? now,
      conditions: [
        cond('PodReadyToStartContainers', change.phase === 'Pending' ? 'False' : 'True'),
        cond('Initialized', 'True'),
        cond('ContainersReady', ready),
        cond('Ready', ready),
        cond('PodScheduled', 'True'),
      ],
      containerStatuses: this.containerStatuses(pod, change.phase, change.waiting),
    };
    await this.core.patchNamespacedPodStatus(
      { name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, body: { status } },
      mergePatch,
    );
  }

  /**
   * The process groups a previous runner process recorded for a pod and that still run: the
   * leader with the recorded start time, or, the leader gone, members of its group (a process
   * group ID is not reused while any member lives).
   */
  private recordedGroups(pod: V1Pod): number[] {
    const dir = this.podDir(pod);
    if (!existsSync(dir)) return [];
    const groups: number[] = [];
    for (const container of readdirSync(dir)) {
      const file = join(dir, container, 'pid');
      if (!existsSync(file)) continue;
      const [pid, ticks] = readFileSync(file, 'utf8').trim().split(' ').map(Number);
      if (!pid) continue;
      const now = processStartTicks(pid);
      if (now === undefined ? processGroupMembers(pid).length > 0 : now === ticks) groups.push(pid);
    }
    return groups;
  }

  /**
   * Stops a pod as a kubelet does: SIGTERM to every process of each container, SIGKILL after
   * the grace period, and only once none is left the final delete (grace 0, guarded by the
   * pod's uid) that removes the object — so a deleted pod never leaves a process behind.
   */
  private async terminate(pod: V1Pod, removeObject: boolean): Promise<void> {
    const key = this.key(pod);
    const containers = this.pods.get(key);
    const grace =
      (pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30) * 1000;
    const groups = containers ? [...containers.values()].map((c) => c.pgid) : this.recordedGroups(pod);
    const killed = await Promise.all(groups.map((g) => stopProcessGroup(g, grace)));
    if (containers) await Promise.all([...containers.values()].map((c) => c.done));
    if (groups.length)
      this.log(`stopped ${key}${killed.some(Boolean) ? ' (SIGKILL after the grace period)' : ''}`);
    this.pods.delete(key);
    this.exits.delete(key);
    if (removeObject) {
      try {
        await this.core.deleteNamespacedPod({
          name: pod.metadata!.name!,
          namespace: pod.metadata!.namespace!,
          gracePeriodSeconds: 0,
          // In the body too: a body without it would override the query parameter.
          body: { gracePeriodSeconds: 0, preconditions: { uid: pod.metadata!.uid } },
        });
      } catch (err) {
        if ((err as { code?: number }).code !== 404 && (err as { code?: number }).code !== 409) throw err;
      }
    }
    rmSync(this.podDir(pod), { recursive: true, force: true });
  }

  private logFileOf(namespace: string, podName: string, container: string | undefined): string | undefined {
    for (const [key, containers] of this.pods) {
      const [ns, name] = key.split('/');
      if (ns !== namespace || name !== podName) continue;
      const c = container ? containers.get(container) : [...containers.values()][0];
      return c?.logFile;
    }
    return undefined;
  }

  private isRunning(namespace: string, podName: string, container: string | undefined): boolean {
    for (const [key, containers] of this.pods) {
      const [ns, name] = key.split('/');
      if (ns !== namespace || name !== podName) continue;
      const c = container ? containers.get(container) : [...containers.values()][0];
      return c?.child !== undefined;
    }
    return false;
  }
}
