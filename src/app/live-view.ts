/**
 * A followed run, shown live: on a terminal one view redrawn in place (log-update); piped, one
 * timestamped line per event ({@link statusEvents}), so logs and scripts see what happened once.
 */
import { createLogUpdate } from 'log-update';
import { describeJobProgress, type JobProgress } from '../core/job.js';
import type { MigrationStatus } from '../workflows/messages.js';
import { renderStatus, statusEvents } from './status-view.js';

/** Shows the statuses of one run. */
export interface LiveStatus {
  /**
   * Shows a status: redraws the view (with where each running Job is), or prints the events
   * since the last one.
   */
  show(s: MigrationStatus, jobs?: Record<string, JobProgress>): void;
  /** Prints a line of the caller's own, kept above the view. */
  note(line: string): void;
  /** Leaves the last view on screen; call before printing anything else. */
  done(): void;
}

/** A live view of run `workflowId` on `out` (a terminal or not). */
export function liveStatus(workflowId: string, out: NodeJS.WriteStream = process.stdout): LiveStatus {
  if (out.isTTY) {
    const view = createLogUpdate(out, { showCursor: true });
    return {
      show: (s, jobs) => view(renderStatus(s, workflowId, jobs)),
      note: (line) => view.persist(`${line}\n`),
      done: () => view.done(),
    };
  }
  let last: MigrationStatus | undefined;
  const lastStage = new Map<string, string>();
  return {
    show(s, jobs = {}) {
      const events = statusEvents(last, s);
      for (const [job, p] of Object.entries(jobs)) {
        const stage = `${p.volume}/${p.stage}`;
        if (lastStage.get(job) === stage) continue;
        lastStage.set(job, stage);
        events.push(`job ${job}: ${describeJobProgress(p)}`);
      }
      for (const e of events) out.write(`${new Date().toISOString()} ${e}\n`);
      last = s;
    },
    note: (line) => out.write(`${line}\n`),
    done: () => undefined,
  };
}
