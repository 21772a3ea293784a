import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { choosesVersion, HelmReleases, helmFailureIsTransient, idValues } from '../../src/services/helm.js';
import { renderHelm } from '../../src/app/status-view.js';

describe('helm', () => {
  it('writes the new IDs under the keys of the vendor procedure', () => {
    expect(idValues({ uid: 5000, gid: 6000, supplementalGroups: [6000, 7] })).toEqual({
      securityContext: {
        pod: { runAsUser: 5000, runAsGroup: 6000, supplementalGroups: [6000, 7], fsGroup: 6000 },
      },
    });
  });

  it.each([
    ['Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress', true],
    [
      'Error: Kubernetes cluster unreachable: Get "https://10.0.0.1/version": dial tcp: connection refused',
      true,
    ],
    ['Error: UPGRADE FAILED: etcdserver: request timed out', true],
    [
      'Error: UPGRADE FAILED: cannot patch "timescale" with kind StatefulSet: statefulsets.apps "timescale" is forbidden: ValidatingAdmissionPolicy',
      false,
    ],
    ['Error: UPGRADE FAILED: template: iax/templates/sts.yaml:3: function "nope" not defined', false],
    ['Error: UPGRADE FAILED: "iax" has no deployed releases', false],
  ])('%s: transient %s', (stderr, transient) => {
    expect(helmFailureIsTransient(stderr)).toBe(transient);
  });

  it('tells the revisions of a run', () => {
    const h = { release: 'iax', revisionBefore: 4, upgradedTo: 5, values: '', rolledBackTo: null };
    expect(renderHelm(h)).toBe('helm release iax: revision 4 before the run, upgraded to 5');
    expect(renderHelm({ ...h, rolledBackTo: 6 })).toBe(
      'helm release iax: revision 4 before the run, upgraded to 5, rolled back to 4 as revision 6',
    );
  });
});

describe('choosesVersion', () => {
  it("sees the operator's own --version, in either form; otherwise the run pins the deployed one", () => {
    expect(choosesVersion(['--wait', '--version', '2.18.0'])).toBe(true);
    expect(choosesVersion(['--version=2.18.0'])).toBe(true);
    expect(choosesVersion(['--wait', '--timeout=10m'])).toBe(false);
    expect(choosesVersion([])).toBe(false);
  });
});

describe('a helm older than 3.13 (no `helm get metadata`)', () => {
  it('reads the release from `helm status` instead, without the chart', async () => {
    // What helm 3.12 answers; only the two commands the read makes.
    const dir = mkdtempSync(join(tmpdir(), 'old-helm-'));
    const helm = join(dir, 'helm');
    writeFileSync(
      helm,
      `#!/bin/sh
if [ "$1 $2" = "get metadata" ]; then echo 'Error: unknown command "metadata" for "helm get"' >&2; exit 1; fi
if [ "$1" = status ]; then echo '{"name":"iax","version":4,"info":{"status":"deployed"}}'; exit 0; fi
exit 2
`,
    );
    chmodSync(helm, 0o755);
    try {
      const release = await new HelmReleases({ helm }).readHelmRelease({ namespace: 'itrs', release: 'iax' });
      expect(release).toEqual({
        release: 'iax',
        revision: 4,
        status: 'deployed',
        chart: '?',
        chartVersion: null,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
