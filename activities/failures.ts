/**
 * Turns errors into Temporal failures with a type the workflow can branch on: Kubernetes
 * errors keep their {@link KubeFailureType}; what retrying cannot fix is non-retryable.
 */
import { ApplicationFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { isKubeError } from '../src/kube.js';
import { MalformedConstraintError, RelaxationRecordError } from '../src/policy.js';

/** Failure types raised by the policy guard itself. */
export const PolicyFailureType = {
  MalformedConstraint: 'MalformedConstraint',
  RelaxedByAnotherRun: 'RelaxedByAnotherRun',
  RestoreNotVerified: 'RestoreNotVerified',
  MalformedRecord: 'MalformedRelaxationRecord',
  /** A constraint kept changing under every guarded patch (retryable). */
  ConstraintContention: 'ConstraintContention',
  /** The namespace shows a relaxation (annotation) that no protected record backs. */
  UnverifiedRecord: 'UnverifiedRelaxationRecord',
  /** The namespace that keeps the protected records does not exist. */
  RecordsNamespaceMissing: 'RecordsNamespaceMissing',
} as const;
export type PolicyFailureType = (typeof PolicyFailureType)[keyof typeof PolicyFailureType];

/** Converts any error into an `ApplicationFailure` (or returns it when it already is one). */
export function toFailure(err: unknown): Error {
  if (err instanceof ApplicationFailure) return err;
  if (isKubeError(err)) {
    return ApplicationFailure.create({
      type: err.type,
      message: err.message,
      nonRetryable: !err.retryable,
      details: [{ verb: err.verb, object: err.object, status: err.status ?? null }],
      cause: err,
    });
  }
  if (err instanceof MalformedConstraintError) {
    return ApplicationFailure.nonRetryable(err.message, PolicyFailureType.MalformedConstraint);
  }
  if (err instanceof RelaxationRecordError) {
    return ApplicationFailure.create({
      type: PolicyFailureType.MalformedRecord,
      message: err.message,
      nonRetryable: true,
      details: [{ problem: err.problem }],
    });
  }
  return err instanceof Error ? err : new Error(String(err));
}

/** Runs `fn`, rethrowing its error as a typed failure. */
export async function typed<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toFailure(err);
  }
}

const lastDetails = new WeakMap<Context, unknown>();

/** Heartbeats when running as an activity; a no-op when called directly (the CLI). */
export function heartbeat(details?: unknown): void {
  let ctx: Context;
  try {
    ctx = Context.current();
  } catch {
    return; // not inside an activity
  }
  lastDetails.set(ctx, details);
  ctx.heartbeat(details);
}

/**
 * Wraps an activity so it heartbeats on its own while it runs (repeating its last progress
 * details): every step then has a heartbeat timeout, so a worker that dies in any step is
 * noticed within that timeout instead of the step's whole start-to-close timeout, and a
 * cancellation (abort) reaches short steps too.
 */
export function keepAlive<A extends unknown[], R>(
  fn: (...args: A) => Promise<R>,
): (...args: A) => Promise<R> {
  return async (...args: A) => {
    let ctx: Context | undefined;
    try {
      ctx = Context.current();
    } catch {
      // called directly (the CLI)
    }
    const timeout = ctx?.info.heartbeatTimeoutMs;
    if (!ctx || !timeout) return fn(...args);
    const c = ctx;
    const timer = setInterval(() => c.heartbeat(lastDetails.get(c)), Math.max(200, timeout / 3));
    try {
      return await fn(...args);
    } finally {
      clearInterval(timer);
    }
  };
}

/** The current activity's context; undefined when called directly (the CLI, tests). */
export function activityContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

/** Throws the activity's `CancelledFailure` once its cancellation has arrived. */
export function throwIfCancelled(): void {
  const ctx = activityContext();
  if (ctx?.cancellationSignal.aborted) throw ctx.cancellationSignal.reason;
}

/**
 * Pauses for `ms`; in an activity, rejects with its `CancelledFailure` as soon as the
 * cancellation arrives (a heartbeat delivers it) instead of sleeping on.
 */
export async function pause(ms: number): Promise<void> {
  const ctx = activityContext();
  if (!ctx) return new Promise((r) => setTimeout(r, ms));
  await ctx.sleep(ms);
}

/** Awaits `p`, or rejects with the activity's `CancelledFailure` as soon as it is cancelled. */
export async function unlessCancelled<T>(p: Promise<T>): Promise<T> {
  const ctx = activityContext();
  if (!ctx) return p;
  throwIfCancelled();
  return Promise.race([p, ctx.cancelled]);
}

/**
 * How long a wait may last: an absolute `deadline` (ISO 8601; wins when both are given), which
 * a retried activity keeps, or `timeoutSeconds` counted from the start of this attempt.
 */
export type WaitLimit =
  { deadline: string; timeoutSeconds?: number } | { deadline?: string; timeoutSeconds: number };

/** Failure type of a wait given an unusable limit. */
export const InvalidWaitLimit = 'InvalidWaitLimit';

/**
 * The epoch milliseconds a wait ends at.
 *
 * @throws `InvalidWaitLimit` (non-retryable) when the deadline does not parse, or neither is given
 * and there is no default.
 */
export function deadlineOf(limit: Partial<WaitLimit>, defaultSeconds?: number): number {
  if (limit.deadline !== undefined) {
    const at = Date.parse(limit.deadline);
    if (Number.isNaN(at))
      throw ApplicationFailure.nonRetryable(
        `deadline "${limit.deadline}" is not an ISO 8601 time`,
        InvalidWaitLimit,
      );
    return at;
  }
  const seconds = limit.timeoutSeconds ?? defaultSeconds;
  if (seconds === undefined)
    throw ApplicationFailure.nonRetryable('a wait needs a deadline or timeoutSeconds', InvalidWaitLimit);
  return Date.now() + seconds * 1000;
}
