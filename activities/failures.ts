/**
 * Turns errors into Temporal failures with a type the workflow can branch on: Kubernetes
 * errors keep their {@link KubeFailureType}; what retrying cannot fix is non-retryable.
 */
import { ApplicationFailure } from '@temporalio/common';
import { Context } from '@temporalio/activity';
import { isKubeError } from '../src/kube.js';
import { MalformedConstraintError } from '../src/policy.js';

/** Failure types raised by the policy guard itself. */
export const PolicyFailureType = {
  MalformedConstraint: 'MalformedConstraint',
  RelaxedByAnotherRun: 'RelaxedByAnotherRun',
  RestoreNotVerified: 'RestoreNotVerified',
  MalformedRecord: 'MalformedRelaxationRecord',
  /** A constraint kept changing under every guarded patch (retryable). */
  ConstraintContention: 'ConstraintContention',
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
