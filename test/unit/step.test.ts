import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { runInStep, unlessCancelled } from '../../src/services/step.js';

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

  it('rejects with the cancellation as soon as it arrives, while the call still runs', async () => {
    const { controller, ctx } = step();
    const never = new Promise<never>(() => undefined);
    const waiting = runInStep(ctx, () => unlessCancelled(never));
    controller.abort(new Error('cancelled by the run'));
    await expect(waiting).rejects.toThrow('cancelled by the run');
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });
});
