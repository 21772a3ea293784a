/**
 * What a service call knows about the step it runs in: where to report progress, whether it was
 * cancelled, which Temporal namespace it serves. The activities set it (src/activities/adapter.ts);
 * called directly (the CLI, tests) a service runs with none, and these helpers do nothing special.
 * Services therefore never import the Temporal activity API.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { setMaxListeners } from 'node:events';
import { FailureType, TypedFailure } from '../core/failures.js';

/** The step a service call runs in. */
export interface StepContext {
  /** Reports progress (an activity heartbeats it; a retry sees the last one). */
  progress(details: unknown): void;
  /** Aborted when the step is cancelled; its reason is what to throw. */
  readonly cancelled: AbortSignal;
  /** The Temporal namespace of the run. */
  readonly temporalNamespace?: string;
}

const current = new AsyncLocalStorage<StepContext>();

/** Runs `fn` as a step: the helpers below see `ctx` in everything it awaits. */
export function runInStep<T>(ctx: StepContext, fn: () => Promise<T>): Promise<T> {
  // One listener per call in flight (unlessCancelled removes each when its call settles): a
  // step with its calls side by side has dozens at once, which is not a leak.
  setMaxListeners(0, ctx.cancelled);
  return current.run(ctx, fn);
}

/** The current step, if the call runs in one. */
export function currentStep(): StepContext | undefined {
  return current.getStore();
}

/** Reports progress of the current step; a no-op outside one. */
export function progress(details: unknown): void {
  current.getStore()?.progress(details);
}

/** Throws the step's cancellation once it has arrived. */
export function throwIfCancelled(): void {
  const signal = current.getStore()?.cancelled;
  if (signal?.aborted) throw signal.reason;
}

/** Resolves after `ms`; in a step, rejects with its cancellation as soon as it arrives. */
export function pause(ms: number): Promise<void> {
  const signal = current.getStore()?.cancelled;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Awaits `p`, or rejects with the step's cancellation as soon as it arrives. Its listener goes
 * once `p` settles: a wait calls this at every poll, and the step's signal lives as long as the step.
 */
export function unlessCancelled<T>(p: Promise<T>): Promise<T> {
  const signal = current.getStore()?.cancelled;
  if (!signal) return p;
  throwIfCancelled();
  let onAbort!: () => void;
  const cancelled = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([p, cancelled]).finally(() => signal.removeEventListener('abort', onAbort));
}

/**
 * Awaits independent cluster calls side by side, like `Promise.all`, but returns or throws only
 * once every one has settled (the first failure, in the given order): a step that fails has none
 * of its writes still in flight when it is retried or compensated.
 */
export async function allSettledInOrder<T extends readonly unknown[] | []>(
  calls: T,
): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(calls as readonly unknown[]);
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as {
    -readonly [K in keyof T]: Awaited<T[K]>;
  };
}

/**
 * How long a wait may last: an absolute `deadline` (ISO 8601; wins when both are given), which
 * a retried step keeps, or `timeoutSeconds` counted from the start of this attempt.
 */
export type WaitLimit =
  { deadline: string; timeoutSeconds?: number } | { deadline?: string; timeoutSeconds: number };

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
      throw TypedFailure.nonRetryable(
        `deadline "${limit.deadline}" is not an ISO 8601 time`,
        FailureType.InvalidWaitLimit,
      );
    return at;
  }
  const seconds = limit.timeoutSeconds ?? defaultSeconds;
  if (seconds === undefined)
    throw TypedFailure.nonRetryable(
      'a wait needs a deadline or timeoutSeconds',
      FailureType.InvalidWaitLimit,
    );
  return Date.now() + seconds * 1000;
}
