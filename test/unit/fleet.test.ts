import { describe, expect, it } from 'vitest';
import { mergeInput, parseFleetInput, resolvedFleetInput, wavesOf } from '../../src/core/fleet.js';
import { InvalidInputError } from '../../src/core/input.js';
import { fleetWorkflowId, runWorkflowId } from '../../src/core/names.js';
import type { Client } from '@temporalio/client';
import { startFleet } from '../../src/app/fleets.js';

describe('a fleet input', () => {
  it('gives each target the defaults with its own fields over them, on its cluster', () => {
    const f = parseFleetInput(
      {
        name: 'q4',
        defaults: {
          uid: 5000,
          gid: 5000,
          window: { mode: 'job-duration' },
          job: { nodeSelector: { a: 'b' } },
        },
        targets: [
          { namespace: 'itrs' },
          { namespace: 'itrs', cluster: 'east', input: { uid: 6000, job: { tolerations: [] } } },
        ],
      },
      'runas-migrate',
    );
    expect(f.targets.map((t) => [t.id, t.workflowId, t.taskQueue, t.input.uid, t.input.gid])).toEqual([
      ['itrs', 'runas-migrate-itrs', 'runas-migrate', 5000, 5000],
      ['east/itrs', 'runas-migrate-east.itrs', 'runas-migrate-east', 6000, 5000],
    ]);
    // Objects merge: the target's job fields keep the shared nodeSelector.
    expect(f.targets[1]!.input.job.nodeSelector).toEqual({ a: 'b' });
    expect(f.targets[1]!.input.window.mode).toBe('job-duration');
    expect(f).toMatchObject({ canary: true, waveSize: 5, failureBudget: 0, approvals: 'after-canary' });
  });

  it.each([
    [{ name: 'x', targets: [] }, 'targets: must list at least one target'],
    [{ name: 'Bad_Name', targets: [{ namespace: 'a' }] }, 'name: must be lowercase'],
    [{ name: 'x', targets: [{ namespace: 'a' }], extra: 1 }, '(fleet): unknown field(s) extra'],
    [
      { name: 'x', defaults: { namespace: 'a' }, targets: [{ namespace: 'a' }] },
      'defaults.namespace: each target names its namespace',
    ],
    [
      { name: 'x', targets: [{ namespace: 'a', input: { namespace: 'b' } }] },
      'targets[0].input.namespace: give the namespace as targets[0].namespace',
    ],
    [{ name: 'x', targets: [{ namespace: 'a' }] }, 'targets[0] (a): uid: must be a number (it is missing)'],
    [{ name: 'x', waveSize: 0, targets: [{ namespace: 'a' }] }, 'waveSize: must be at least 1'],
    [
      { name: 'x', maxOpenWindows: 0, targets: [{ namespace: 'a' }] },
      'maxOpenWindows: must be at least 1 (or left out: no limit)',
    ],
    [
      { name: 'x', approvals: 'sometimes', targets: [{ namespace: 'a' }] },
      'approvals must be one of none, after-canary, each-wave, each-run',
    ],
  ])('refuses %j, naming the field: %s', (raw, message) => {
    expect(() => parseFleetInput(raw)).toThrow(InvalidInputError);
    expect(() => parseFleetInput(raw)).toThrow(message);
  });
});

describe('the waves of a fleet', () => {
  it('puts the canary alone first, then waves of waveSize in the listed order', () => {
    expect(wavesOf(6, true, 2)).toEqual([[0], [1, 2], [3, 4], [5]]);
    expect(wavesOf(3, false, 5)).toEqual([[0, 1, 2]]);
    expect(wavesOf(1, true, 5)).toEqual([[0]]);
  });
});

describe('mergeInput', () => {
  it('merges objects key by key and replaces everything else', () => {
    expect(mergeInput({ a: { b: 1, c: [1, 2] }, d: 1 }, { a: { c: [3] }, d: 2 })).toEqual({
      a: { b: 1, c: [3] },
      d: 2,
    });
  });
});

describe('a fleet without a canary', () => {
  it('must say how it is approved: after-canary would leave it without any gate', () => {
    const fleet = {
      name: 'q4',
      defaults: { uid: 5000, gid: 5000 },
      targets: [{ namespace: 'a' }],
      canary: false,
    };
    expect(() => parseFleetInput(fleet, 'runas-migrate')).toThrow(InvalidInputError);
    expect(() => parseFleetInput(fleet, 'runas-migrate')).toThrow(
      'approvals: after-canary (the default) needs canary: true',
    );
    expect(parseFleetInput({ ...fleet, approvals: 'each-wave' }, 'runas-migrate').approvals).toBe(
      'each-wave',
    );
  });
});

describe('the resolved fleet input the workflow is started with', () => {
  const raw = {
    name: 'q4',
    defaults: { uid: 5000, gid: 5000, job: { nodeSelector: { a: 'b' } } },
    waveSize: 3,
    targets: [
      { namespace: 'itrs' },
      { namespace: 'itrs', cluster: 'east', input: { uid: 6000, job: { tolerations: [] } } },
    ],
  };

  it('parses to the same fleet, through JSON as Temporal stores it', () => {
    const fleet = parseFleetInput(raw, 'q');
    const stored = JSON.parse(JSON.stringify(resolvedFleetInput(fleet))) as unknown;
    expect(parseFleetInput(stored, 'q')).toEqual({ ...fleet, defaults: {} });
  });

  it('writes out every default, so a later change of one does not change an open fleet', () => {
    const resolved = resolvedFleetInput(parseFleetInput(raw, 'q'));
    expect(resolved).toMatchObject({
      canary: true,
      waveSize: 3,
      failureBudget: 0,
      approvals: 'after-canary',
    });
    expect(resolved.approvalTimeout).toBe('24h');
    expect(resolved.continueAfterRuns).toBe(200);
    expect(resolved.targets[1]).toMatchObject({
      namespace: 'itrs',
      cluster: 'east',
      input: { uid: 6000, gid: 5000 },
    });
    expect(resolved.targets[0]!.input).not.toHaveProperty('namespace');
    // Each target's run input is whole: nothing is left to the run's own defaults either.
    expect(Object.keys(resolved.targets[0]!.input!).length).toBeGreaterThan(5);
  });
});

describe("a fleet's workflow ID", () => {
  it('is never the workflow ID of a run, whatever the namespace or cluster is called', () => {
    expect(fleetWorkflowId('db')).toBe('runas-migrate-fleet:db');
    // A colon is in no namespace (a DNS label) and no cluster name.
    for (const id of [runWorkflowId('fleet-db'), runWorkflowId('db', 'fleet'), runWorkflowId('fleet.db')])
      expect(id).not.toBe(fleetWorkflowId('db'));
  });
});

describe('a fleet of more than 1000 targets', () => {
  it('is refused before anything is asked of Temporal, saying how to split it', async () => {
    const raw = {
      name: 'big',
      defaults: { uid: 5000, gid: 5000 },
      targets: Array.from({ length: 1001 }, (_, i) => ({ namespace: `ns-${i}` })),
    };
    const nothing = new Proxy({}, { get: () => expect.unreachable('no call to Temporal') }) as Client;
    await expect(startFleet(nothing, raw)).rejects.toThrow(
      /targets: must list at most 1000 targets \(it lists 1001\): split it into several fleets/,
    );
  });
});
