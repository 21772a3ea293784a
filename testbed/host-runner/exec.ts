/**
 * The kubelet's `/exec/{namespace}/{pod}/{container}` endpoint, which the API server reaches with
 * an HTTP upgrade (SPDY, or WebSocket for old clients) for `kubectl exec` and the exec API. The
 * streaming protocol is the kubelet's own code, in the host-exec helper (testbed/kube/hostexec)
 * that this module starts; the runner decides which container a request enters — the argv
 * prefix of {@link ExecPrefixLookup} — and pipes the upgraded connection to the helper.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { request, STATUS_CODES, type IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import type { Duplex } from 'node:stream';

/** The argv that runs a command in a running container; undefined when it does not run. */
export type ExecPrefixLookup = (
  namespace: string,
  pod: string,
  container: string | undefined,
) => string[] | undefined;

/** Request headers the runner adds for the helper (and drops from what it receives). */
export const ExecHeaders = {
  /** Base64 of the JSON array of the argv prefix. */
  Prefix: 'X-Host-Runner-Exec',
  /** The secret the helper was started with. */
  Token: 'X-Host-Runner-Token',
  /** The runner's name for the session, to end its command with `POST /end/<session>`. */
  Session: 'X-Host-Runner-Session',
} as const;

/** What the API server asks for in an exec path. */
export interface ExecTarget {
  namespace: string;
  pod: string;
  container: string;
}

/** Parses `/exec/{namespace}/{pod}/{container}` (query excluded); undefined for any other path. */
export function execTarget(pathname: string): ExecTarget | undefined {
  const m = /^\/exec\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(pathname);
  if (!m) return undefined;
  const [namespace, pod, container] = m.slice(1).map(decodeURIComponent) as [string, string, string];
  return { namespace, pod, container };
}

/** Whether a request URL is for the exec endpoint (which serves upgrades only). */
export function isExecPath(url: string | undefined): boolean {
  return new URL(url ?? '/', 'https://host-runner').pathname.startsWith('/exec/');
}

/**
 * The request line and headers to send on to the helper: the client's own, in order and with
 * repeats (the SPDY handshake offers one `X-Stream-Protocol-Version` per protocol), but for any
 * header of ours, then the argv prefix, the token and the session.
 */
export function helperRequestHead(
  req: IncomingMessage,
  prefix: readonly string[],
  token: string,
  session: string,
): string {
  const ours = new Set(Object.values(ExecHeaders).map((h) => h.toLowerCase()));
  const lines = [`${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1`];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!;
    if (!ours.has(name.toLowerCase())) lines.push(`${name}: ${req.rawHeaders[i + 1]}`);
  }
  lines.push(`${ExecHeaders.Prefix}: ${Buffer.from(JSON.stringify(prefix)).toString('base64')}`);
  lines.push(`${ExecHeaders.Token}: ${token}`);
  lines.push(`${ExecHeaders.Session}: ${session}`);
  return lines.join('\r\n') + '\r\n\r\n';
}

