/**
 * Activity interceptors that put a real worker into a fault at a chosen step, for the fault
 * matrix: `killAt` SIGKILLs the worker's own process just before or just after a step's real
 * work (so the step's completion is lost and Temporal runs it again elsewhere); `StepHold` keeps
 * a step from completing after its real work, until the run cancels it (abort, cancel).
 */
import type { WorkerInterceptors } from '@temporalio/worker';

/** Where in a step the worker dies: before its work, or after it (result never reported). */
export type KillPoint = `${'before' | 'after'}:${string}`;

/** Interceptors that SIGKILL this process at the first step matching `at`. */
export function killAt(at: KillPoint): WorkerInterceptors {
  const [when, activity] = at.split(':') as ['before' | 'after', string];
  return {
    activity: [
      (ctx) => ({
        inbound: {
          async execute(input, next) {
            if (ctx.info.activityType !== activity) return next(input);
            if (when === 'before') process.kill(process.pid, 'SIGKILL');
            const result = await next(input);
            process.kill(process.pid, 'SIGKILL');
            return result;
          },
        },
      }),
    ],
  };
}

/** Holds one chosen step after its real work until the step is cancelled. */
export class StepHold {
  private target: { activity: string; reached: () => void } | undefined;

  /** Arms the hold for the next run of `activity`; resolves when that step is being held. */
  arm(activity: string): Promise<void> {
    return new Promise((reached) => {
      this.target = { activity, reached };
    });
  }

  /** The interceptors to give the worker. */
  interceptors(): WorkerInterceptors {
    return {
      activity: [
        (ctx) => ({
          inbound: {
            execute: async (input, next) => {
              const result = await next(input);
              const t = this.target;
              if (!t || ctx.info.activityType !== t.activity) return result;
              this.target = undefined;
              t.reached();
              for (;;) {
                ctx.heartbeat();
                await ctx.sleep(200); // rejects with CancelledFailure once the run cancels the step
              }
            },
          },
        }),
      ],
    };
  }
}
