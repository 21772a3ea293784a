/**
 * Real PostgreSQL for the fixture's databases: the files an installed product leaves on its
 * volumes (a cluster from `initdb`, its WAL on the WAL volume, two tablespaces on the tablespace
 * volumes, a few thousand rows), made once per layout into a cache outside the repository and
 * copied onto every replica's volumes; and the container that runs the server on them.
 *
 * TimescaleDB has no Debian package on these machines: the `timescale` StatefulSet runs plain
 * PostgreSQL with TimescaleDB's volume layout.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import type { V1Container, V1Probe, V1Volume } from '@kubernetes/client-node';
import { cacheRoot } from './tools.js';

/** Where the server's Unix socket lives in the pod (an emptyDir of its own, as real charts mount). */
export const SocketDirectory = '/var/run/postgresql';

/** The database with the fixture's rows, and its tables. */
export const FixtureData = {
  database: 'iax',
  /** Table name → tablespace (undefined: the default one, on the data volume). */
  tables: {
    events: undefined,
    metrics_1: 'timeseries_tablespace_1',
    metrics_2: 'timeseries_tablespace_2',
  } as Record<string, string | undefined>,
  rowsPerTable: 2000,
} as const;

/** The PostgreSQL server binaries: `RUNAS_MIGRATE_POSTGRES_BIN`, or Debian's postgresql-15. */
export function postgresBinDir(): string {
  const dir = process.env.RUNAS_MIGRATE_POSTGRES_BIN ?? '/usr/lib/postgresql/15/bin';
  if (!existsSync(join(dir, 'postgres')))
    throw new Error(
      `no PostgreSQL server in ${dir}: install Debian's postgresql-15 (apt-get install postgresql-15) or set RUNAS_MIGRATE_POSTGRES_BIN to its bin folder`,
    );
  return dir;
}

/** One volume of a database's layout: its mount path, and whether it holds PGDATA, WAL or a tablespace. */
export interface DatabaseVolume {
  claim: string;
  mountPath: string;
  seed: 'pgdata' | 'wal' | 'tablespace';
}

const PgData = (volumes: readonly DatabaseVolume[]) =>
  posix.join(volumes.find((v) => v.seed === 'pgdata')!.mountPath, 'data');

/** The tablespace name of a tablespace volume: the last folder of its mount path. */
const tablespaceOf = (v: DatabaseVolume) => posix.basename(v.mountPath);

/** The bash script that, in a private mount namespace with the volumes at their mount paths, makes the cluster. */
function initScript(volumes: readonly DatabaseVolume[], bin: string, socketDir: string): string {
  const pgdata = PgData(volumes);
  const wal = volumes.find((v) => v.seed === 'wal');
  const tablespaces = volumes.filter((v) => v.seed === 'tablespace');
  const rows = FixtureData.rowsPerTable;
  const sql = [
    'CREATE EXTENSION amcheck;',
    ...tablespaces.map((t) => `CREATE TABLESPACE ${tablespaceOf(t)} LOCATION '${t.mountPath}/data';`),
  ];
  const tables = Object.entries(FixtureData.tables).filter(
    ([, ts]) => ts === undefined || tablespaces.some((t) => tablespaceOf(t) === ts),
  );
  const dataSql = tables.flatMap(([table, ts]) => [
    `CREATE TABLE ${table} (id int PRIMARY KEY, at timestamptz NOT NULL, value double precision NOT NULL, note text)${ts ? ` TABLESPACE ${ts}` : ''};`,
    `INSERT INTO ${table} SELECT i, timestamptz '2026-01-01' + i * interval '1 minute', i * 0.5, md5(i::text) FROM generate_series(1, ${rows}) i;`,
  ]);
  const psql = (db: string, lines: string[]) =>
    `"${bin}/psql" -X -q -v ON_ERROR_STOP=1 -h "${socketDir}" -U postgres -d ${db} <<'SQL'\n${lines.join('\n')}\nSQL`;
  return [
    'set -eEu',
    ...tablespaces.map((t) => `mkdir -p '${t.mountPath}/data' && chown postgres: '${t.mountPath}/data'`),
    `setpriv --reuid=postgres --regid=postgres --clear-groups -- "${bin}/initdb" -D '${pgdata}' -U postgres --auth=trust -E UTF8 --locale=C --wal-segsize=1 --no-sync ${wal ? `--waldir='${wal.mountPath}/pg_wal'` : ''} >/dev/null`,
    `setpriv --reuid=postgres --regid=postgres --clear-groups -- "${bin}/pg_ctl" -D '${pgdata}' -s -w -o "-c listen_addresses= -c unix_socket_directories=${socketDir} -c fsync=off" -l ${socketDir}/server.log start`,
    psql('template1', ['CREATE EXTENSION amcheck;']),
    psql('postgres', sql),
    psql('postgres', [`CREATE DATABASE ${FixtureData.database};`]),
    psql(FixtureData.database, dataSql),
    `setpriv --reuid=postgres --regid=postgres --clear-groups -- "${bin}/pg_ctl" -D '${pgdata}' -s -w -m fast stop`,
  ].join('\n');
}

