/**
 * Histories of real runs and fleets, committed under test/histories/, replayed against today's
 * workflow code: a change that would break an open run (a non-deterministic change not behind
 * `patched()`) fails the build. Refresh the runs' histories with RUNAS_MIGRATE_RECORD_HISTORIES=1
 * only when a change is meant to be incompatible and no run of the old code can still be open.
 * The `fleet-*` histories were recorded once, by hand, from fleets of the stand-in runs of
 * test/support/fleet-workflows.ts on the time-skipping server; the `fleet-unpatched-*` ones with
 * the fleet code from before `fleet-cancel-stops` (commit 78a247f): cancelled fleets that went on
 * and failed. Those cannot be recorded again: never refresh them.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { historyFromJSON } from '../support/histories.js';
import { Worker } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';

const dir = fileURLToPath(new URL('../histories', import.meta.url));
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

describe('replay of recorded histories', () => {
  it('has histories to replay', () => {
    expect(files.length).toBeGreaterThanOrEqual(5);
  });

  it('replays every one without a non-determinism error', { timeout: 120_000 }, async () => {
    const results: { workflowId: string; error?: unknown }[] = [];
    for await (const r of Worker.runReplayHistories(
      { workflowsPath: fileURLToPath(new URL('../../src/workflows/index.ts', import.meta.url)) },
      files.map((f) => ({
        workflowId: f,
        history: historyFromJSON(JSON.parse(readFileSync(join(dir, f), 'utf8'))),
      })),
    ))
      results.push(r);
    expect(
      results.map((r) => [
        r.workflowId,
        r.error ? (r.error instanceof Error ? r.error.message : JSON.stringify(r.error)) : 'ok',
      ]),
    ).toEqual(files.map((f) => [f, 'ok']));
  });
});
