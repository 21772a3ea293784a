import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync, writeFileSync, mkdirSync, chownSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import {
  identityOf,
  launchScript,
  RuntimeDefaultCapabilities,
  shellQuote,
} from '../../testbed/host-runner/launch.js';
import { renderLogRecords } from '../../testbed/host-runner/logs.js';

const container = (sc: V1Container['securityContext'], command = ['true']): V1Container => ({
  name: 'c',
  command,
  securityContext: sc,
});
const pod = (sc: NonNullable<V1Pod['spec']>['securityContext'], c: V1Container): V1Pod => ({
  spec: { securityContext: sc, containers: [c] },
});

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
