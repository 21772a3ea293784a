/**
 * `kubectl exec` and client-node's Exec reach pods on the host runner through the real API
 * server (WebSocket to the API server, SPDY on to the runner's kubelet port): the command runs
 * in the container as the pod's user, groups and capabilities, in its working directory and
 * with its volumes; exit codes and stdin go through; a container that does not run is refused.
 */
import { execFile } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { finished } from 'node:stream/promises';
import { promisify } from 'node:util';
import { CoreV1Api, Exec, type V1Pod, type V1Status } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostRunnerPlacement } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import { ToolName } from '../../testbed/tools.js';
import { bed, createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { outcome } from '../support/cli.js';
import { processesRunning } from '../support/processes.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const namespace = uniqueName('exec');
let cleanup: () => Promise<void>;

const uid = 1234;
const gid = 2345;
const fsGroup = 3456;

/** A pod on the host runner's node, restricted-compliant, with an emptyDir at /work. */
function hostPod(name: string, script: string): V1Pod {
  return {
    metadata: { name },
    spec: {
      ...HostRunnerPlacement,
      restartPolicy: 'Never',
      terminationGracePeriodSeconds: 1,
      securityContext: {
        runAsUser: uid,
        runAsGroup: gid,
        fsGroup,
        supplementalGroups: [fsGroup],
        runAsNonRoot: true,
        seccompProfile: { type: 'RuntimeDefault' },
      },
      containers: [
        {
          name: 'main',
          image: 'busybox',
          command: ['/bin/sh', '-c', script],
          workingDir: '/work',
          securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
          volumeMounts: [{ name: 'work', mountPath: '/work' }],
        },
      ],
      volumes: [{ name: 'work', emptyDir: {} }],
    },
  };
}

const WebSocketClosed = 3;

/** What one exec printed, and the status the API server sent at its end (none if it broke off). */
interface ExecResult {
  stdout: string;
  stderr: string;
  status?: V1Status;
}

/** Runs a command through client-node's Exec; resolves once the WebSocket has closed. */
async function execIn(
  pod: string,
  command: string[],
  opts: { stdin?: string; container?: string } = {},
): Promise<ExecResult> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (d: Buffer) => out.push(d));
  stderr.on('data', (d: Buffer) => err.push(d));
  let stdin: PassThrough | null = null;
  if (opts.stdin !== undefined) {
    stdin = new PassThrough();
    stdin.end(opts.stdin);
  }
  let status: V1Status | undefined;
  // Exec's declared return type (isomorphic-ws) does not resolve here: it is a `ws` WebSocket.
  const ws = (await new Exec(kc).exec(
    namespace,
    pod,
    opts.container ?? 'main',
    command,
    stdout,
    stderr,
    stdin,
    false,
    (s) => (status = s),
  )) as unknown as { readyState: number; once(event: 'close', listener: () => void): unknown };
  await new Promise<void>((resolve) => {
    if (ws.readyState === WebSocketClosed) resolve();
    else ws.once('close', () => resolve());
  });
  // With a status, client-node has ended both streams: wait until their data is read.
  if (status) await Promise.all([finished(stdout), finished(stderr)]);
  return { stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), status };
}

/** The exit code a status carries: 0 for Success, the ExitCode cause for NonZeroExitCode. */
function exitCodeOf(status: V1Status | undefined): number | undefined {
  if (status?.status === 'Success') return 0;
  const cause = status?.details?.causes?.find((c) => c.reason === 'ExitCode');
  return cause?.message === undefined ? undefined : Number(cause.message);
}

/** Runs the bed's kubectl in the test's namespace, with `stdin` as its input (then closed). */
function kubectl(args: readonly string[], stdin = '') {
  const bin = bed().tools[ToolName.Kubectl];
  if (!bin) throw new Error('the test bed recorded no kubectl');
  const run = promisify(execFile)(bin, ['--kubeconfig', bed().kubeconfig, '-n', namespace, ...args], {
    timeout: 60_000,
  });
  run.child.stdin?.end(stdin);
  return outcome(run);
}

beforeAll(async () => {
  cleanup = await createNamespace(kc, namespace, { 'pod-security.kubernetes.io/enforce': 'restricted' });
  await core.createNamespacedPod({
    namespace,
    body: hostPod('shell', 'echo hello from the pod > /work/greeting && echo ready && exec sleep 3600'),
  });
  await core.createNamespacedPod({ namespace, body: hostPod('done', 'true') });
  await waitFor(
    'pod shell running with its file written',
    async () =>
      (await core.readNamespacedPod({ name: 'shell', namespace })).status?.phase === 'Running' &&
      (await core.readNamespacedPodLog({ name: 'shell', namespace })).includes('ready'),
    60_000,
  );
  await waitFor(
    'pod done Succeeded',
    async () => (await core.readNamespacedPod({ name: 'done', namespace })).status?.phase === 'Succeeded',
    60_000,
  );
});

