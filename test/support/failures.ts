/**
 * Awaits a promise that must fail with an `ApplicationFailure`, and returns the failure.
 */
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { TypedFailure } from '../../src/core/failures.js';

/**
 * The `ApplicationFailure` a promise rejects with (directly, or as the cause of a failed
 * workflow's result); throws when it resolves or fails otherwise.
 */
export async function failureOf(p: Promise<unknown>): Promise<ApplicationFailure> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ApplicationFailure) return err;
    if (err instanceof WorkflowFailedError && err.cause instanceof ApplicationFailure) return err.cause;
    throw err;
  }
  throw new Error('expected a failure');
}

/**
 * The `TypedFailure` a service call rejects with (services throw these; the activity adapter
 * turns them into `ApplicationFailure`s); throws when it resolves or fails otherwise.
 */
export async function typedFailureOf(p: Promise<unknown>): Promise<TypedFailure> {
  try {
    await p;
  } catch (err) {
    if (err instanceof TypedFailure) return err;
    throw err;
  }
  throw new Error('expected a failure');
}
