/**
 * The Gatekeeper constraint CRDs of the test bed validate the JSON Patches the runbook sends:
 * append to an existing `excludedNamespaces`, create a missing one, `test` + `remove` by index,
 * and reject malformed ones.
 */
import { CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, describe, expect, it } from 'vitest';
import { Gatekeeper } from '../../testbed/fixture.js';
import { kubeConfig, uniqueName } from '../support/bed.js';

const custom = kubeConfig().makeApiClient(CustomObjectsApi);
const plural = 'k8spspcapabilities';
const names: string[] = [];

interface Constraint {
  spec: { match: { excludedNamespaces?: string[] } };
}

async function createConstraint(excludedNamespaces?: string[]): Promise<string> {
  const name = uniqueName('gk');
  names.push(name);
  await custom.createClusterCustomObject({
    group: Gatekeeper.group,
    version: Gatekeeper.version,
    plural,
    body: {
      apiVersion: `${Gatekeeper.group}/${Gatekeeper.version}`,
      kind: 'K8sPSPCapabilities',
      metadata: { name },
      spec: {
        match: {
          kinds: [{ apiGroups: [''], kinds: ['Pod'] }],
          ...(excludedNamespaces ? { excludedNamespaces } : {}),
        },
      },
    },
  });
  return name;
}

const jsonPatch = (name: string, ops: object[]) =>
  custom.patchClusterCustomObject(
    { group: Gatekeeper.group, version: Gatekeeper.version, plural, name, body: ops },
    setHeaderOptions('Content-Type', PatchStrategy.JsonPatch),
  ) as Promise<Constraint>;

async function rejection(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    return (err as { code: number }).code;
  }
  throw new Error('the patch was accepted');
}

afterAll(async () => {
  for (const name of names) {
    await custom
      .deleteClusterCustomObject({ group: Gatekeeper.group, version: Gatekeeper.version, plural, name })
      .catch(() => undefined);
  }
});

describe('Gatekeeper constraint patches', () => {
  const path = '/spec/match/excludedNamespaces';

  it('appends to an existing excludedNamespaces', async () => {
    const name = await createConstraint(['kube-system']);
    const c = await jsonPatch(name, [{ op: 'add', path: `${path}/-`, value: 'itrs' }]);
    expect(c.spec.match.excludedNamespaces).toEqual(['kube-system', 'itrs']);
  });

  it('creates a missing excludedNamespaces, where appending fails as in the manual procedure', async () => {
    const name = await createConstraint();
    expect(await rejection(jsonPatch(name, [{ op: 'add', path: `${path}/-`, value: 'itrs' }]))).toBe(422);
    const c = await jsonPatch(name, [{ op: 'add', path, value: ['itrs'] }]);
    expect(c.spec.match.excludedNamespaces).toEqual(['itrs']);
  });

  it('removes by index only while a test op proves the entry is still there', async () => {
    const name = await createConstraint(['kube-system', 'itrs', 'other']);
    expect(
      await rejection(
        jsonPatch(name, [
          { op: 'test', path: `${path}/0`, value: 'itrs' },
          { op: 'remove', path: `${path}/0` },
        ]),
      ),
    ).toBe(422);
    const c = await jsonPatch(name, [
      { op: 'test', path: `${path}/1`, value: 'itrs' },
      { op: 'remove', path: `${path}/1` },
    ]);
    expect(c.spec.match.excludedNamespaces).toEqual(['kube-system', 'other']);
  });

  it('rejects a patch that breaks the schema or points nowhere', async () => {
    const name = await createConstraint(['kube-system']);
    expect(await rejection(jsonPatch(name, [{ op: 'add', path: `${path}/-`, value: 42 }]))).toBe(422);
    expect(await rejection(jsonPatch(name, [{ op: 'remove', path: `${path}/5` }]))).toBe(422);
    expect(await rejection(jsonPatch(name, [{ op: 'frobnicate', path }]))).toBe(422);
  });
});
