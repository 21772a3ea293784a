/**
 * Where a run's time goes, from its Temporal history: each step (activity) from scheduled to
 * closed, summed by step type in the order they first ran, and what lies between them.
 */
import type { temporal } from '@temporalio/proto';
import { median } from './worker-process.js';

type History = temporal.api.history.v1.IHistory;

const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) =>
  t ? Number(t.seconds ?? 0) * 1000 + (t.nanos ?? 0) / 1e6 : 0;

/** Seconds per step type (in first-run order), the run's total, and the time outside any step. */
export function stepTimes(history: History): { steps: [string, number][]; total: number; outside: number } {
  const events = history.events ?? [];
  const byType = new Map<string, number>();
  const intervals: [number, number][] = [];
  for (const span of stepTimeline(history)) {
    if (Number.isNaN(span.to)) continue;
    byType.set(span.type, (byType.get(span.type) ?? 0) + (span.to - span.from));
    intervals.push([span.from * 1000, span.to * 1000]);
  }
  const start = ms(events[0]?.eventTime);
  const end = ms(events.at(-1)?.eventTime);
  // Time covered by at least one step (parallel steps overlap).
  intervals.sort((a, b) => a[0] - b[0]);
  let covered = 0;
  let until = -Infinity;
  for (const [a, b] of intervals) {
    if (b <= until) continue;
    covered += b - Math.max(a, until);
    until = b;
  }
  return { steps: [...byType], total: (end - start) / 1000, outside: (end - start - covered) / 1000 };
}

/** One step of a run: its type and summary, from scheduled to closed, in seconds from the run's start. */
export interface StepSpan {
  type: string;
  summary: string;
  from: number;
  to: number;
}

/**
 * Every step of a run in the order it was scheduled, with when it was scheduled and closed: the
 * steps that overlap nothing are the run's critical path.
 */
export function stepTimeline(history: History): StepSpan[] {
  const events = history.events ?? [];
  const start = ms(events[0]?.eventTime);
  const spans = new Map<string, StepSpan>();
  for (const e of events) {
    const at = (ms(e.eventTime) - start) / 1000;
    const a = e.activityTaskScheduledEventAttributes;
    if (a) {
      const data = e.userMetadata?.summary?.data;
      const summary = data ? String(JSON.parse(Buffer.from(data).toString()) as unknown) : '';
      spans.set(String(e.eventId), { type: a.activityType?.name ?? '?', summary, from: at, to: NaN });
      continue;
    }
    const closed =
      e.activityTaskCompletedEventAttributes ??
      e.activityTaskFailedEventAttributes ??
      e.activityTaskTimedOutEventAttributes ??
      e.activityTaskCanceledEventAttributes;
    const span = closed && spans.get(String(closed.scheduledEventId));
    if (span) span.to = at;
  }
  return [...spans.values()];
}

/** The timeline as text lines: from → to, the step, its summary. */
export function renderTimeline(spans: StepSpan[], indent = '    '): string[] {
  return spans.map(
    (s) =>
      `${indent}${s.from.toFixed(2).padStart(6)} → ${s.to.toFixed(2).padStart(6)}  ${s.type.padEnd(24)} ${s.summary}`,
  );
}

/** The breakdown as text lines. */
export function renderStepTimes(t: ReturnType<typeof stepTimes>, indent = '    '): string[] {
  return [
    ...t.steps.map(([type, s]) => `${indent}${type.padEnd(24)} ${s.toFixed(2)} s`),
    `${indent}${'(between steps)'.padEnd(24)} ${t.outside.toFixed(2)} s of ${t.total.toFixed(2)} s`,
  ];
}

/** Where one security window's time went: waiting for a worker, in steps, and in the workflow. */
export interface WindowTimes {
  /** From the relax step's end to the restore step's end. */
  total: number;
  /** Steps in the window, scheduled to started (waiting in the task queue for a worker slot). */
  queued: number;
  /** Steps in the window, started to closed. */
  running: [string, number][];
  /** Workflow tasks in the window, scheduled to completed. */
  workflowTasks: number;
}

/**
 * The first window of a run, from its history: the relaxPolicies step's close to the following
 * restorePolicies step's close, split by what the run was doing.
 */
export function windowTimes(history: History): WindowTimes | undefined {
  const events = history.events ?? [];
  const scheduled = new Map<string, { type: string; at: number }>();
  const started = new Map<string, number>();
  let opened: number | undefined;
  let closed: number | undefined;
  let queued = 0;
  let workflowTasks = 0;
  let taskScheduled: number | undefined;
  const running = new Map<string, number>();
  for (const e of events) {
    const at = ms(e.eventTime);
    const inWindow = opened !== undefined && closed === undefined;
    if (e.workflowTaskScheduledEventAttributes) taskScheduled = at;
    if (e.workflowTaskCompletedEventAttributes && inWindow && taskScheduled !== undefined)
      workflowTasks += (at - Math.max(taskScheduled, opened!)) / 1000;
    if (e.activityTaskScheduledEventAttributes) {
      scheduled.set(String(e.eventId), {
        type: e.activityTaskScheduledEventAttributes.activityType?.name ?? '?',
        at,
      });
      continue;
    }
    if (e.activityTaskStartedEventAttributes) {
      const s = scheduled.get(String(e.activityTaskStartedEventAttributes.scheduledEventId));
      started.set(String(e.activityTaskStartedEventAttributes.scheduledEventId), at);
      if (s && inWindow) queued += (at - Math.max(s.at, opened!)) / 1000;
      continue;
    }
    const done = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes;
    if (!done) continue;
    const id = String(done.scheduledEventId);
    const s = scheduled.get(id);
    if (!s) continue;
    if (s.type === 'relaxPolicies' && opened === undefined) {
      opened = at;
      continue;
    }
    if (!inWindow) continue;
    const from = Math.max(started.get(id) ?? s.at, opened!);
    running.set(s.type, (running.get(s.type) ?? 0) + (at - from) / 1000);
    if (s.type === 'restorePolicies') closed = at;
  }
  if (opened === undefined || closed === undefined) return undefined;
  return { total: (closed - opened) / 1000, queued, running: [...running], workflowTasks };
}

/** The medians of window breakdowns, as one line. */
export function renderWindowTimes(ws: WindowTimes[]): string {
  if (!ws.length) return 'no window';
  const m = (f: (w: WindowTimes) => number) => median(ws.map(f)).toFixed(2);
  const types = [...new Set(ws.flatMap((w) => w.running.map(([t]) => t)))];
  const running = types.map((t) => `${t} ${m((w) => w.running.find(([x]) => x === t)?.[1] ?? 0)}`).join(', ');
  return `window ${m((w) => w.total)} s: steps waiting for a worker ${m((w) => w.queued)} s; steps running: ${running}; workflow tasks ${m((w) => w.workflowTasks)} s (medians)`;
}
