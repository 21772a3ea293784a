/**
 * The pods bound to the host runner's node, handled as a kubelet handles them: listed and
 * watched, admitted and started as host processes, their status reported as their containers
 * run and exit, and on deletion their processes stopped before the object goes.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  PatchStrategy,
  Watch,
  setHeaderOptions,
  type CoreV1Api,
  type KubeConfig,
  type V1Container,
  type V1Pod,
} from '@kubernetes/client-node';
import { containerEnv, execArgv, identityOf, launchScript, type ContainerIdentity } from './launch.js';
import { podStatus, terminationMessage, type ContainerHistory, type PodStatusChange } from './pod-status.js';
import { ReadinessProbe } from './probes.js';
import {
  recordedGroups,
  signalGroup,
  startContainerProcess,
  stopProcessGroup,
  type RunningContainer,
} from './processes.js';
import { hostMounts, retryWhileUnreachable } from './volumes.js';

/** What a {@link HostPods} needs. */
export interface HostPodsOptions {
  kubeConfig: KubeConfig;
  core: CoreV1Api;
  nodeName: string;
  /** Folder for per-pod scratch files and container logs. */
  stateDir: string;
  log: (line: string) => void;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** Runs the pods bound to one node as host processes. */
export class HostPods {
  /** Per pod, the containers started, by name. */
  private readonly running = new Map<string, Map<string, RunningContainer>>();
  /** Per pod, the exit codes of the containers that have exited for good, by name. */
  private readonly exits = new Map<string, Map<string, number>>();
  /** Per pod, the restarts of its containers, by name. */
  private readonly history = new Map<string, Map<string, ContainerHistory>>();
  /** Per pod, the readiness probes running and their verdicts, by container name. */
  private readonly probes = new Map<string, Map<string, ReadinessProbe>>();
  private readonly ready = new Map<string, Map<string, boolean>>();
  /** Per pod, the restarts waiting out their back-off. */
  private readonly restartTimers = new Map<string, Set<NodeJS.Timeout>>();
  private readonly handled = new Set<string>();
  private readonly terminating = new Set<string>();
  /** Per pod, the start or stop in progress: a stop waits until the start is done with. */
  private readonly work = new Map<string, Promise<void>>();
  private watchAbort?: AbortController;
  private stopped = false;

  constructor(private readonly opts: HostPodsOptions) {}

  /** Fails the pods a previous runner process left Running, then runs the node's pods and watches for more. */
  async start(): Promise<void> {
    await this.failOrphans();
    await this.watch();
  }

  /** Stops watching and kills every container it started. */
  stop(): void {
    this.stopped = true;
    this.watchAbort?.abort();
    for (const key of [...this.probes.keys(), ...this.restartTimers.keys()]) this.forgetTimers(key);
    for (const containers of this.running.values())
      for (const c of containers.values()) signalGroup(c.pgid, 'SIGKILL');
  }

  /** The log file of a container this runner started (the pod's first one without `container`). */
  logFileOf(namespace: string, podName: string, container: string | undefined): string | undefined {
    return this.find(namespace, podName, container)?.logFile;
  }

  /**
   * The argv prefix that runs a command in a running container (the pod's first one without
   * `container`), as `kubectl exec` does; undefined when no such container runs.
   */
  execPrefixOf(namespace: string, podName: string, container: string | undefined): string[] | undefined {
    const c = this.find(namespace, podName, container);
    return c?.child ? c.execPrefix : undefined;
  }

  /** Whether a container this runner started still runs (the pod's first one without `container`). */
  isRunning(namespace: string, podName: string, container: string | undefined): boolean {
    return this.find(namespace, podName, container)?.child !== undefined;
  }

  private find(namespace: string, podName: string, container: string | undefined) {
    for (const [key, containers] of this.running) {
      const [ns, name] = key.split('/');
      if (ns !== namespace || name !== podName) continue;
      return container ? containers.get(container) : [...containers.values()][0];
    }
    return undefined;
  }

