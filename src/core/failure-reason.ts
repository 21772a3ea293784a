/**
 * The operator-facing reason of a Temporal failure (pure: used by the workflow and the CLI).
 */
import { ActivityFailure, ChildWorkflowFailure } from '@temporalio/common';

/** The innermost cause's message: an activity's or child's failure only wraps the reason. */
export function reasonOf(err: unknown): string {
  let e: unknown = err;
  while ((e instanceof ActivityFailure || e instanceof ChildWorkflowFailure) && e.cause) e = e.cause;
  return e instanceof Error ? e.message : String(e);
}