/**
 * The volumes of one database, as an installed product leaves them: one folder per claim, with
 * PostgreSQL's files in place, made once per layout and PostgreSQL version and then copied.
 *
 * @returns the template folder, with one sub-folder per claim (owned by the `postgres` user).
 */
export function databaseTemplate(volumes: readonly DatabaseVolume[]): string {
  const bin = postgresBinDir();
  const version = execFileSync(join(bin, 'postgres'), ['--version'], { encoding: 'utf8' }).trim();
  const key = createHash('sha256')
    .update(JSON.stringify({ volumes, version, data: FixtureData, script: initScript(volumes, bin, '') }))
    .digest('hex')
    .slice(0, 16);
  const root = join(cacheRoot(), 'postgres-templates');
  const done = join(root, key);
  if (existsSync(done)) return done;
  mkdirSync(root, { recursive: true });
  const work = mkdtempSync(join(root, `.${key}-`));
  try {
    // The volumes are bound at their mount paths in a private mount namespace, as in the pod:
    // the WAL symlink and the tablespace links then point where the server will find them.
    const byDepth = [...volumes].sort((a, b) => a.mountPath.length - b.mountPath.length);
    const binds = byDepth.map((v) => {
      const dir = join(work, v.claim);
      mkdirSync(dir);
      return `mkdir -p '${v.mountPath}' && mount --bind '${dir}' '${v.mountPath}' && chown postgres: '${v.mountPath}'`;
    });
    // The socket and the server's log in a tmpfs of the namespace: the cache may sit in a home
    // folder the postgres user cannot enter.
    const socket = [
      `mkdir -p ${SocketDirectory} && mount -t tmpfs tmpfs ${SocketDirectory} && chown postgres: ${SocketDirectory}`,
      `trap 'cat ${SocketDirectory}/server.log >&2 2>/dev/null || true' ERR`,
    ];
    const script = [...binds, ...socket, initScript(volumes, bin, SocketDirectory)].join('\n');
    writeFileSync(join(work, 'init.sh'), script);
    execFileSync('unshare', ['--mount', '--propagation', 'private', '--', 'bash', join(work, 'init.sh')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    rmSync(join(work, 'init.sh'));
    renameSync(work, done);
  } catch (err) {
    rmSync(work, { recursive: true, force: true });
    if (existsSync(done)) return done; // made by another process meanwhile
    throw err;
  }
  return done;
}

/** Copies one claim's folder of a template onto a volume's host folder, owned by `uid`. */
export function copyTemplateVolume(template: string, claim: string, dir: string, uid: number): void {
  mkdirSync(dir, { recursive: true });
  execFileSync('cp', ['-a', '--', `${join(template, claim)}/.`, dir]);
  execFileSync('chown', ['-R', '-h', `${uid}:${uid}`, '--', dir]);
}

/** The container and pod volumes that run a real PostgreSQL server on a database's volumes. */
export function postgresContainer(
  base: V1Container,
  volumes: readonly DatabaseVolume[],
): { container: V1Container; volumes: V1Volume[] } {
  const bin = postgresBinDir();
  const readinessProbe: V1Probe = {
    exec: { command: ['pg_isready', '-q', '-h', SocketDirectory, '-U', 'postgres'] },
    // Shorter than a chart's 10 s: the bed's runs should not wait for a probe period.
    periodSeconds: 1,
    timeoutSeconds: 5,
    failureThreshold: 3,
  };
  return {
    container: {
      ...base,
      command: ['postgres'],
      args: [
        '-D',
        PgData(volumes),
        '-c',
        'listen_addresses=',
        '-c',
        `unix_socket_directories=${SocketDirectory}`,
        '-c',
        'shared_buffers=16MB',
        '-c',
        'max_connections=20',
      ],
      env: [
        { name: 'PATH', value: `${bin}:/usr/local/bin:/usr/bin:/bin` },
        { name: 'PGDATA', value: PgData(volumes) },
        { name: 'PGHOST', value: SocketDirectory },
        { name: 'PGUSER', value: 'postgres' },
      ],
      readinessProbe,
      terminationMessagePolicy: 'FallbackToLogsOnError',
      volumeMounts: [...(base.volumeMounts ?? []), { name: 'run', mountPath: SocketDirectory }],
    },
    volumes: [{ name: 'run', emptyDir: {} }],
  };
}