  private listPods() {
    return this.opts.core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${this.opts.nodeName}` });
  }

  /**
   * Pods left Running by a previous runner process can never report an exit: stop what is left
   * of their processes and fail them.
   */
  private async failOrphans(): Promise<void> {
    const list = await this.listPods();
    for (const pod of list.items) {
      if (pod.status?.phase === 'Running') {
        await Promise.all(recordedGroups(this.podDir(pod)).map((g) => stopProcessGroup(g, 0)));
        await this.patchStatus(pod, {
          phase: 'Failed',
          reason: 'HostRunnerRestarted',
          message: 'the host runner restarted while this pod ran',
        });
      }
    }
  }

  private async watch(): Promise<void> {
    const watch = new Watch(this.opts.kubeConfig);
    const list = await this.listPods();
    for (const pod of list.items) this.onPod(pod);
    // Re-list and watch again after any end of the watch, for as long as the API server is away.
    const ended = (err: unknown): void => {
      if (this.stopped) return;
      if (err)
        this.opts.log(`watch ended: ${err instanceof Error ? err.message : JSON.stringify(err)}; re-listing`);
      setTimeout(() => {
        void this.listPods()
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

  private perPod<V>(maps: Map<string, Map<string, V>>, key: string): Map<string, V> {
    let m = maps.get(key);
    if (!m) maps.set(key, (m = new Map<string, V>()));
    return m;
  }

  private forgetTimers(key: string): void {
    for (const p of this.probes.get(key)?.values() ?? []) p.stop();
    for (const t of this.restartTimers.get(key) ?? []) clearTimeout(t);
    this.probes.delete(key);
    this.restartTimers.delete(key);
  }

  private key(pod: V1Pod): string {
    return `${pod.metadata!.namespace}/${pod.metadata!.name}/${pod.metadata!.uid}`;
  }

  private podDir(pod: V1Pod): string {
    return join(
      this.opts.stateDir,
      'pods',
      `${pod.metadata!.namespace}_${pod.metadata!.name}_${pod.metadata!.uid}`,
    );
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
      this.opts.log(`pod ${key} failed to start: ${String(e)}`);
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
      this.opts.log(`terminate ${key}: ${String(e)}`),
    );
  }

  private async runPod(pod: V1Pod): Promise<void> {
    mkdirSync(this.podDir(pod), { recursive: true });
    const containers = new Map<string, RunningContainer>();
    this.running.set(this.key(pod), containers);
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
      const running = await this.startContainer(pod, container, identity, startedAt);
      if (!running) return;
      containers.set(container.name, running);
      this.opts.log(
        `started ${this.key(pod)} container ${container.name} as ${identity.uid}:${identity.gid} caps=[${identity.capabilities.join(',')}]`,
      );
    }
    await this.patchStatus(pod, { phase: 'Running' });
  }

  /** Sets up a container's folder and volumes and starts it; undefined if the pod is being deleted. */
  private async startContainer(
    pod: V1Pod,
    container: V1Container,
    identity: ContainerIdentity,
    startedAt: Date,
  ): Promise<RunningContainer | undefined> {
    const dir = join(this.podDir(pod), container.name);
    mkdirSync(dir, { recursive: true });
    const terminationFile = join(dir, 'termination-log');
    writeFileSync(terminationFile, '');
    const mounts = await retryWhileUnreachable(() =>
      hostMounts(this.opts.core, pod, container, this.podDir(pod)),
    );
    // Deleted while its volumes were being looked up: it must not start at all.
    if (this.terminating.has(this.key(pod))) return undefined;
    const env = containerEnv(pod, container);
    const script = launchScript(container, identity, mounts, env, { scratchDir: dir, terminationFile });
    const running = startContainerProcess({
      dir,
      script,
      terminationFile,
      startedAt,
      // Never an unhandled rejection: one (the API server away at the exit) would end the runner.
      onExit: (exitCode) =>
        this.onContainerExit(pod, container, exitCode).catch((e: unknown) =>
          this.opts.log(`exit of ${this.key(pod)}/${container.name}: ${String(e)}`),
        ),
    });
    running.execPrefix = execArgv(running.pgid, container, identity, env);
    if (ReadinessProbe.supported(container.readinessProbe)) {
      const key = this.key(pod);
      const probe = new ReadinessProbe(container.readinessProbe, running.execPrefix, (ready) => {
        this.perPod(this.ready, key).set(container.name, ready);
        void this.serial(key, () =>
          this.terminating.has(key) ? Promise.resolve() : this.patchStatus(pod, { phase: 'Running' }),
        ).catch((e: unknown) => this.opts.log(`readiness of ${key}: ${String(e)}`));
      });
      this.perPod(this.ready, key).set(container.name, false);
      this.perPod(this.probes, key).set(container.name, probe);
      probe.start();
    }
    return running;
  }

  private async onContainerExit(pod: V1Pod, container: V1Container, exitCode: number): Promise<void> {
    const key = this.key(pod);
    const name = container.name;
    this.probes.get(key)?.get(name)?.stop();
    this.probes.get(key)?.delete(name);
    this.ready.get(key)?.set(name, false);
    const policy = pod.spec?.restartPolicy ?? 'Always';
    if (
      !this.stopped &&
      !this.terminating.has(key) &&
      (policy === 'Always' || (policy === 'OnFailure' && exitCode !== 0))
    ) {
      await this.scheduleRestart(pod, container, exitCode);
      return;
    }
    const exits = this.perPod(this.exits, key);
    exits.set(name, exitCode);
    const total = pod.spec?.containers?.length ?? 1;
    if (exits.size < total) return;
    const failed = [...exits.values()].some((c) => c !== 0);
    this.opts.log(`pod ${key} finished: ${[...exits].map(([n, c]) => `${n}=${c}`).join(' ')}`);
    // A pod's end must reach the API server (its Job waits for it), whenever the server is back.
    for (let delayMs = 500; ; delayMs = Math.min(delayMs * 2, 5_000)) {
      try {
        await this.patchStatus(pod, { phase: failed ? 'Failed' : 'Succeeded' });
        return;
      } catch (e) {
        if (this.stopped) return;
        this.opts.log(`status of ${key}: ${String(e)}; again in ${delayMs} ms`);
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
    }
  }

  /**
   * Restarts a container of a pod whose restartPolicy asks for it, as a kubelet does: at once the
   * first time, then after a back-off that doubles from 10 s up to 5 min (CrashLoopBackOff), its
   * last exit and termination message kept in the status.
   */
  private async scheduleRestart(pod: V1Pod, container: V1Container, exitCode: number): Promise<void> {
    const key = this.key(pod);
    const run = this.running.get(key)?.get(container.name);
    const past = this.perPod(this.history, key).get(container.name) ?? { restartCount: 0 };
    this.perPod(this.history, key).set(container.name, past);
    past.last = {
      exitCode,
      message: run ? terminationMessage(container, run, exitCode) : '',
      startedAt: run?.startedAt ?? new Date(),
      finishedAt: new Date(),
    };
    const delayMs = past.restartCount === 0 ? 0 : Math.min(10_000 * 2 ** (past.restartCount - 1), 300_000);
    past.backOff = `back-off ${delayMs / 1000}s restarting failed container=${container.name} pod=${pod.metadata!.name}`;
    this.opts.log(`${key} container ${container.name} exited ${exitCode}; restart in ${delayMs / 1000} s`);
    await this.patchStatus(pod, { phase: 'Running' });
    const timers = this.restartTimers.get(key) ?? new Set<NodeJS.Timeout>();
    this.restartTimers.set(key, timers);
    const timer = setTimeout(() => {
      timers.delete(timer);
      void this.serial(key, async () => {
        if (this.stopped || this.terminating.has(key)) return;
        past.restartCount++;
        past.backOff = undefined;
        const running = await this.startContainer(pod, container, identityOf(pod, container), new Date());
        if (!running) return;
        this.perPod(this.running, key).set(container.name, running);
        await this.patchStatus(pod, { phase: 'Running' });
      }).catch((e: unknown) => this.opts.log(`restart of ${key}: ${String(e)}`));
    }, delayMs);
    timers.add(timer);
  }

  private async patchStatus(pod: V1Pod, change: PodStatusChange): Promise<void> {
    const key = this.key(pod);
    const status = podStatus(pod, change, {
      containers: this.running.get(key),
      exits: this.exits.get(key),
      history: this.history.get(key),
      ready: this.ready.get(key),
    });
    await this.opts.core.patchNamespacedPodStatus(
      { name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, body: { status } },
      mergePatch,
    );
  }

  /**
   * Stops a pod as a kubelet does: SIGTERM to every process of each container, SIGKILL after
   * the grace period, and only once none is left the final delete (grace 0, guarded by the
   * pod's uid) that removes the object — so a deleted pod never leaves a process behind.
   */
  private async terminate(pod: V1Pod, removeObject: boolean): Promise<void> {
    const key = this.key(pod);
    this.forgetTimers(key);
    const containers = this.running.get(key);
    const grace =
      (pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30) * 1000;
    const groups = containers
      ? [...containers.values()].map((c) => c.pgid)
      : recordedGroups(this.podDir(pod));
    const killed = await Promise.all(groups.map((g) => stopProcessGroup(g, grace)));
    if (containers) await Promise.all([...containers.values()].map((c) => c.done));
    if (groups.length)
      this.opts.log(`stopped ${key}${killed.some(Boolean) ? ' (SIGKILL after the grace period)' : ''}`);
    this.forgetTimers(key);
    this.running.delete(key);
    this.exits.delete(key);
    this.history.delete(key);
    this.ready.delete(key);
    if (removeObject) {
      try {
        await this.opts.core.deleteNamespacedPod({
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
}
