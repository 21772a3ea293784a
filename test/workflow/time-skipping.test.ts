/**
 * Time skipping works offline: the Java test server from Maven Central, started by the SDK
 * through an existing-path wrapper, runs a workflow that sleeps 30 days in seconds.
 */
import { fileURLToPath } from 'node:url';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import type { sleepThirtyDays } from '../support/probe-workflows.js';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';

let env: TestWorkflowEnvironment;

beforeAll(async () => {
  env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: inject('timeSkippingServer') } },
  });
});

afterAll(async () => {
  await env?.teardown();
});

describe('time-skipping test server', () => {
  it('completes a 30-day sleep within seconds', async () => {
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: 'time-skipping',
      workflowsPath: fileURLToPath(new URL('../support/probe-workflows.ts', import.meta.url)),
    });
    const result = await worker.runUntil(
      env.client.workflow.execute<typeof sleepThirtyDays>('sleepThirtyDays', {
        taskQueue: 'time-skipping',
        workflowId: 'sleep-30-days',
      }),
    );
    // the workflow's own clock moved 30 days while the test ran for seconds
    expect(result).toBe('slept 30 days');
  });
});
