/**
 * A minimal kubelet for one node that kwok does not manage: it keeps the node Ready (node.ts),
 * runs the containers of pods bound to it as host processes (pods.ts, processes.ts, launch.ts),
 * reports their phase, exit code and termination message, and serves their logs (logs.ts) and
 * `kubectl exec` into them (exec.ts) to the API server.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { Duplex } from 'node:stream';
import { CoordinationV1Api, CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { ExecEndpoint, isExecPath } from './exec.js';
import { serveContainerLogs } from './logs.js';
import { HostNode, HostRunnerNode, HostRunnerPlacement } from './node.js';
import { HostPods } from './pods.js';

export { HostRunnerNode, HostRunnerPlacement };

/** Options of a host runner. */
export interface HostRunnerOptions {
  kubeConfig: KubeConfig;
  nodeName: string;
  /** Folder for per-pod scratch files and container logs. */
  stateDir: string;
  /** Port of the kubelet endpoint (logs, exec) on 127.0.0.1. */
  port: number;
  tlsCert: string;
  tlsKey: string;
  /** Path of the host-exec binary (ToolName.HostExec); without it exec is refused. */
  execHelper?: string;
  /**
   * Value of the {@link HostRunnerNode.Label} label on the node: a second runner (tests) with its
   * own value takes only the pods that select it, none of {@link HostRunnerPlacement}'s.
   * @default "true"
   */
  placementValue?: string;
  log?: (line: string) => void;
}

/** Runs the pods bound to one node as host processes. */
export class HostRunner {
  private readonly node: HostNode;
  private readonly pods: HostPods;
  private readonly exec?: ExecEndpoint;
  private server?: Server;

  constructor(private readonly opts: HostRunnerOptions) {
    const core = opts.kubeConfig.makeApiClient(CoreV1Api);
    const log = opts.log ?? ((l) => process.stderr.write(`[host-runner] ${l}\n`));
    this.node = new HostNode({
      core,
      leases: opts.kubeConfig.makeApiClient(CoordinationV1Api),
      nodeName: opts.nodeName,
      port: opts.port,
      placementValue: opts.placementValue ?? 'true',
      log,
    });
    this.pods = new HostPods({
      kubeConfig: opts.kubeConfig,
      core,
      nodeName: opts.nodeName,
      stateDir: opts.stateDir,
      log,
    });
    if (opts.execHelper)
      this.exec = new ExecEndpoint({
        helper: opts.execHelper,
        lookup: (ns, pod, c) => this.pods.execPrefixOf(ns, pod, c),
        log,
      });
  }

  /** Registers the node, starts heartbeats, the kubelet endpoint (logs, exec) and the pod watch. */
  async start(): Promise<void> {
    mkdirSync(this.opts.stateDir, { recursive: true });
    await this.exec?.start();
    this.server = createServer(
      { cert: readFileSync(this.opts.tlsCert), key: readFileSync(this.opts.tlsKey) },
      (req, res) => {
        if (isExecPath(req.url)) {
          res.writeHead(400).end('exec needs a connection upgrade (SPDY or WebSocket)\n');
          return;
        }
        serveContainerLogs(
          req,
          res,
          (ns, pod, container) => this.pods.logFileOf(ns, pod, container),
          (ns, pod, c) => this.pods.isRunning(ns, pod, c),
        );
      },
    );
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (this.exec) this.exec.handleUpgrade(req, socket, head);
      else socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    await new Promise<void>((resolve) => this.server!.listen(this.opts.port, '127.0.0.1', resolve));
    await this.node.start();
    await this.pods.start();
  }

  /** Stops watching, ends every exec session and kills every container it started. */
  async stop(): Promise<void> {
    this.node.stop();
    this.pods.stop();
    await this.exec?.stop();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
