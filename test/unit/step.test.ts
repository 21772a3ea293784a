import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { allSettledInOrder, runInStep, unlessCancelled } from '../../src/services/step.js';

describe('unlessCancelled', () => {
  const step = () => {
    const controller = new AbortController();
    return { controller, ctx: { progress: () => undefined, cancelled: controller.signal } };
  };

  it("leaves no listener on the step's signal once each awaited call settles", async () => {
    const { controller, ctx } = step();
    await runInStep(ctx, async () => {
      for (let i = 0; i < 50; i++) await unlessCancelled(Promise.resolve(i));
      await expect(unlessCancelled(Promise.reject(new Error('failed')))).rejects.toThrow('failed');
    });
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });

  it('takes dozens of calls in flight at once without a listener-leak warning', async () => {
    const { controller, ctx } = step();
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    try {
      await runInStep(ctx, () =>
        allSettledInOrder(
          Array.from({ length: 30 }, (_, i) => unlessCancelled(new Promise((r) => setTimeout(r, 5, i)))),
        ),
      );
      // Warnings are emitted on the next tick.
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings.map((w) => w.name)).not.toContain('MaxListenersExceededWarning');
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });

  it('rejects with the cancellation as soon as it arrives, while the call still runs', async () => {
    const { controller, ctx } = step();
    const never = new Promise<never>(() => undefined);
    const waiting = runInStep(ctx, () => unlessCancelled(never));
    controller.abort(new Error('cancelled by the run'));
    await expect(waiting).rejects.toThrow('cancelled by the run');
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });
});

describe('allSettledInOrder', () => {
  const after = <T>(ms: number, value: T, fail = false) =>
    new Promise<T>((resolve, reject) =>
      setTimeout(() => (fail ? reject(new Error(String(value))) : resolve(value)), ms),
    );

  it('returns the values in the order of the calls, not of their answers', async () => {
    await expect(allSettledInOrder([after(30, 'a'), after(1, 'b'), after(10, 'c')])).resolves.toEqual([
      'a',
      'b',
      'c',
    ]);
  });

  it('throws only once every call has settled, and the first failure in order', async () => {
    const settled: string[] = [];
    const call = <T>(p: Promise<T>, name: string) => p.finally(() => settled.push(name));
    const result = allSettledInOrder([
      call(after(20, 'slow write'), 'slow write'),
      call(after(10, 'first refusal', true), 'first refusal'),
      call(after(1, 'second refusal', true), 'second refusal'),
    ]);
    await expect(result).rejects.toThrow('first refusal');
    // A write still in flight when the step fails could land after its retry or compensation.
    expect(settled).toEqual(['second refusal', 'first refusal', 'slow write']);
  });
});
