/**
 * A followed run, shown live: on a terminal one view redrawn in place (log-update); piped, one
 * timestamped line per event ({@link statusEvents}), so logs and scripts see what happened once.
 */
import { createLogUpdate } from 'log-update';
import type { MigrationStatus } from '../workflows/messages.js';
import { renderStatus, statusEvents } from './status-view.js';

/** Shows the statuses of one run. */
export interface LiveStatus {
  /** Shows a status: redraws the view, or prints the events since the last one. */
  show(s: MigrationStatus): void;
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
      show: (s) => view(renderStatus(s, workflowId)),
      note: (line) => view.persist(`${line}\n`),
      done: () => view.done(),
    };
  }
  let last: MigrationStatus | undefined;
  return {
    show(s) {
      for (const e of statusEvents(last, s)) out.write(`${new Date().toISOString()} ${e}\n`);
      last = s;
    },
    note: (line) => out.write(`${line}\n`),
    done: () => undefined,
  };
}
