/**
 * Where a service call becomes a Temporal activity, in one place for every step: the call runs
 * in a step context (progress heartbeats, cancellation, the run's namespace), it heartbeats on
 * its own while it runs, and whatever it throws becomes an `ApplicationFailure` whose type the
 * workflow branches on.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { TypedFailure } from '../core/failures.js';
import { runInStep } from '../services/step.js';

/** Converts any error into an `ApplicationFailure` (or returns it when it already is one). */
export function toFailure(err: unknown): Error {
  if (err instanceof ApplicationFailure) return err;
  if (err instanceof TypedFailure) {
    return ApplicationFailure.create({
      type: err.type,
      message: err.message,
      nonRetryable: !err.retryable,
      details: err.details,
      cause: err,
    });
  }
  return err instanceof Error ? err : new Error(String(err));
}

function currentContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined; // called directly, outside a worker
  }
}

async function typed<R>(fn: () => Promise<R>): Promise<R> {
  try {
    return await fn();
  } catch (err) {
    throw toFailure(err);
  }
}

/**
 * Makes an activity of a service method. In a worker it heartbeats every third of its heartbeat
 * timeout, repeating the last progress the service reported: every step then has a heartbeat
 * timeout, so a worker that dies in any step is noticed within that timeout instead of the
 * step's whole start-to-close timeout, and a cancellation (abort) reaches short steps too.
 */
export function asActivity<A extends unknown[], R>(
  fn: (...args: A) => Promise<R>,
): (...args: A) => Promise<R> {
  return async (...args: A) => {
    const ctx = currentContext();
    if (!ctx) return typed(() => fn(...args));
    let last: unknown;
    const progress = (details: unknown) => {
      last = details;
      ctx.heartbeat(details);
    };
    const timeout = ctx.info.heartbeatTimeoutMs;
    const timer = timeout ? setInterval(() => ctx.heartbeat(last), Math.max(200, timeout / 3)) : undefined;
    try {
      return await runInStep(
        { progress, cancelled: ctx.cancellationSignal, temporalNamespace: ctx.info.namespace },
        () => typed(() => fn(...args)),
      );
    } finally {
      clearInterval(timer);
    }
  };
}

/** The methods of `service` named in `names`, as activities bound to it. */
export function activitiesOf<S extends object, K extends keyof S & string>(
  service: S,
  names: readonly K[],
): Pick<S, K> {
  const out = {} as Pick<S, K>;
  for (const name of names) {
    const method = service[name] as unknown as (...args: unknown[]) => Promise<unknown>;
    out[name] = asActivity(method.bind(service)) as S[K];
  }
  return out;
}
