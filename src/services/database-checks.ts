/**
 * The seed's verification, done on every replica of every database once they are back: the
 * owner of each migrated mount, the server's identity, a query, the container's log since it
 * started, and a read of every relation — through `exec` into the database container and the
 * Log API, so it works on any cluster the worker can reach.
 */
import type { V1Pod } from '@kubernetes/client-node';
import pLimit from 'p-limit';
import type { ExecResult, Kube } from '../cluster/kube.js';
import { parseDuration } from '../core/input.js';
import {
  DatabaseCheck,
  deepCommand,
  evidenceOf,
  identityMatches,
  logProblems,
  sqlCommand,
  wrongOwners,
  type CheckResult,
  type DatabaseCheckSettings,
} from '../core/verification.js';
import { allSettledInOrder, currentStep, progress, throwIfCancelled, unlessCancelled } from './step.js';
import { statefulSetPods } from './statefulsets.js';

/** How many checks run at once over all replicas when the settings do not say (`verify.checksAtOnce`). */
export const ChecksAtOnce = 8;

/** What {@link DatabaseChecks} needs. */
export interface DatabaseChecksDeps {
  kube: Kube;
  log?: (message: string) => void;
}

/** The databases to check, and how. */
export interface DatabaseChecksInput {
  namespace: string;
  uid: number;
  gid: number;
  databases: { statefulSet: string; container: string; mountPaths: string[] }[];
  settings: DatabaseCheckSettings;
  /** How long one check may take (a duration such as "30m"). */
  timeout: string;
}

const outputOf = (r: ExecResult) =>
  evidenceOf([r.stdout, r.stderr, r.error ?? ''].filter(Boolean).join('\n'));

/** Runs the checks of every replica. */
export class DatabaseChecks {
  private readonly kube: Kube;
  private readonly log: (message: string) => void;

  constructor(deps: DatabaseChecksDeps) {
    this.kube = deps.kube;
    this.log = deps.log ?? (() => undefined);
  }

  /**
   * Runs every check the settings name on every replica, side by side (`checksAtOnce` at a
   * time); one result per check and replica, by replica in the settings' order (a failed check
   * does not stop the others: the report shows them all).
   */
  async checkDatabases(input: DatabaseChecksInput): Promise<CheckResult[]> {
    const replicas: { pod: V1Pod; container: string; mountPaths: string[] }[] = [];
    for (const db of input.databases) {
      const pods = (await statefulSetPods(this.kube, input.namespace, db.statefulSet)).pods.sort((a, b) =>
        a.metadata!.name!.localeCompare(b.metadata!.name!),
      );
      replicas.push(...pods.map((pod) => ({ pod, container: db.container, mountPaths: db.mountPaths })));
    }
    let done = 0;
    // Every replica and every check side by side: they only read, each replica is its own
    // server, and the slowest (deep) alone is the step's time instead of the sum of one
    // replica's; at most `checksAtOnce` of them (exec streams) at a time. Each group settles
    // whole before it throws, so no check is left running.
    const limit = pLimit(input.settings.checksAtOnce ?? ChecksAtOnce);
    const perReplica = await allSettledInOrder(
      replicas.map(({ pod, container, mountPaths }) =>
        allSettledInOrder(
          input.settings.checks.map((check) =>
            limit(async (): Promise<CheckResult> => {
              throwIfCancelled();
              const started = Date.now();
              const result = await this.run(check, pod, container, mountPaths, input);
              progress({ checked: ++done, of: replicas.length * input.settings.checks.length });
              this.log(
                `${pod.metadata!.name} ${check}: ${result.skipped ? 'skipped' : result.ok ? 'ok' : 'FAILED'}`,
              );
              return { pod: pod.metadata!.name!, check, ...result, ms: Date.now() - started };
            }),
          ),
        ),
      ),
    );
    return perReplica.flat();
  }

  private async run(
    check: DatabaseCheck,
    pod: V1Pod,
    container: string,
    mountPaths: string[],
    input: DatabaseChecksInput,
  ): Promise<Omit<CheckResult, 'pod' | 'check' | 'ms'>> {
    const timeoutMs = parseDuration(input.timeout) ?? 30 * 60_000;
    // A command stuck in the database (a lock, a hung server) must not hold up an abort until
    // its timeout: the step's cancellation ends the wait for it.
    const exec = (command: string[]) =>
      unlessCancelled(
        this.kube.exec(
          input.namespace,
          pod.metadata!.name!,
          container,
          command,
          timeoutMs,
          currentStep()?.cancelled,
        ),
      );
    const { uid, gid, settings } = input;
    switch (check) {
      case DatabaseCheck.Ownership: {
        const r = await exec(['stat', '-c', '%u:%g %n', ...mountPaths]);
        const wrong = wrongOwners(r.stdout, uid, gid);
        return {
          ok: r.exitCode === 0 && wrong.length === 0,
          output: r.exitCode === 0 ? evidenceOf(r.stdout) : outputOf(r),
        };
      }
      case DatabaseCheck.Identity: {
        const r = await exec(['id']);
        return { ok: r.exitCode === 0 && identityMatches(r.stdout, uid, gid), output: outputOf(r) };
      }
      case DatabaseCheck.Sql: {
        const r = await exec(sqlCommand(settings));
        const answered = settings.commands.sql !== undefined || r.stdout.trim() === '1';
        return { ok: r.exitCode === 0 && answered, output: outputOf(r) };
      }
      case DatabaseCheck.Logs: {
        const status = pod.status?.containerStatuses?.find((c) => c.name === container);
        const since = status?.state?.running?.startedAt;
        const log = await unlessCancelled(
          this.kube.readPodLog(
            input.namespace,
            pod.metadata!.name!,
            container,
            since ? new Date(since) : undefined,
          ),
        );
        const problems = logProblems(log);
        return { ok: problems.length === 0, output: evidenceOf(problems.join('\n')) };
      }
      case DatabaseCheck.Deep: {
        if (settings.commands.deep === undefined) {
          const has = await exec(['sh', '-c', 'command -v pg_amcheck']);
          if (has.exitCode !== 0)
            return {
              ok: true,
              skipped:
                'pg_amcheck is not in the image (set verify.commands.deep to read every relation another way)',
              output: '',
            };
        }
        const r = await exec(deepCommand(settings));
        return { ok: r.exitCode === 0, output: outputOf(r) };
      }
    }
  }
}