/** Answers on a raw socket that was not upgraded, and closes it. */
function refuse(socket: Duplex, status: number, message: string): void {
  const body = Buffer.from(`${message}\n`);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body.toString()}`,
  );
}

/** What an {@link ExecEndpoint} needs. */
export interface ExecEndpointOptions {
  /** Path of the host-exec binary. */
  helper: string;
  lookup: ExecPrefixLookup;
  log: (line: string) => void;
  /** How often a session checks that its container still runs. @default 1000 */
  checkIntervalMs?: number;
}

/** The exec endpoint: the helper process and the sessions piped to it. */
export class ExecEndpoint {
  private child?: ChildProcess;
  private port?: number;
  private readonly token = randomBytes(32).toString('hex');
  private readonly sessions = new Set<{ client: Duplex; upstream: Socket }>();

  constructor(private readonly opts: ExecEndpointOptions) {}

  /** Starts the helper on a port of its choosing and waits until it listens. */
  async start(): Promise<void> {
    const child = spawn(this.opts.helper, ['-port', '0'], {
      // Its stdin stays open for as long as this process lives: the helper exits when it closes.
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, HOST_EXEC_TOKEN: this.token },
    });
    this.child = child;
    let stderr = '';
    createInterface({ input: child.stderr }).on('line', (line) => {
      stderr = (stderr + line + '\n').slice(-2000);
      this.opts.log(`host-exec: ${line}`);
    });
    this.port = await new Promise<number>((resolve, reject) => {
      createInterface({ input: child.stdout }).once('line', (line) => {
        const port = Number(/^listening 127\.0\.0\.1:(\d+)$/.exec(line)?.[1]);
        if (port) resolve(port);
        else reject(new Error(`host-exec printed ${JSON.stringify(line)}`));
      });
      child.once('error', reject);
      // 'close', not 'exit': its last lines of stderr are read by then.
      child.once('close', (code, signal) =>
        reject(new Error(`host-exec exited (${code ?? signal}) before listening:\n${stderr}`)),
      );
    });
    child.once('exit', (code, signal) => {
      this.port = undefined;
      if (this.child === child) this.opts.log(`host-exec exited (${code ?? signal}): exec is not served`);
    });
  }

  /** Ends every session and stops the helper. */
  async stop(): Promise<void> {
    for (const s of this.sessions) {
      s.client.destroy();
      s.upstream.destroy();
    }
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await exited;
  }

  /** Handles the HTTPS server's `upgrade` event for an exec path; refuses any other path. */
  handleUpgrade(req: IncomingMessage, client: Duplex, head: Buffer): void {
    client.on('error', () => client.destroy());
    const target = execTarget(new URL(req.url ?? '/', 'https://host-runner').pathname);
    if (!target) {
      refuse(client, 404, `not served by the host runner: ${req.url}`);
      return;
    }
    const { namespace, pod, container } = target;
    const prefix = this.opts.lookup(namespace, pod, container);
    if (!prefix) {
      refuse(client, 404, `container ${container} of pod ${namespace}/${pod} is not running`);
      return;
    }
    if (this.port === undefined) {
      refuse(client, 503, 'the host runner does not serve exec');
      return;
    }
    this.opts.log(
      `exec ${namespace}/${pod}/${container}: ${req.headers.upgrade} ${String(req.headers['x-stream-protocol-version'] ?? req.headers['sec-websocket-protocol'] ?? '')}`,
    );
    const port = this.port;
    const upstream = connect(port, '127.0.0.1');
    const session = { client, upstream };
    const id = randomBytes(16).toString('hex');
    this.sessions.add(session);
    let connected = false;
    const forget = () => {
      clearInterval(check);
      this.sessions.delete(session);
    };
    const entered = JSON.stringify(prefix);
    // A kubelet's exec processes die with their container: once it has stopped (or been
    // restarted: a new process to enter), the helper is told to kill the command — again at every
    // check until the session closes — and reports its exit code to the client.
    const check = setInterval(() => {
      if (!connected || JSON.stringify(this.opts.lookup(namespace, pod, container)) === entered) return;
      request({
        agent: false,
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: `/end/${id}`,
        headers: { [ExecHeaders.Token]: this.token },
      })
        .on('response', (res) => res.resume())
        .on('error', () => upstream.destroy())
        .end();
    }, this.opts.checkIntervalMs ?? 1000);
    check.unref();
    upstream.on('connect', () => {
      connected = true;
      upstream.write(helperRequestHead(req, prefix, this.token, id));
      if (head.length) upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    upstream.on('error', (err) => {
      if (!connected) refuse(client, 502, `exec helper: ${err.message}`);
    });
    // Ends, not destroys: what is still buffered for the other side (the exit status) goes out.
    upstream.on('close', () => {
      forget();
      if (connected) client.end();
    });
    client.on('close', () => {
      forget();
      if (connected) upstream.end();
      else upstream.destroy();
    });
  }
}
