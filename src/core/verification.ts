/**
 * The seed's checks of a database replica after the migration, pure: which checks there are,
 * the commands they run inside the database container, and how their output is judged.
 * The service (services/database-checks.ts) runs them through `exec` and the Log API.
 */

/** The checks of one replica, in the order they run. */
export const DatabaseCheck = {
  /** `stat -c %u:%g` of every migrated mount: the new owner. */
  Ownership: 'ownership',
  /** `id`: the server runs as the new uid and gid. */
  Identity: 'identity',
  /** `psql -c 'SELECT 1'`: the server answers. */
  Sql: 'sql',
  /** The container's log since its start: no FATAL, PANIC or "Permission denied". */
  Logs: 'logs',
  /** Every relation read (`pg_amcheck --all`), so a file left unreadable is found. */
  Deep: 'deep',
} as const;
export type DatabaseCheck = (typeof DatabaseCheck)[keyof typeof DatabaseCheck];

/** Every check, in the order they run. */
export const AllDatabaseChecks: readonly DatabaseCheck[] = Object.values(DatabaseCheck);

/** How the checks reach the database. */
export interface DatabaseCheckSettings {
  checks: DatabaseCheck[];
  /** The database user psql and pg_amcheck connect as (no passwd entry is needed for it). */
  user: string;
  /** The database psql connects to, and pg_amcheck's maintenance database. */
  database: string;
  /** Commands that replace the default of a check, for images without psql or pg_amcheck. */
  commands: { sql?: string[]; deep?: string[] };
  /** How many checks run at once over all replicas; 8 when absent (a run from before it). */
  checksAtOnce?: number;
}

/** One check's result on one replica: the evidence the report keeps. */
export interface CheckResult {
  pod: string;
  check: DatabaseCheck;
  ok: boolean;
  /** Why the check did not run, when it did not (the image lacks the tool). */
  skipped?: string;
  /** What the check saw (the end of the command's output, or the log lines it matched). */
  output: string;
  /** How long the check took. */
  ms: number;
}

/** Most of a check's output the report keeps. */
export const EvidenceChars = 1000;

/** Keeps the end of a command's output, where the error is. */
export function evidenceOf(text: string): string {
  const t = text.trim();
  return t.length > EvidenceChars ? `…${t.slice(-EvidenceChars)}` : t;
}

/** The command of the SQL check. */
export function sqlCommand(s: DatabaseCheckSettings): string[] {
  return s.commands.sql ?? ['psql', '-X', '-A', '-t', '-U', s.user, '-d', s.database, '-c', 'SELECT 1'];
}

/** The command of the deep check: every relation of every database read by pg_amcheck. */
export function deepCommand(s: DatabaseCheckSettings): string[] {
  return s.commands.deep ?? ['pg_amcheck', '--all', '-U', s.user, '--maintenance-db', s.database];
}

/** Whether the output of `id` names the given uid and gid. */
export function identityMatches(idOutput: string, uid: number, gid: number): boolean {
  const u = /uid=(\d+)/.exec(idOutput)?.[1];
  const g = /gid=(\d+)/.exec(idOutput)?.[1];
  return Number(u) === uid && Number(g) === gid;
}

/** The lines of `stat -c '%u:%g %n'` whose owner is not uid:gid. */
export function wrongOwners(statOutput: string, uid: number, gid: number): string[] {
  return statOutput
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith(`${uid}:${gid} `));
}

const LogProblem = /\b(FATAL|PANIC)\b|Permission denied/;
/**
 * Messages PostgreSQL logs at FATAL in normal operation, about one connection and not the
 * server: a client or probe connecting while it starts or stops, a client with wrong
 * credentials or too many clients reconnecting at once after the restart, a standby that
 * started before its primary. None says anything of the files the run changed.
 */
const LogRoutine = new RegExp(
  [
    'the database system is (starting up|shutting down|not yet accepting connections)',
    'password authentication failed for user',
    'no pg_hba\\.conf entry for',
    'role ".*" does not exist',
    'database ".*" does not exist',
    'sorry, too many clients already',
    'remaining connection slots are reserved',
    'canceling authentication due to timeout',
    'terminating connection due to administrator command',
    'could not connect to the primary server',
  ].join('|'),
);

/** The log lines that say the server is in trouble. */
export function logProblems(log: string): string[] {
  return log.split('\n').filter((l) => LogProblem.test(l) && !LogRoutine.test(l));
}

/** The one-line problem a failed check adds to the run's verification. */
export function problemOf(r: CheckResult): string {
  const firstLines = r.output.split('\n').slice(0, 3).join(' | ');
  return `${r.pod}: ${r.check} check failed: ${firstLines || '(no output)'}`;
}
