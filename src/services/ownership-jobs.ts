/**
 * The ownership Jobs that chown the databases' volumes: created (adopting a retried step's own,
 * replacing what earlier runs left), watched through admission and to the end, found and
 * deleted with every pod they started. Every side effect goes through the injected
 * {@link Kube}; waits report progress and honour cancellation.
 */
import type { V1Job } from '@kubernetes/client-node';
import { isKubeError, type Kube } from '../cluster/kube.js';
import { FailureType, TypedFailure } from '../core/failures.js';
import type { MigrationInput } from '../core/input.js';
import { isPassingCreateFailure } from '../core/admission.js';
import {
  buildOwnershipJob,
  jobOwnership,
  JobLabel,
  judgeJob,
  ManagedBy,
  parseJobProgress,
  parseJobSummary,
  type JobProgress,
  type JobSummary,
  type JobTarget,
} from '../core/job.js';
import type { RunRef } from '../core/policy.js';
import { OwnershipScript } from './ownership-script.js';
import {
  allSettledInOrder,
  deadlineOf,
  progress,
  throwIfCancelled,
  unlessCancelled,
  type WaitLimit,
} from './step.js';
import { byName, Collections, type WatchedCollection } from '../cluster/changes.js';
import { cadenceOf, waitUntil, withCadence, type WaitMode } from './workloads.js';

/** Dependencies of {@link OwnershipJobs}. */
export interface OwnershipJobsDeps {
  kube: Kube;
  log?: (message: string) => void;
  /**
   * Pause between polls while waiting. @default 500, and 200 while waiting for admission (the
   * policies stay relaxed until then)
   */
  pollMs?: number;
  /** How often a Job wait reads where each running Job is (its log). @default 2000 */
  progressEveryMs?: number;
  /** Whether waits watch what they wait for, or only poll. @default "watch" */
  waits?: WaitMode;
}

/** One migration Job, by name and uid. */
export interface JobRef {
  name: string;
  uid: string;
}

/** Evidence that the Jobs' pods passed admission (or were refused). */
export interface AdmissionEvidence {
  /**
   * Each Job's pod, and the node it is bound to (null while unscheduled: such a pod has not run
   * and, deleted now, never will).
   */
  admitted: { job: string; pod: string; createdAt: string; node?: string | null }[];
  refused: { job: string; message: string }[];
  timedOut: boolean;
}

/** How one Job ended. */
export interface JobOutcome {
  name: string;
  succeeded: boolean;
  summary: JobSummary | null;
  message: string;
}

/** Input of {@link OwnershipJobs.createOwnershipJobs}. */
export type CreateJobsInput = {
  run: Pick<MigrationInput, 'namespace' | 'uid' | 'gid' | 'job'>;
  targets: JobTarget[];
  owner: RunRef;
} & Partial<WaitLimit>;

/** How long deleting Jobs may take when the caller gives no limit (compensations). */
const DefaultJobDeletionSeconds = 600;