afterAll(async () => {
  await cleanup();
});

describe('exec into a host runner pod', () => {
  it("runs the command as the pod's user and groups, with no capabilities, in its working directory", async () => {
    const id = await execIn('shell', ['id', '-u']);
    expect(id).toMatchObject({ stdout: `${uid}\n`, stderr: '' });
    expect(id.status?.status).toBe('Success');
    expect((await execIn('shell', ['id', '-G'])).stdout.trim().split(' ').sort()).toEqual(
      [String(gid), String(fsGroup)].sort(),
    );
    expect((await execIn('shell', ['pwd'])).stdout).toBe('/work\n');
    expect((await execIn('shell', ['grep', 'CapEff', '/proc/self/status'])).stdout).toBe(
      'CapEff:\t0000000000000000\n',
    );
  });

  it("sees the file the pod's own command wrote to its emptyDir volume", async () => {
    const cat = await execIn('shell', ['cat', '/work/greeting']);
    expect(cat.stdout).toBe('hello from the pod\n');
    expect(exitCodeOf(cat.status)).toBe(0);
  });

  it("returns the command's exit code and its stderr", async () => {
    const failed = await execIn('shell', ['sh', '-c', 'echo oops >&2; exit 3']);
    expect(failed.stderr).toBe('oops\n');
    expect(failed.status?.status).toBe('Failure');
    expect(failed.status?.reason).toBe('NonZeroExitCode');
    expect(exitCodeOf(failed.status)).toBe(3);
  });

  it('passes stdin to the command until the client closes it', async () => {
    const echoed = await execIn('shell', ['cat'], { stdin: 'line one\nline two\n' });
    expect(echoed.stdout).toBe('line one\nline two\n');
    expect(exitCodeOf(echoed.status)).toBe(0);
  });

  it("kubectl exec prints the command's output and exits with its exit code", async () => {
    expect(await kubectl(['exec', 'shell', '--', 'id', '-u'])).toMatchObject({ code: 0, stdout: `${uid}\n` });
    expect((await kubectl(['exec', 'shell', '--', 'sh', '-c', 'exit 3'])).code).toBe(3);
    const piped = await kubectl(
      ['exec', '-i', 'shell', '--', 'sh', '-c', 'cat; echo "as $(id -u)"'],
      'piped\n',
    );
    expect(piped).toMatchObject({ code: 0, stdout: `piped\nas ${uid}\n` });
  });

  it('refuses a pod whose container has exited, with an error status instead of a hang', async () => {
    const result = await execIn('done', ['id', '-u']);
    expect(result.stdout).toBe('');
    expect(result.status?.status).toBe('Failure');
    expect(result.status?.message).toContain('container main of pod');
    expect(result.status?.message).toContain('is not running');
    const viaKubectl = await kubectl(['exec', 'done', '--', 'id', '-u']);
    expect(viaKubectl.code).not.toBe(0);
    expect(viaKubectl.stderr).toMatch(/completed pod|not running/);
  });

  it('refuses a container the pod does not have', async () => {
    await expect(execIn('shell', ['id'], { container: 'missing' })).rejects.toThrow(/400/);
    const viaKubectl = await kubectl(['exec', 'shell', '-c', 'missing', '--', 'id']);
    expect(viaKubectl.code).not.toBe(0);
    expect(viaKubectl.stderr).toContain('missing');
  });

  it('ends a session whose pod is deleted: its command is killed and exits 137', async () => {
    await core.createNamespacedPod({ namespace, body: hostPod('deleted', 'exec sleep 3600') });
    await waitFor(
      'pod deleted running',
      async () => (await core.readNamespacedPod({ name: 'deleted', namespace })).status?.phase === 'Running',
      60_000,
    );
    const marker = ['sleep', '4242'];
    const session = execIn('deleted', marker);
    await waitFor('the exec command running', () => processesRunning(marker).length > 0, 30_000, 100);
    await core.deleteNamespacedPod({ name: 'deleted', namespace });

    const ended = await session;
    expect(ended.status?.reason).toBe('NonZeroExitCode');
    expect(exitCodeOf(ended.status)).toBe(137);
    await waitFor('the exec command gone', () => processesRunning(marker).length === 0, 30_000, 100);
  });
});
