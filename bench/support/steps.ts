/**
 * Where a run's time goes, from its Temporal history: each step (activity) from scheduled to
 * closed, summed by step type in the order they first ran, and what lies between them.
 */
import type { temporal } from '@temporalio/proto';

type History = temporal.api.history.v1.IHistory;

const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) =>
  t ? Number(t.seconds ?? 0) * 1000 + (t.nanos ?? 0) / 1e6 : 0;

/** Seconds per step type (in first-run order), the run's total, and the time outside any step. */
export function stepTimes(history: History): { steps: [string, number][]; total: number; outside: number } {
  const events = history.events ?? [];
  const scheduled = new Map<string, { type: string; at: number }>();
  const byType = new Map<string, number>();
  const intervals: [number, number][] = [];
  for (const e of events) {
    const at = ms(e.eventTime);
    if (e.activityTaskScheduledEventAttributes) {
      scheduled.set(String(e.eventId), {
        type: e.activityTaskScheduledEventAttributes.activityType?.name ?? '?',
        at,
      });
      continue;
    }
    const closed =
      e.activityTaskCompletedEventAttributes ??
      e.activityTaskFailedEventAttributes ??
      e.activityTaskTimedOutEventAttributes ??
      e.activityTaskCanceledEventAttributes;
    if (!closed) continue;
    const s = scheduled.get(String(closed.scheduledEventId));
    if (!s) continue;
    byType.set(s.type, (byType.get(s.type) ?? 0) + (at - s.at) / 1000);
    intervals.push([s.at, at]);
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

/** The breakdown as text lines. */
export function renderStepTimes(t: ReturnType<typeof stepTimes>, indent = '    '): string[] {
  return [
    ...t.steps.map(([type, s]) => `${indent}${type.padEnd(24)} ${s.toFixed(2)} s`),
    `${indent}${'(between steps)'.padEnd(24)} ${t.outside.toFixed(2)} s of ${t.total.toFixed(2)} s`,
  ];
}
