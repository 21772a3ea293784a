/**
 * The fixture's databases are real PostgreSQL servers on the host runner: a cluster from
 * initdb on the old uid's files, its WAL and two tablespaces on their own volumes, Ready when
 * pg_isready says so — and started as the new uid on files it does not own, PostgreSQL refuses,
 * as the seed procedure warns, and the pod status says why.
 */
import { AppsV1Api, CoreV1Api, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kube } from '../../src/cluster/kube.js';
import { removeFixture, seedItrsFixture, waitForFixtureReady } from '../../testbed/fixture.js';
import { FixtureData } from '../../testbed/postgres.js';
import { waitFor } from '../../testbed/process.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';

const kc = kubeConfig();
const kube = new Kube(kc);
const core = kc.makeApiClient(CoreV1Api);
const apps = kc.makeApiClient(AppsV1Api);
const namespace = uniqueName('postgres');

const psql = (pod: string, container: string, sql: string) =>
  kube.exec(
    namespace,
    pod,
    container,
    ['psql', '-X', '-A', '-t', '-d', FixtureData.database, '-c', sql],
    30_000,
  );

beforeAll(async () => {
  await seedItrsFixture(kc, { namespace, pvRoot: bed().pvRoot });
  await waitForFixtureReady(kc, namespace);
});

afterAll(async () => {
  await removeFixture(kc, namespace, bed().pvRoot);
});

describe('the fixture databases', () => {
  it('are PostgreSQL servers running as the old uid, with their rows, WAL and tablespaces on their own volumes', async () => {
    for (const pod of ['timescale-0', 'timescale-1']) {
      expect((await kube.exec(namespace, pod, 'timescale', ['id', '-u'], 30_000)).stdout.trim()).toBe('1000');
      const counts = await psql(
        pod,
        'timescale',
        'SELECT count(*) FROM events; SELECT count(*) FROM metrics_1; SELECT count(*) FROM metrics_2',
      );
      expect(counts.exitCode).toBe(0);
      expect(counts.stdout.trim().split('\n')).toEqual(['2000', '2000', '2000']);
      const where = await psql(
        pod,
        'timescale',
        "SELECT spcname || ' ' || pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname LIKE 'timeseries%' ORDER BY 1",
      );
      expect(where.stdout.trim().split('\n')).toEqual([
        'timeseries_tablespace_1 /var/lib/postgresql/tablespaces/timeseries_tablespace_1/data',
        'timeseries_tablespace_2 /var/lib/postgresql/tablespaces/timeseries_tablespace_2/data',
      ]);
      const wal = await kube.exec(
        namespace,
        pod,
        'timescale',
        ['readlink', '/var/lib/postgresql/data/pg_wal'],
        30_000,
      );
      expect(wal.stdout.trim()).toBe('/var/lib/postgresql/wal/pg_wal');
    }
  });

  it('refuse to start as the new uid on the old files, and the pod status says why', async () => {
    await apps.patchNamespacedStatefulSet(
      {
        name: 'pgplatform',
        namespace,
        body: {
          spec: {
            template: { spec: { securityContext: { runAsUser: 5000, runAsGroup: 5000, fsGroup: 5000 } } },
          },
        },
      },
      setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
    );
    await core.deleteNamespacedPod({ name: 'pgplatform-0', namespace });
    const failed = await waitFor(
      'pgplatform-0 failing as 5000',
      async () => {
        const pod: V1Pod = await core
          .readNamespacedPod({ name: 'pgplatform-0', namespace })
          .catch(() => ({}));
        const status = pod.status?.containerStatuses?.[0];
        return pod.spec?.securityContext?.runAsUser === 5000 && status?.lastState?.terminated
          ? pod
          : undefined;
      },
      60_000,
      300,
    );
    const status = failed.status!.containerStatuses![0]!;
    expect(status.ready).toBe(false);
    expect(status.lastState!.terminated!.exitCode).not.toBe(0);
    // PGDATA is 0700: the new uid cannot even read its configuration (with a readable one,
    // PostgreSQL says "data directory … has wrong ownership" instead).
    expect(status.lastState!.terminated!.message).toMatch(
      /postgres: could not access the server configuration file "\/var\/lib\/postgresql\/data\/postgresql\.conf": Permission denied|FATAL: +data directory .* has wrong ownership/,
    );
    expect(failed.status!.conditions!.find((c) => c.type === 'Ready')?.status).toBe('False');
    const log = await kube.readPodLog(namespace, 'pgplatform-0', 'postgres');
    expect(log).toMatch(/Permission denied|wrong ownership/);
  });
});
