/**
 * The kubelet's `/containerLogs/{namespace}/{pod}/{container}` endpoint, which the API server
 * proxies for `kubectl logs` and the Log API. Log files hold one `<RFC3339> <stream> F <line>`
 * record per line, as CRI runtimes write them.
 */
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Finds a container's log file; undefined when the runner does not know it. */
export type LogFileLookup = (
  namespace: string,
  pod: string,
  container: string | undefined,
) => string | undefined;
/** Whether the container is still running (for `follow`). */
export type RunningLookup = (namespace: string, pod: string, container: string | undefined) => boolean;

/** Turns CRI log records into what the Log API returns. */
export function renderLogRecords(
  content: string,
  opts: { timestamps: boolean; tailLines?: number; sinceTime?: Date; limitBytes?: number },
): string {
  let records = content.split('\n').filter((l) => l.length > 0);
  if (opts.sinceTime)
    records = records.filter((r) => new Date(r.slice(0, r.indexOf(' '))) >= opts.sinceTime!);
  if (opts.tailLines !== undefined) records = opts.tailLines === 0 ? [] : records.slice(-opts.tailLines);
  const out = records
    .map((r) => {
      const [ts, , , ...rest] = r.split(' ');
      const line = rest.join(' ');
      return opts.timestamps ? `${ts} ${line}\n` : `${line}\n`;
    })
    .join('');
  return opts.limitBytes !== undefined ? Buffer.from(out).subarray(0, opts.limitBytes).toString() : out;
}

/** Handles one request on the runner's kubelet port. */
export function serveContainerLogs(
  req: IncomingMessage,
  res: ServerResponse,
  lookup: LogFileLookup,
  running: RunningLookup,
): void {
  const url = new URL(req.url ?? '/', 'https://host-runner');
  const m = /^\/containerLogs\/([^/]+)\/([^/]+)(?:\/([^/]+))?$/.exec(url.pathname);
  if (url.pathname === '/healthz') {
    res.writeHead(200).end('ok');
    return;
  }
  if (!m) {
    res.writeHead(404).end(`not served by the host runner: ${url.pathname}`);
    return;
  }
  const [, ns, pod, container] = m as unknown as [string, string, string, string | undefined];
  const file = lookup(ns, pod, container);
  if (!file || !existsSync(file)) {
    res.writeHead(404).end(`no logs for ${ns}/${pod}${container ? '/' + container : ''}`);
    return;
  }
  const q = url.searchParams;
  const num = (k: string) => (q.has(k) ? Number(q.get(k)) : undefined);
  const sinceSeconds = num('sinceSeconds');
  const sinceTime = q.get('sinceTime')
    ? new Date(q.get('sinceTime')!)
    : sinceSeconds
      ? new Date(Date.now() - sinceSeconds * 1000)
      : undefined;
  const opts = {
    timestamps: q.get('timestamps') === 'true',
    tailLines: num('tailLines'),
    limitBytes: num('limitBytes'),
    sinceTime,
  };
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.write(renderLogRecords(readFileSync(file, 'utf8'), opts));
  if (q.get('follow') !== 'true') {
    res.end();
    return;
  }
  let offset = statSync(file).size;
  const timer = setInterval(() => {
    const size = statSync(file).size;
    if (size > offset) {
      const from = offset;
      offset = size;
      createReadStream(file, { start: from, end: size - 1, encoding: 'utf8' }).on('data', (chunk) =>
        res.write(renderLogRecords(String(chunk), { timestamps: opts.timestamps })),
      );
    } else if (!running(ns, pod, container)) {
      clearInterval(timer);
      res.end();
    }
  }, 200);
  req.on('close', () => clearInterval(timer));
}
