/**
 * Helpers the workload services share (src/services/statefulsets.ts, ownership-jobs.ts and
 * planner.ts): reading a status path, and the bounded wait their steps poll with.
 */
import { FailureType, TypedFailure } from '../core/failures.js';
import { deadlineOf, pause, progress, throwIfCancelled, unlessCancelled, type WaitLimit } from './step.js';

/** The value at a dotted `path` of `obj` (undefined where the path ends early). */
export function getPath(obj: unknown, path: string): unknown {
  return path
    .split('.')
    .reduce<unknown>(
      (o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined),
      obj,
    );
}

/**
 * Polls `check` every `everyMs` until it answers or `limit` passes, reporting progress. A
 * cancellation of the step ends the wait at once, mid-sleep or mid-call.
 *
 * The timeout names the deadline, and is retryable when the limit was only `timeoutSeconds`: a
 * retry gets a fresh attempt's time, while past an absolute deadline a retry cannot help.
 *
 * @throws `WaitTimedOut` when the limit passes first; `InvalidWaitLimit` for an unusable limit.
 */
export async function waitUntil<T>(
  what: string,
  limit: Partial<WaitLimit>,
  everyMs: number,
  check: () => Promise<T | undefined>,
  defaultSeconds?: number,
): Promise<T> {
  const until = deadlineOf(limit, defaultSeconds);
  for (;;) {
    throwIfCancelled();
    const v = await unlessCancelled(check());
    if (v !== undefined) return v;
    if (Date.now() >= until) {
      throw new TypedFailure(
        FailureType.WaitTimedOut,
        `timed out waiting for ${what}${limit.deadline !== undefined ? ` (deadline ${limit.deadline})` : ''}`,
        { retryable: limit.deadline === undefined },
      );
    }
    progress({ waitingFor: what });
    await pause(Math.max(1, Math.min(everyMs, until - Date.now())));
  }
}
