import { describe, expect, it } from 'vitest';
import {
  deepCommand,
  evidenceOf,
  EvidenceChars,
  identityMatches,
  logProblems,
  problemOf,
  sqlCommand,
  wrongOwners,
} from '../../src/core/verification.js';

const settings = { checks: [], user: 'postgres', database: 'postgres', commands: {} };

describe('the checks of a replica', () => {
  it('reads the uid and gid of `id`, with or without names', () => {
    expect(identityMatches('uid=5000 gid=5000 groups=5000', 5000, 5000)).toBe(true);
    expect(identityMatches('uid=5000(app) gid=5001(app) groups=5001(app)', 5000, 5001)).toBe(true);
    expect(identityMatches('uid=1000 gid=1000 groups=1000', 5000, 5000)).toBe(false);
    expect(identityMatches('uid=5000 gid=1000', 5000, 5000)).toBe(false);
    expect(identityMatches('', 5000, 5000)).toBe(false);
  });

  it('names each mount whose owner is not the new one', () => {
    const stat = '5000:5000 /var/lib/postgresql\n1000:1000 /var/lib/postgresql/wal\n5000:50000 /x\n';
    expect(wrongOwners(stat, 5000, 5000)).toEqual(['1000:1000 /var/lib/postgresql/wal', '5000:50000 /x']);
    expect(wrongOwners('5000:5000 /a\n5000:5000 /b', 5000, 5000)).toEqual([]);
  });

  it('finds FATAL, PANIC and "Permission denied" in the log, but not one connection\'s routine trouble', () => {
    const log = [
      'LOG:  database system is ready to accept connections',
      'FATAL:  the database system is starting up',
      'FATAL:  data directory "/var/lib/postgresql/data" has wrong ownership',
      'ERROR:  could not open file "base/16384/16385": Permission denied',
      'PANIC:  could not write to file "pg_wal/xlogtemp.42"',
      'LOG:  FATALISM is not a word here',
      // One connection's trouble, not the server's: clients reconnecting after the restart.
      '2026-12-03 13:00:01 UTC [42] app@itrs FATAL:  password authentication failed for user "app"',
      'FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "app", database "itrs", no encryption',
      'FATAL:  role "nagios" does not exist',
      'FATAL:  database "itrs_old" does not exist',
      'FATAL:  sorry, too many clients already',
      'FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute',
      'FATAL:  canceling authentication due to timeout',
      'FATAL:  terminating connection due to administrator command',
      'FATAL:  could not connect to the primary server: connection to server at "pg-0" failed: Connection refused',
      'FATAL:  could not open file "global/pg_filenode.map": Permission denied',
    ].join('\n');
    expect(logProblems(log)).toEqual([
      'FATAL:  data directory "/var/lib/postgresql/data" has wrong ownership',
      'ERROR:  could not open file "base/16384/16385": Permission denied',
      'PANIC:  could not write to file "pg_wal/xlogtemp.42"',
      'FATAL:  could not open file "global/pg_filenode.map": Permission denied',
    ]);
  });

  it("runs psql and pg_amcheck as the configured user, or the operator's own commands", () => {
    expect(sqlCommand(settings)).toEqual([
      'psql',
      '-X',
      '-A',
      '-t',
      '-U',
      'postgres',
      '-d',
      'postgres',
      '-c',
      'SELECT 1',
    ]);
    expect(deepCommand({ ...settings, user: 'iax', database: 'iax' })).toEqual([
      'pg_amcheck',
      '--all',
      '-U',
      'iax',
      '--maintenance-db',
      'iax',
    ]);
    expect(sqlCommand({ ...settings, commands: { sql: ['mysql', '-e', 'SELECT 1'] } })).toEqual([
      'mysql',
      '-e',
      'SELECT 1',
    ]);
  });

  it('keeps the end of a long output, where the error is, and names replica and check in the problem', () => {
    const long = `${'x'.repeat(5000)}FATAL: the end`;
    expect(evidenceOf(long).length).toBe(EvidenceChars + 1);
    expect(evidenceOf(long).endsWith('FATAL: the end')).toBe(true);
    expect(
      problemOf({
        pod: 'timescale-1',
        check: 'deep',
        ok: false,
        output: 'heap table "iax.public.metrics_1": could not open file\nmore\nmore\nmore',
        ms: 3,
      }),
    ).toBe(
      'timescale-1: deep check failed: heap table "iax.public.metrics_1": could not open file | more | more',
    );
  });
});
