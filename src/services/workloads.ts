/**
 * Helpers the workload services share (src/services/statefulsets.ts, ownership-jobs.ts and
 * planner.ts): reading a status path, and the bounded wait their steps look with (woken by
 * watches, or polling).
 */
import type { ChangeFeed, WatchedCollection } from '../cluster/changes.js';
import type { Kube } from '../cluster/kube.js';
import { FailureType, TypedFailure } from '../core/failures.js';
import {
  currentStep,
  deadlineOf,
  pause,
  progress,
  throwIfCancelled,
  unlessCancelled,
  type WaitLimit,
} from './step.js';

/** The value at a dotted `path` of `obj` (undefined where the path ends early). */
export function getPath(obj: unknown, path: string): unknown {
  return path
    .split('.')
    .reduce<unknown>(
      (o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined),
      obj,
    );
}

/** How the waits learn that something changed: watches that wake them, or polls alone. */
export type WaitMode = 'watch' | 'poll';

/** How often a watched wait looks anyway: a missed event costs at most this. */
export const WatchFallbackMs = 5_000;

/**
 * When a wait looks again: every `N` ms (a poll), or when one of the watched collections changes
 * and at least every `pollMs`.
 */
export type Cadence = number | { pollMs: number; fallbackMs: number; changes: () => ChangeFeed };

/** The cadence of a wait on `collections`: watched in `watch` mode, else polled every `pollMs`. */
export function cadenceOf(
  kube: Kube,
  mode: WaitMode,
  pollMs: number,
  collections: WatchedCollection[],
  fallbackMs = WatchFallbackMs,
): Cadence {
  return mode === 'watch' ? { pollMs, fallbackMs, changes: () => kube.watchChanges(collections) } : pollMs;
}

/**
 * Runs `body` with the cadence's change feed (none for a poll), a sleep that ends at the next
 * change or after at most `ms`, and how long to sleep between looks; closes the feed afterwards.
 */
export async function withCadence<T>(
  cadence: Cadence,
  body: (sleep: (ms: number) => Promise<void>, everyMs: number) => Promise<T>,
): Promise<T> {
  if (typeof cadence === 'number') return body(pause, cadence);
  const feed = cadence.changes();
  // A collection the API server will not let us watch is polled as without watches.
  const sleep = (ms: number) =>
    feed.counts.refused > 0
      ? pause(Math.min(ms, cadence.pollMs))
      : feed.changeOrTimeout(ms, currentStep()?.cancelled);
  try {
    return await body(sleep, cadence.fallbackMs);
  } finally {
    feed.close();
  }
}

/**
 * Looks with `check` at the `cadence` (src/cluster/changes.ts) until it answers or `limit` passes, reporting progress. A
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
  cadence: Cadence,
  check: () => Promise<T | undefined>,
  defaultSeconds?: number,
): Promise<T> {
  const until = deadlineOf(limit, defaultSeconds);
  return withCadence(cadence, async (sleep, everyMs) => {
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
      await sleep(Math.max(1, Math.min(everyMs, until - Date.now())));
    }
  });
}
