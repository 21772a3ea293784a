import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { liveStatus } from '../../src/app/live-view.js';
import { renderStatus, statusEvents } from '../../src/app/status-view.js';
import type { JobProgress } from '../../src/core/job.js';
import { initialStatus, type JobStatus, type MigrationStatus } from '../../src/workflows/messages.js';

const start: MigrationStatus = initialStatus('2026-12-01T10:00:00.000Z');
const job = (state: JobStatus['state'], extra: Partial<JobStatus> = {}): JobStatus => ({
  name: 'runas-migrate-timescale-0',
  statefulSet: 'timescale',
  ordinal: 0,
  state,
  attempts: 1,
  ...extra,
});

/** A run's statuses as a follower polls them: most polls see nothing new. */
const polls: MigrationStatus[] = [
  start,
  {
    ...start,
    phase: 'planning',
    namespace: 'itrs',
    gates: [{ gate: 'relax', required: true, state: 'pending' }],
  },
  {
    ...start,
    phase: 'planning',
    namespace: 'itrs',
    gates: [{ gate: 'relax', required: true, state: 'pending' }],
  },
  {
    ...start,
    phase: 'scaling-down',
    namespace: 'itrs',
    gates: [{ gate: 'relax', required: true, state: 'waiting' }],
  },
  {
    ...start,
    phase: 'migrating-ownership',
    namespace: 'itrs',
    gates: [{ gate: 'relax', required: true, state: 'approved', by: 'alice' }],
    windows: [{ openedAt: '2026-12-01T10:00:05.000Z' }],
    jobs: [job('created')],
  },
  {
    ...start,
    phase: 'migrating-ownership',
    namespace: 'itrs',
    gates: [{ gate: 'relax', required: true, state: 'approved', by: 'alice' }],
    windows: [{ openedAt: '2026-12-01T10:00:05.000Z' }],
    jobs: [job('admitted', { pod: 'runas-migrate-timescale-0-abcde' })],
  },
  {
    ...start,
    phase: 'completed',
    namespace: 'itrs',
    gates: [{ gate: 'relax', required: true, state: 'approved', by: 'alice' }],
    windows: [
      {
        openedAt: '2026-12-01T10:00:05.000Z',
        closedAt: '2026-12-01T10:00:07.500Z',
        closedBecause: 'Jobs done',
      },
    ],
    jobs: [
      job('succeeded', {
        pod: 'runas-migrate-timescale-0-abcde',
        summary: { scanned: 40, changed: 38, seconds: 0.4 } as JobStatus['summary'],
      }),
    ],
    compensations: [],
    endState: 'completed',
  },
];

describe('statusEvents: one line per event', () => {
  it('reports each change once, in order, and nothing for a poll that saw nothing new', () => {
    const lines: string[] = [];
    let prev: MigrationStatus | undefined;
    for (const s of polls) {
      lines.push(...statusEvents(prev, s));
      prev = s;
    }
    expect(lines).toEqual([
      'phase validating',
      'phase planning (itrs)',
      'gate relax: pending',
      'phase scaling-down (itrs)',
      'gate relax: waiting',
      'phase migrating-ownership (itrs)',
      'gate relax: approved by alice',
      'window #1 opened 2026-12-01T10:00:05.000Z: policies relaxed',
      'job runas-migrate-timescale-0: created',
      'job runas-migrate-timescale-0: admitted (pod runas-migrate-timescale-0-abcde)',
      'phase completed (itrs)',
      'window #1 closed after 2.5 s (Jobs done)',
      'job runas-migrate-timescale-0: succeeded: 38 of 40 entries changed in 0.4 s',
      'ended: completed',
    ]);
    expect(statusEvents(polls.at(-1), polls.at(-1)!)).toEqual([]);
  });

  it('reports compensations, failures, alarms and what is left to do as they are added', () => {
    const failed: MigrationStatus = {
      ...start,
      phase: 'failed',
      compensations: ['re-enforce the policies'],
      compensationFailures: ['scale up: timed out'],
      alarms: ['record tampered'],
      error: 'Job failed',
      endState: 'stopped-scaled-down',
      leftToDo: ['scale timescale back to 2'],
    };
    expect(statusEvents({ ...start, phase: 'failed' }, failed)).toEqual([
      'compensation done: re-enforce the policies',
      'compensation FAILED: scale up: timed out',
      'ALARM: record tampered',
      'error: Job failed',
      'ended: stopped-scaled-down',
      'LEFT TO DO: scale timescale back to 2',
    ]);
  });
});

describe('liveStatus', () => {
  const capture = (isTTY: boolean) => {
    const out = Object.assign(new PassThrough(), { isTTY, columns: 120, rows: 40 });
    let text = '';
    out.on('data', (d: Buffer) => (text += d.toString()));
    return { out: out as unknown as NodeJS.WriteStream, text: () => text };
  };

  it('piped: prints one timestamped line per event, never a table', () => {
    const c = capture(false);
    const live = liveStatus('runas-migrate-itrs', c.out);
    for (const s of polls) live.show(s);
    live.done();
    const lines = c.text().trimEnd().split('\n');
    expect(lines).toHaveLength(14);
    for (const l of lines) expect(l).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z \S/);
    expect(c.text()).not.toContain('┌');
  });

  it('shows where each running Job is: a line per volume stage piped, in the Job table on a terminal', () => {
    const running = polls[5]!;
    const at = (stage: JobProgress['stage'], volume: number): Record<string, JobProgress> => ({
      'runas-migrate-timescale-0': {
        volume,
        volumes: 4,
        path: '/var/lib/postgresql/wal',
        stage,
        toChange: stage === 'counting' ? null : 120,
        scanned: 3000,
        changed: 2990,
      },
    });
    const piped = capture(false);
    const live = liveStatus('runas-migrate-itrs', piped.out);
    live.show(running, at('counting', 2));
    live.show(running, at('counting', 2));
    live.show(running, at('changing', 2));
    const lines = piped.text().trimEnd().split('\n');
    expect(lines.filter((l) => l.includes('volume 2/4'))).toHaveLength(2);
    expect(lines.at(-1)).toMatch(
      /job runas-migrate-timescale-0: volume 2\/4 \/var\/lib\/postgresql\/wal: changing 120 entries; 3000 scanned, 2990 changed so far$/,
    );
    const view = renderStatus(running, 'runas-migrate-itrs', at('changing', 2));
    expect(view).toContain('3000…');
    expect(view).toContain('volume 2/4');
  });

  it('on a terminal: redraws one view in place instead of clearing the screen', () => {
    const c = capture(true);
    const live = liveStatus('runas-migrate-itrs', c.out);
    for (const s of polls) live.show(s);
    live.note('>> approving gate "relax"');
    live.show(polls.at(-1)!);
    live.done();
    const text = c.text();
    expect(text).not.toContain('\x1b[2J');
    // Each redraw erases the previous view's lines (ansi-escapes' eraseLines).
    expect(text).toContain('\x1b[2K');
    expect(text).toContain('>> approving gate "relax"\n');
    expect(text.split('run runas-migrate-itrs — namespace itrs — phase completed').length).toBeGreaterThan(1);
  });
});
