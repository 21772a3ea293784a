/**
 * The bed's recorded state is what `down` stops: a step that rewrites it from an older copy
 * must not drop what was recorded since. A second cluster started by the fleet test and then
 * forgotten by a Temporal restart in a fault test kept its control plane running after `down`.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { bedDir, readState, restartTemporal, type BedState, type ExtraCluster } from '../../testbed/bed.js';
import { isAlive } from '../../testbed/process.js';
import { bed } from '../support/bed.js';

const stateFile = join(bedDir(bed().name), 'state.json');
const ghost = 'recorded-later';

function editState(edit: (s: BedState) => void): void {
  const s = JSON.parse(readFileSync(stateFile, 'utf8')) as BedState;
  edit(s);
  writeFileSync(stateFile, JSON.stringify(s, null, 2));
}

afterAll(() =>
  editState((s) => {
    delete s.clusters?.[ghost];
  }),
);

it('restarting Temporal from an older copy of the state keeps a cluster recorded since, and stops the server that runs', async () => {
  const older = structuredClone(readState(bed().name)!);
  const running = older.temporal.process;
  // Recorded after `older` was read, as ensureCluster records a second cluster: no directory,
  // so `down` has nothing of it to stop.
  const later: ExtraCluster = {
    name: ghost,
    clusterName: `${older.cluster.name}-${ghost}`,
    kubeconfig: join(bedDir(older.name), 'clusters', ghost, 'kubeconfig.yaml'),
    pvRoot: join(bedDir(older.name), 'clusters', ghost, 'pv'),
    runner: { port: 1 },
  };
  editState((s) => {
    s.clusters = { ...s.clusters, [ghost]: later };
  });
  // The older copy also names a server that no longer runs, as a test's copy does after an
  // earlier restart.
  older.temporal.process = running && { ...running, pid: 2 ** 22 + 1 };

  await restartTemporal(older);

  const now = readState(bed().name)!;
  expect(Object.keys(now.clusters ?? {})).toContain(ghost);
  expect(now.temporal.process?.pid).not.toBe(running?.pid);
  expect(isAlive(running)).toBe(false);
});
