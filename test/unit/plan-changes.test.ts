import { describe, expect, it } from 'vitest';
import { planChanges } from '../../src/core/plan-changes.js';
import type { MigrationPlan } from '../../src/core/plan.js';

const db = (statefulSet: string, replicas: number, image = 'pg:15') => ({
  statefulSet,
  container: 'postgres',
  image,
  replicas,
  currentIds: { runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, supplementalGroups: [] },
  jobs: Array.from({ length: replicas }, (_, ordinal) => ({
    name: `job-${statefulSet}-${ordinal}`,
    statefulSet,
    ordinal,
    image,
    volumes: [
      { volume: 'data', claimName: `data-${statefulSet}-${ordinal}`, mountPath: '/var/lib/postgresql' },
    ],
  })),
});
const plan = (...databases: ReturnType<typeof db>[]) => ({ databases }) as unknown as MigrationPlan;

describe('planChanges', () => {
  it('finds nothing when the approved plan still holds, whatever the template IDs now are', () => {
    const now = db('pg', 2);
    now.currentIds.runAsUser = 5000;
    expect(planChanges(plan(db('pg', 2)), plan(now))).toEqual([]);
  });

  it('names every change that matters to the Jobs', () => {
    const moved = db('ts', 1);
    moved.jobs[0]!.volumes[0]!.mountPath = '/data';
    expect(
      planChanges(
        plan(db('pg', 2), db('ts', 1), db('old', 1)),
        plan(db('pg', 3, 'pg:16'), moved, db('new', 1)),
      ),
    ).toEqual([
      'pg: replicas 2 → 3',
      'pg: image pg:15 → pg:16',
      'pg: new Job job-pg-2 (data-pg-2@/var/lib/postgresql)',
      'ts: Job job-ts-0 volumes data-ts-0@/var/lib/postgresql → data-ts-0@/data',
      'StatefulSet old is no longer planned',
      'StatefulSet new is newly planned',
    ]);
  });
});
