import { describe, expect, it } from 'vitest';
import { renderFleet } from '../../src/app/status-view.js';
import { checkClusterName } from '../../src/core/fleet.js';
import { InvalidInputError } from '../../src/core/input.js';
import type { FleetStatus, FleetTargetStatus } from '../../src/workflows/fleet-messages.js';

const target = (id: string, over: Partial<FleetTargetStatus>): FleetTargetStatus => ({
  id,
  namespace: id.split('/').pop()!,
  cluster: id.includes('/') ? id.split('/')[0]! : null,
  workflowId: `runas-migrate-${id.replace('/', '.')}`,
  taskQueue: 'runas-migrate',
  wave: 0,
  state: 'pending',
  endState: null,
  windowSeconds: null,
  message: null,
  startedAt: null,
  finishedAt: null,
  ...over,
});

const fleet = (over: Partial<FleetStatus>): FleetStatus => ({
  name: 'q4',
  phase: 'running',
  wave: 0,
  waves: 3,
  canary: true,
  failureBudget: 1,
  failures: 0,
  gates: [],
  targets: [],
  reason: null,
  continuedAsNew: 0,
  startedAt: '2026-12-02T07:00:00Z',
  ...over,
});

describe('the fleet view', () => {
  it('counts the targets by state, shows each with its window, and the command a waiting gate needs', () => {
    const view = renderFleet(
      fleet({
        phase: 'waiting-for-approval',
        wave: 1,
        gates: [
          { gate: 'canary', required: true, state: 'approved', by: 'ops' },
          { gate: 'wave-2', required: true, state: 'waiting' },
        ],
        targets: [
          target('itrs-a', { state: 'succeeded', endState: 'completed', windowSeconds: 1.234 }),
          target('east/itrs-b', { wave: 1, state: 'pending' }),
          target('east/itrs-c', { wave: 2, state: 'pending' }),
        ],
        continuedAsNew: 2,
      }),
    );
    const [head] = view.split('\n');
    expect(head).toBe(
      'fleet q4 — waiting-for-approval; wave 2 of 3 (wave 1 is the canary); 1 succeeded, 2 pending; failures 0 (budget 1); continued as new 2×',
    );
    expect(view).toContain('waiting for: runas-migrate approve --fleet q4 --gate wave-2');
    expect(view).not.toContain('--gate canary');
    const row = view.split('\n').find((l) => l.includes('itrs-a'))!;
    expect(row).toMatch(/│ 1\s+│ itrs-a\s+│ succeeded\s+│ completed\s+│ 1\.2 s/);
    expect(view.split('\n').find((l) => l.includes('east/itrs-c'))).toMatch(
      /│ 3\s+│ east\/itrs-c\s+│ pending\s+│ -\s+│ -/,
    );
  });

  it('says why a fleet stopped, and keeps a long message to one line', () => {
    const view = renderFleet(
      fleet({
        phase: 'stopped',
        failures: 2,
        reason: 'failure budget 1 spent: 2 runs failed',
        targets: [
          target('itrs-a', { state: 'failed', message: 'x'.repeat(200) }),
          target('itrs-b', { state: 'skipped' }),
        ],
      }),
    );
    expect(view).toContain('reason: failure budget 1 spent: 2 runs failed');
    expect(view).toContain('1 failed, 1 skipped; failures 2 (budget 1)');
    expect(view).toContain('x'.repeat(80));
    expect(view).not.toContain('x'.repeat(81));
    expect(view).not.toContain('waiting for:');
  });
});

describe('the fleet view with maxOpenWindows', () => {
  it('names the targets holding a turn to relax and those waiting for one', () => {
    const targets = [
      target('itrs-a', { state: 'running' }),
      target('east/itrs-b', { state: 'running' }),
      target('east/itrs-c', { state: 'running' }),
    ];
    const view = renderFleet(
      fleet({
        targets,
        windowSlots: { max: 1, held: [targets[1]!.workflowId], waiting: [targets[2]!.workflowId] },
      }),
    );
    expect(view).toContain(
      'relaxed at once: at most 1 (maxOpenWindows); turn held by east/itrs-b; waiting for a turn: east/itrs-c',
    );
    expect(renderFleet(fleet({ targets }))).not.toContain('relaxed at once');
  });
});

describe("a worker's --cluster", () => {
  it('is a name a fleet can route to', () => {
    expect(checkClusterName('prod-eu')).toBe('prod-eu');
  });

  it.each([
    ['prod.eu', 'lowercase letters, digits and "-"'],
    ['Prod', 'lowercase letters'],
    ['-eu', 'starting and ending alphanumeric'],
    ['e'.repeat(41), 'at most 40 characters'],
  ])('refuses %s, naming the flag and the fix', (name, fix) => {
    expect(() => checkClusterName(name)).toThrow(InvalidInputError);
    expect(() => checkClusterName(name)).toThrow(`--cluster "${name}"`);
    expect(() => checkClusterName(name)).toThrow(fix);
  });
});
