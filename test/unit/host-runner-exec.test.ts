import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { ExecHeaders, execTarget, helperRequestHead, isExecPath } from '../../testbed/host-runner/exec.js';

describe('host runner exec endpoint', () => {
  it('reads namespace, pod and container from an exec path, and nothing else', () => {
    expect(execTarget('/exec/itrs/pgplatform-0/postgres')).toEqual({
      namespace: 'itrs',
      pod: 'pgplatform-0',
      container: 'postgres',
    });
    expect(execTarget('/exec/itrs/pgplatform-0')).toBeUndefined();
    expect(execTarget('/exec/itrs/pgplatform-0/uid/postgres')).toBeUndefined();
    expect(execTarget('/containerLogs/itrs/pgplatform-0/postgres')).toBeUndefined();
    expect(isExecPath('/exec/itrs/p/c?command=id&output=1')).toBe(true);
    expect(isExecPath('/containerLogs/itrs/p/c')).toBe(false);
  });

  it("sends the helper the client's headers with their repeats, ours replaced, then the prefix, token and session", () => {
    const req = {
      method: 'POST',
      url: '/exec/ns/p/c?command=id&output=1',
      rawHeaders: [
        'Connection',
        'Upgrade',
        'Upgrade',
        'SPDY/3.1',
        'X-Stream-Protocol-Version',
        'v4.channel.k8s.io',
        'X-Stream-Protocol-Version',
        'v3.channel.k8s.io',
        'x-host-runner-exec',
        'WyJiYXNoIl0=',
      ],
    } as unknown as IncomingMessage;
    const head = helperRequestHead(req, ['nsenter', '--target=7', '--'], 'secret', 's1');

    expect(head.endsWith('\r\n\r\n')).toBe(true);
    const lines = head.trimEnd().split('\r\n');
    expect(lines).toEqual([
      'POST /exec/ns/p/c?command=id&output=1 HTTP/1.1',
      'Connection: Upgrade',
      'Upgrade: SPDY/3.1',
      'X-Stream-Protocol-Version: v4.channel.k8s.io',
      'X-Stream-Protocol-Version: v3.channel.k8s.io',
      `${ExecHeaders.Prefix}: ${Buffer.from('["nsenter","--target=7","--"]').toString('base64')}`,
      `${ExecHeaders.Token}: secret`,
      `${ExecHeaders.Session}: s1`,
    ]);
  });
});