/** The Complete or Failed condition of a finished Job. */
const finishedCondition = (job: V1Job) =>
  job.status?.conditions?.find((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');

/** Selector of a Job's pods: its own selector (the controller's uid label), else its name. */
const podSelectorOf = (job: V1Job) =>
  Object.entries(job.spec?.selector?.matchLabels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(',') || `job-name=${job.metadata?.name}`;

const describeOwner = (job: V1Job) => {
  const o = jobOwnership(job);
  return `run ${o.runId ?? 'unknown'} (workflow ${o.workflowId ?? 'unknown'}) to ${o.uid ?? '?'}:${o.gid ?? '?'}`;
};

/** The ownership Jobs of runs, in their namespaces. */
export class OwnershipJobs {
  private readonly kube: Kube;
  private readonly log: (message: string) => void;
  private readonly pollMs: number;
  private readonly admissionPollMs: number;
  private readonly progressEveryMs: number;
  private readonly waits: WaitMode;

  constructor(deps: OwnershipJobsDeps) {
    this.waits = deps.waits ?? 'watch';
    this.kube = deps.kube;
    this.log = deps.log ?? (() => undefined);
    this.pollMs = deps.pollMs ?? 500;
    this.admissionPollMs = deps.pollMs ?? 200;
    this.progressEveryMs = deps.progressEveryMs ?? 2_000;
  }

  /** The namespace's runas-migrate Jobs and their pods (and, for admission, the Jobs' events). */
  private jobCollections(namespace: string, withEvents = false): WatchedCollection[] {
    const managed = `${JobLabel.ManagedBy}=${ManagedBy}`;
    return [
      { path: Collections.jobs(namespace), labelSelector: managed },
      { path: Collections.pods(namespace), labelSelector: managed },
      ...(withEvents
        ? [{ path: Collections.events(namespace), fieldSelector: 'involvedObject.kind=Job' }]
        : []),
    ];
  }

  /**
   * Creates the ownership Jobs for `owner`. Idempotent for the same run: its own Job for the same
   * IDs is adopted (a retried step), unless it failed (the run's next attempt), which is deleted
   * and created again. A finished Job of another run, or for other IDs, is deleted (its pods
   * gone first) and never counted as this run's work.
   *
   * @throws `JobOfAnotherRun` (non-retryable) when such a Job still runs, naming it, its run and
   * IDs; `JobNameTaken` (non-retryable) when a Job of that name is not runas-migrate's.
   */
  async createOwnershipJobs(input: CreateJobsInput): Promise<JobRef[]> {
    const { namespace } = input.run;
    // The Jobs are separate objects: created side by side, since in admission mode
    // every round trip here is inside the security window.
    return allSettledInOrder(
      input.targets.map(async (target): Promise<JobRef> => {
        const job = buildOwnershipJob(input.run, target, input.owner, OwnershipScript);
        const name = job.metadata!.name!;
        const adopted = await this.adoptOrClear(input, name);
        if (adopted) return adopted;
        const created = await this.kube.createJob(namespace, job);
        this.log(`created Job ${name}`);
        return { name, uid: created.metadata!.uid! };
      }),
    );
  }

  /**
   * Deals with a Job already named `name`: returns it when it is this run's to adopt; otherwise
   * deletes it and waits until it and its pods are gone, or refuses when that is not ours to do.
   */
  private async adoptOrClear(input: CreateJobsInput, name: string): Promise<JobRef | undefined> {
    const { namespace } = input.run;
    let existing: V1Job;
    try {
      existing = await this.kube.readJob(namespace, name);
    } catch (err) {
      if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
      return undefined;
    }
    if (existing.metadata?.labels?.[JobLabel.ManagedBy] !== ManagedBy) {
      throw TypedFailure.nonRetryable(
        `Job ${name} exists and was not created by runas-migrate: delete or rename it`,
        FailureType.JobNameTaken,
      );
    }
    const o = jobOwnership(existing);
    const ours = o.runId === input.owner.runId && o.uid === input.run.uid && o.gid === input.run.gid;
    const finished = finishedCondition(existing);
    const deleting = existing.metadata?.deletionTimestamp !== undefined;
    if (ours && finished?.type !== 'Failed' && !deleting) {
      this.log(`adopted this run's Job ${name}`);
      return { name, uid: existing.metadata.uid! };
    }
    if (!ours && !finished && !deleting) {
      throw TypedFailure.nonRetryable(
        `Job ${namespace}/${name} of ${describeOwner(existing)} is still running: wait for it to finish or delete it (kubectl delete job -n ${namespace} ${name} --cascade=foreground), then run again`,
        FailureType.JobOfAnotherRun,
      );
    }
    await this.deleteInForeground(namespace, existing);
    await waitUntil(
      `Job ${name} of ${describeOwner(existing)} and its pods gone`,
      input,
      cadenceOf(this.kube, this.waits, this.pollMs, [
        { path: Collections.jobs(namespace), fieldSelector: byName(name) },
        { path: Collections.pods(namespace), labelSelector: podSelectorOf(existing) },
      ]),
      async () => ((await this.jobAndPodsGone(namespace, existing)) ? true : undefined),
      DefaultJobDeletionSeconds,
    );
    this.log(`deleted the ${finished ? 'finished ' : ''}Job ${name} of ${describeOwner(existing)}`);
    return undefined;
  }

  /**
   * Waits until every Job has a pod (admitted by PSA and the API server) or a creation was
   * refused; the workflow can then re-enforce the policies while the Jobs run. Past the limit it
   * returns what it saw, `timedOut`, rather than failing.
   *
   * @throws `InvalidWaitLimit` (non-retryable) for an unusable limit.
   */
  async waitForPodsAdmitted(
    input: { namespace: string; jobs: JobRef[] } & WaitLimit,
  ): Promise<AdmissionEvidence> {
    const until = deadlineOf(input);
    const cadence = cadenceOf(
      this.kube,
      this.waits,
      this.admissionPollMs,
      this.jobCollections(input.namespace, true),
    );
    return withCadence(cadence, async (sleep, everyMs) => {
      for (;;) {
        throwIfCancelled();
        const { admitted, refused } = await unlessCancelled(this.admission(input));
        progress({ admitted: admitted.length, refused: refused.length, of: input.jobs.length });
        if (admitted.length + refused.length === input.jobs.length)
          return { admitted, refused, timedOut: false };
        if (Date.now() >= until) return { admitted, refused, timedOut: true };
        await sleep(Math.max(1, Math.min(everyMs, until - Date.now())));
      }
    });
  }

  /** Which of the Jobs have a pod, and which were refused one (a FailedCreate Event), so far. */
  private async admission(input: {
    namespace: string;
    jobs: JobRef[];
  }): Promise<Omit<AdmissionEvidence, 'timedOut'>> {
    const names = input.jobs.map((j) => j.name);
    const pods = await this.kube.listPods(input.namespace, `job-name in (${names.join(',')})`);
    const admitted = input.jobs.flatMap((j) => {
      const pod = pods.find((p) => p.metadata?.ownerReferences?.some((o) => o.uid === j.uid));
      return pod
        ? [
            {
              job: j.name,
              pod: pod.metadata!.name!,
              createdAt: new Date(pod.metadata!.creationTimestamp!).toISOString(),
              node: pod.spec?.nodeName ?? null,
            },
          ]
        : [];
    });
    const events = await this.kube.listEvents(input.namespace, 'involvedObject.kind=Job,reason=FailedCreate');
    const refused = input.jobs.flatMap((j) => {
      if (admitted.some((a) => a.job === j.name)) return [];
      // The controller retries a pod whose creation failed in passing: only a refusal counts.
      const e = events.find(
        (ev) => ev.involvedObject.uid === j.uid && !isPassingCreateFailure(ev.message ?? ''),
      );
      return e ? [{ job: j.name, message: e.message ?? 'pod creation refused' }] : [];
    });
    return { admitted, refused };
  }

  /**
   * Waits until every Job completed or failed; returns each outcome with the Job's summary. A Job
   * succeeded only when it completed and its summary proves uid:gid (no summary, no success).
   *
   * @throws `WaitTimedOut` when not every Job finished within the limit.
   */
  async waitForJobs(
    input: { namespace: string; jobs: JobRef[]; uid: number; gid: number } & WaitLimit,
  ): Promise<JobOutcome[]> {
    const outcomes = new Map<string, JobOutcome>();
    const jobs: Record<string, JobProgress> = {};
    let progressReadAt = Date.now();
    // Watched, it still looks every progressEveryMs: where each running Job is comes from logs.
    const cadence = cadenceOf(
      this.kube,
      this.waits,
      this.pollMs,
      this.jobCollections(input.namespace),
      this.progressEveryMs,
    );
    await waitUntil('ownership Jobs to finish', input, cadence, async () => {
      for (const ref of input.jobs) {
        if (outcomes.has(ref.name)) continue;
        const outcome = await this.outcomeOf(input, ref);
        if (outcome) outcomes.set(ref.name, outcome);
      }
      // Where each running Job is, from its script's log: for the live view of a long run, so not
      // at every poll.
      if (Date.now() - progressReadAt >= this.progressEveryMs) {
        progressReadAt = Date.now();
        for (const ref of input.jobs.filter((j) => !outcomes.has(j.name))) {
          const p = await this.progressOf(input.namespace, ref);
          if (p) jobs[ref.name] = p;
        }
      }
      for (const name of outcomes.keys()) delete jobs[name];
      // A copy: a heartbeat is sent later (throttled) and repeated, and must say what was true now.
      progress({ finished: outcomes.size, of: input.jobs.length, jobs: { ...jobs } });
      return outcomes.size === input.jobs.length ? true : undefined;
    });
    return input.jobs.map((j) => outcomes.get(j.name)!);
  }

  /** The last progress line of the running Job's pod; undefined before it has one. */
  private async progressOf(namespace: string, ref: JobRef): Promise<JobProgress | undefined> {
    const pod = (await this.kube.listPods(namespace, `job-name=${ref.name}`)).find(
      (p) =>
        p.metadata?.ownerReferences?.some((o) => o.uid === ref.uid) &&
        p.status?.containerStatuses?.[0]?.state?.running,
    );
    if (!pod) return undefined;
    try {
      return parseJobProgress(
        await this.kube.readPodLog(namespace, pod.metadata!.name!, pod.spec!.containers[0]!.name),
      );
    } catch {
      return undefined; // a log not readable yet (or any more): the next read will tell
    }
  }

  /** How the Job `ref` ended; undefined while it runs. */
  private async outcomeOf(
    input: { namespace: string; uid: number; gid: number },
    ref: JobRef,
  ): Promise<JobOutcome | undefined> {
    let job: V1Job | undefined;
    try {
      job = await this.kube.readJob(input.namespace, ref.name);
    } catch (err) {
      if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
    }
    if (job?.metadata?.uid !== ref.uid) {
      return {
        name: ref.name,
        succeeded: false,
        summary: null,
        message: job ? 'replaced by another Job of the same name' : 'deleted before it finished',
      };
    }
    const done = finishedCondition(job);
    if (!done) return undefined;
    const pods = await this.kube.listPods(input.namespace, `job-name=${ref.name}`);
    const terminated = pods
      .filter((p) => p.metadata?.ownerReferences?.some((o) => o.uid === ref.uid))
      .map((p) => p.status?.containerStatuses?.[0]?.state?.terminated)
      .find((t) => t !== undefined);
    const summary = parseJobSummary(terminated?.message);
    const verdict = judgeJob(done, summary, terminated?.exitCode, input);
    return { name: ref.name, summary: summary ?? null, ...verdict };
  }

  /**
   * The ownership Jobs `owner` created in the namespace, whatever their IDs: what settling works
   * from when the run's creation step was interrupted before it could say which it created.
   */
  async findOwnershipJobs(input: { namespace: string; owner: RunRef }): Promise<JobRef[]> {
    return (
      await this.kube.listJobs(
        input.namespace,
        `${JobLabel.ManagedBy}=${ManagedBy},${JobLabel.Run}=${input.owner.runId}`,
      )
    )
      .filter((j) => j.metadata?.deletionTimestamp === undefined)
      .map((j) => ({ name: j.metadata!.name!, uid: j.metadata!.uid! }));
  }

  /**
   * Deletes ownership Jobs in the foreground and waits until each Job and every pod it started
   * are gone, so no chown runs on when this returns. All runas-migrate Jobs of the namespace by
   * default (the compensations); only `owner`'s, or only the named ones, when given.
   *
   * @returns the names of the Jobs deleted.
   * @throws `WaitTimedOut` when a Job or pod outlives the limit (10 minutes by default).
   */
  async deleteOwnershipJobs(
    input: { namespace: string; owner?: RunRef; names?: string[] } & Partial<WaitLimit>,
  ): Promise<string[]> {
    const selector = `${JobLabel.ManagedBy}=${ManagedBy}${input.owner ? `,${JobLabel.Run}=${input.owner.runId}` : ''}`;
    const doomed = (await this.kube.listJobs(input.namespace, selector)).filter(
      (j) => !input.names || input.names.includes(j.metadata!.name!),
    );
    for (const job of doomed) await this.deleteInForeground(input.namespace, job);
    const left = new Set(doomed);
    if (left.size) {
      await waitUntil(
        `${left.size} ownership Jobs and their pods gone`,
        input,
        cadenceOf(this.kube, this.waits, this.pollMs, this.jobCollections(input.namespace)),
        async () => {
          for (const job of [...left]) if (await this.jobAndPodsGone(input.namespace, job)) left.delete(job);
          progress({ deleting: [...left].map((j) => j.metadata!.name!) });
          return left.size === 0 ? true : undefined;
        },
        DefaultJobDeletionSeconds,
      );
    }
    const names = doomed.map((j) => j.metadata!.name!);
    if (names.length) this.log(`deleted Jobs ${names.join(', ')}; their pods are gone`);
    return names;
  }

  /** Whether a Job (by uid) and every pod it started are gone. */
  private async jobAndPodsGone(namespace: string, job: V1Job): Promise<boolean> {
    const name = job.metadata!.name!;
    try {
      if ((await this.kube.readJob(namespace, name)).metadata?.uid === job.metadata!.uid) return false;
    } catch (err) {
      if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
    }
    return (await this.kube.listPods(namespace, podSelectorOf(job))).length === 0;
  }

  /** Deletes a Job in the foreground (only that one, by uid), unless it is already being deleted. */
  private async deleteInForeground(namespace: string, job: V1Job): Promise<void> {
    if (job.metadata?.deletionTimestamp) return;
    try {
      await this.kube.deleteJob(namespace, job.metadata!.name!, { uid: job.metadata!.uid! });
    } catch (err) {
      // Gone already, or replaced by a newer Job of the same name: this one is gone either way.
      if (!isKubeError(err, FailureType.KubeNotFound) && !isKubeError(err, FailureType.KubeConflict))
        throw err;
    }
  }
}
