import { execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import {
  identityOf,
  launchScript,
  RuntimeDefaultCapabilities,
  shellQuote,
  type HostMount,
} from '../../testbed/host-runner/launch.js';
import {
  parseProcStat,
  processGroupMembers,
  startContainerProcess,
  stopProcessGroup,
} from '../../testbed/host-runner/processes.js';
import { terminationMessage } from '../../testbed/host-runner/pod-status.js';
import { renderLogRecords } from '../../testbed/host-runner/logs.js';

const container = (sc: V1Container['securityContext'], command = ['true']): V1Container => ({
  name: 'c',
  command,
  securityContext: sc,
});
const pod = (sc: NonNullable<V1Pod['spec']>['securityContext'], c: V1Container): V1Pod => ({
  spec: { securityContext: sc, containers: [c] },
});

async function waitUntil(ok: () => boolean, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('identityOf', () => {
  it('grants exactly the added capabilities when ALL is dropped', () => {
    const c = container({
      capabilities: { add: ['CHOWN', 'CAP_FOWNER', 'dac_override'], drop: ['ALL'] },
      allowPrivilegeEscalation: false,
    });
    const id = identityOf(pod({ runAsUser: 0, runAsGroup: 0 }, c), c);
    expect(id).toMatchObject({
      uid: 0,
      gid: 0,
      capabilities: ['CHOWN', 'DAC_OVERRIDE', 'FOWNER'],
      noNewPrivileges: true,
    });
  });

  it('starts from the runtime default set and lets the container override the pod', () => {
    const c = container({ runAsUser: 70, capabilities: { drop: ['NET_RAW'] } });
    const id = identityOf(
      pod({ runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000, supplementalGroups: [3000, 2000] }, c),
      c,
    );
    expect(id.uid).toBe(70);
    expect(id.gid).toBe(1000);
    expect(id.groups).toEqual([2000, 3000]);
    expect(id.capabilities).toHaveLength(RuntimeDefaultCapabilities.length - 1);
    expect(id.capabilities).not.toContain('NET_RAW');
  });
});

describe('launchScript', () => {
  it('quotes every argument and execs under setpriv with the bounding set', () => {
    const c = container({ capabilities: { add: ['CHOWN'], drop: ['ALL'] } }, [
      '/bin/bash',
      '-c',
      "echo 'hi'",
    ]);
    const script = launchScript(
      c,
      identityOf(pod({}, c), c),
      [{ source: '/pv/a b', target: '/var/lib/postgresql', readOnly: false }],
      { X: '1' },
      {
        scratchDir: '/s',
        terminationFile: '/s/t',
      },
    );
    expect(script).toContain(`mount --bind '/pv/a b' '/var/lib/postgresql'`);
    expect(script).toContain('--bounding-set=-all,+chown');
    expect(script).toContain(`'/bin/bash' '-c' 'echo '\\''hi'\\'''`);
    expect(shellQuote("a'b")).toBe(`'a'\\''b'`);
  });

  it('refuses a container without a command', () => {
    const c: V1Container = { name: 'c' };
    expect(() =>
      launchScript(c, identityOf(pod({}, c), c), [], {}, { scratchDir: '/s', terminationFile: '/s/t' }),
    ).toThrow(/no command/);
  });

  it('runs for real: a mount, a termination message and exactly the granted capabilities', () => {
    const root = mkdtempSync(join(tmpdir(), 'launch-'));
    const pv = join(root, 'pv');
    mkdirSync(join(pv, 'data'), { recursive: true });
    writeFileSync(join(pv, 'data', 'f'), 'x');
    chownSync(join(pv, 'data', 'f'), 1000, 1000);
    const term = join(root, 'term');
    writeFileSync(term, '');
    const target = join(root, 'mnt', 'pv');
    const c = container({ capabilities: { add: ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'], drop: ['ALL'] } }, [
      '/bin/bash',
      '-c',
      `grep CapEff /proc/self/status > /dev/termination-log; chown -R 5000:5000 ${target}`,
    ]);
    const script = launchScript(
      c,
      identityOf(pod({ runAsUser: 0 }, c), c),
      [{ source: pv, target, readOnly: false }],
      {},
      {
        scratchDir: join(root, 'scratch'),
        terminationFile: term,
      },
    );
    writeFileSync(join(root, 'launch.sh'), script);
    execFileSync('unshare', ['--mount', '--propagation', 'private', '--', 'bash', join(root, 'launch.sh')], {
      env: { PATH: process.env.PATH },
      // Debian's bash reads ~/.bashrc when stdin is a socket, which Node's pipes are.
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    expect(readFileSync(term, 'utf8')).toContain('000000000000000b');
    expect(statSync(join(pv, 'data', 'f')).uid).toBe(5000);
  });
});

describe('launchScript with subPath mounts', () => {
  /** Runs `command` with `mounts` in a private mount namespace; returns exit code and output. */
  function launch(root: string, mounts: HostMount[], command: string): { code: number; out: string } {
    const c = container({}, ['/bin/bash', '-c', command]);
    const term = join(root, 'term');
    writeFileSync(term, '');
    writeFileSync(
      join(root, 'launch.sh'),
      launchScript(
        c,
        identityOf(pod({ runAsUser: 0 }, c), c),
        mounts,
        { PATH: process.env.PATH! },
        {
          scratchDir: join(root, 'scratch'),
          terminationFile: term,
        },
      ),
    );
    const r = spawnSync(
      'unshare',
      ['--mount', '--propagation', 'private', '--', 'bash', join(root, 'launch.sh')],
      {
        env: { PATH: process.env.PATH },
        stdio: ['ignore', 'pipe', 'pipe'],
        encoding: 'utf8',
      },
    );
    return { code: r.status ?? -1, out: r.stdout + r.stderr };
  }

  it('binds each subPath of one volume at its own path, creating a missing one as a kubelet does', () => {
    const root = mkdtempSync(join(tmpdir(), 'launch-subpath-'));
    const pv = join(root, 'pv');
    mkdirSync(join(pv, 'pgdata'), { recursive: true });
    chmodSync(pv, 0o750);
    writeFileSync(join(pv, 'pgdata', 'PG_VERSION'), '15\n');
    writeFileSync(join(pv, 'outside'), 'x');
    const data = join(root, 'mnt', 'data');
    const wal = join(root, 'mnt', 'wal');
    const r = launch(
      root,
      [
        { source: pv, subPath: 'pgdata', target: data, readOnly: false },
        { source: pv, subPath: 'wal', target: wal, readOnly: false },
      ],
      `ls ${data} ${wal}; test ! -e ${data}/outside && touch ${data}/written ${wal}/segment`,
    );
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain('PG_VERSION');
    expect(readdirSync(join(pv, 'pgdata')).sort()).toEqual(['PG_VERSION', 'written']);
    expect(readdirSync(join(pv, 'wal'))).toEqual(['segment']);
    expect(statSync(join(pv, 'wal')).mode & 0o777).toBe(0o750);
    expect(readdirSync(pv).sort()).toEqual(['outside', 'pgdata', 'wal']);
  });

  it('refuses a subPath that leads out of its volume, through .. or a symlink', () => {
    const root = mkdtempSync(join(tmpdir(), 'launch-subpath-'));
    const pv = join(root, 'pv');
    mkdirSync(pv, { recursive: true });
    symlinkSync('/etc', join(pv, 'escape'));
    for (const subPath of ['../', 'escape']) {
      const r = launch(root, [{ source: pv, subPath, target: join(root, 'mnt'), readOnly: false }], 'true');
      expect(r.code).toBe(1);
      expect(r.out).toContain(`subPath ${subPath} of ${join(root, 'mnt')} leads out of its volume`);
    }
  });
});

describe('startContainerProcess', () => {
  it('takes the termination message from the log only once the last lines are in it', async () => {
    // A failing container whose last words are its only clue (FallbackToLogsOnError), after
    // enough output that the log's write stream still holds some when the process closes.
    const messages: string[] = [];
    for (let round = 0; round < 10; round++) {
      const dir = mkdtempSync(join(tmpdir(), 'container-'));
      const message = await new Promise<string>((resolve) => {
        const run = startContainerProcess({
          dir,
          script: `for i in $(seq 1 3000); do echo "line $i of the server's chatter"; done; echo "FATAL: the last word ${round}" >&2; exit 3\n`,
          terminationFile: join(dir, 'termination-log'),
          startedAt: new Date(Date.now() - 1000),
          onExit: (exitCode) => {
            resolve(terminationMessage({ terminationMessagePolicy: 'FallbackToLogsOnError' }, run, exitCode));
            return Promise.resolve();
          },
        });
      });
      messages.push(message);
      rmSync(dir, { recursive: true, force: true });
    }
    expect(messages.map((m, round) => m.trimEnd().endsWith(`FATAL: the last word ${round}`))).toEqual(
      messages.map(() => true),
    );
  });
});

describe('stopProcessGroup', () => {
  it('ends a whole process group, a leader that ignores SIGTERM and its children included', async () => {
    // As bash as PID 1 in a container: SIGTERM ignored; its find-like children ignore it too.
    const leader = spawn(
      'bash',
      ['-c', "trap '' TERM; sleep 300 & sleep 300 & bash -c \"trap '' TERM; sleep 300\" & wait"],
      {
        detached: true,
        stdio: 'ignore',
      },
    );
    const pgid = leader.pid!;
    await waitUntil(() => processGroupMembers(pgid).length >= 4);
    const started = Date.now();
    expect(await stopProcessGroup(pgid, 300)).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(processGroupMembers(pgid)).toEqual([]);
  });

  it('stops a group that obeys SIGTERM without SIGKILL', async () => {
    const leader = spawn('bash', ['-c', 'sleep 300 & sleep 300 & wait'], { detached: true, stdio: 'ignore' });
    const pgid = leader.pid!;
    await waitUntil(() => processGroupMembers(pgid).length >= 3);
    expect(await stopProcessGroup(pgid, 10_000)).toBe(false);
    expect(processGroupMembers(pgid)).toEqual([]);
    expect(await stopProcessGroup(pgid, 10_000)).toBe(false);
  });

  it('reads the process group from /proc/<pid>/stat, whatever the command is called', () => {
    expect(parseProcStat('42 (a (b) c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0')).toEqual({
      state: 'S',
      pgid: 4242,
      startTicks: 777,
    });
  });
});

describe('renderLogRecords', () => {
  const records = [
    '2026-01-01T00:00:00.000Z stdout F one',
    '2026-01-01T00:00:01.000Z stderr F two words',
    '',
  ].join('\n');

  it('strips the CRI prefix, or keeps the timestamp when asked', () => {
    expect(renderLogRecords(records, { timestamps: false })).toBe('one\ntwo words\n');
    expect(renderLogRecords(records, { timestamps: true, tailLines: 1 })).toBe(
      '2026-01-01T00:00:01.000Z two words\n',
    );
    expect(
      renderLogRecords(records, { timestamps: false, sinceTime: new Date('2026-01-01T00:00:00.500Z') }),
    ).toBe('two words\n');
  });
});
