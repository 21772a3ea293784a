/**
 * Every activity of runas-migrate, built from its dependencies (`createActivities({ kube,
 * client, log })`), so tests can hand it a client pointed at the test bed.
 */
import type { Client } from '@temporalio/client';
import type { Kube } from '../src/kube.js';
import { keepAlive } from './failures.js';
import { createLockActivities } from './lock.js';
import { createMigrationActivities } from './migration.js';
import { createPolicyActivities } from './policy.js';
import { createRunActivities } from './runs.js';

/** What the activities need. */
export interface ActivityDeps {
  kube: Kube;
  client: Client;
  log?: (message: string) => void;
  /** Namespace of the protected relaxation records: the worker's own. */
  recordsNamespace?: string;
  /** Temporal namespace the worker serves. */
  temporalNamespace?: string;
}

/** Builds every activity the worker registers. */
export function createActivities(deps: ActivityDeps) {
  const activities = {
    ...createPolicyActivities({
      kube: deps.kube,
      ...(deps.log ? { log: deps.log } : {}),
      ...(deps.recordsNamespace ? { recordsNamespace: deps.recordsNamespace } : {}),
      ...(deps.temporalNamespace ? { temporalNamespace: deps.temporalNamespace } : {}),
    }),
    ...createRunActivities({ client: deps.client }),
    ...createLockActivities({ kube: deps.kube, client: deps.client, ...(deps.log ? { log: deps.log } : {}) }),
    ...createMigrationActivities({ kube: deps.kube, ...(deps.log ? { log: deps.log } : {}) }),
  };
  for (const name of Object.keys(activities) as (keyof typeof activities)[]) {
    (activities as Record<string, unknown>)[name] = keepAlive(
      activities[name] as (...args: unknown[]) => Promise<unknown>,
    );
  }
  return activities;
}

/** All activities, for `proxyActivities<Activities>()` in workflows. */
export type Activities = ReturnType<typeof createActivities>;
