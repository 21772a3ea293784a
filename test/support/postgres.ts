/**
 * Reading and writing the fixture's real databases from tests, through `exec` into their
 * containers, as an operator would with `kubectl exec … psql`.
 */
import { expect } from 'vitest';
import type { Kube } from '../../src/cluster/kube.js';
import { ItrsDatabases } from '../../testbed/fixture.js';
import { FixtureData } from '../../testbed/postgres.js';

/** Every replica of the fixture: pod and container. */
export const fixtureReplicas = ItrsDatabases.flatMap((db) =>
  Array.from({ length: db.replicas }, (_, i) => ({ pod: `${db.statefulSet}-${i}`, container: db.container })),
);

/** Runs SQL in a replica's database; fails the test on an error. */
export async function sql(kube: Kube, namespace: string, pod: string, container: string, query: string) {
  const r = await kube.exec(
    namespace,
    pod,
    container,
    ['psql', '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', FixtureData.database, '-c', query],
    60_000,
  );
  expect(r.exitCode, `${pod}: ${query}\n${r.stderr}`).toBe(0);
  return r.stdout.trim();
}

/** The tables of a replica that exist there (the tablespace ones only where the volumes are). */
async function tablesOf(kube: Kube, namespace: string, pod: string, container: string): Promise<string[]> {
  const names = Object.keys(FixtureData.tables).map((t) => `'${t}'`);
  const out = await sql(
    kube,
    namespace,
    pod,
    container,
    `SELECT tablename FROM pg_tables WHERE tablename IN (${names.join(',')}) ORDER BY 1`,
  );
  return out.split('\n').filter(Boolean);
}

/** Count and checksum of every row of every fixture table of a replica: `table count md5` per line. */
export async function rowDigest(
  kube: Kube,
  namespace: string,
  pod: string,
  container: string,
): Promise<string> {
  const tables = await tablesOf(kube, namespace, pod, container);
  const parts = tables.map(
    (t) =>
      `SELECT '${t}' || ' ' || count(*) || ' ' || md5(coalesce(string_agg(r::text, ',' ORDER BY r.id), '')) FROM ${t} r`,
  );
  return sql(kube, namespace, pod, container, parts.join(' UNION ALL '));
}

/** Writes `rows` more rows into every fixture table of a replica, marked with `note`. */
export async function writeRows(
  kube: Kube,
  namespace: string,
  pod: string,
  container: string,
  rows: number,
  note: string,
): Promise<void> {
  for (const t of await tablesOf(kube, namespace, pod, container))
    await sql(
      kube,
      namespace,
      pod,
      container,
      `INSERT INTO ${t} SELECT m + i, now(), i, '${note}' FROM (SELECT max(id) m FROM ${t}) x, generate_series(1, ${rows}) i`,
    );
}
