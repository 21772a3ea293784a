/**
 * Awaits a promise that must fail with an `ApplicationFailure`, and returns the failure.
 */
import { ApplicationFailure } from '@temporalio/common';

/** The `ApplicationFailure` a promise rejects with; throws when it resolves or fails otherwise. */
export async function failureOf(p: Promise<unknown>): Promise<ApplicationFailure> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ApplicationFailure) return err;
    throw err;
  }
  throw new Error('expected a failure');
}
