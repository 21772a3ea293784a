/**
 * The test bed's Temporal dev server runs workflows, and the built `temporal` CLI — the one
 * operators use — starts one, signals it, queries it and prints its history.
 */
import { fileURLToPath } from 'node:url';
import { NativeConnection, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bed, uniqueName } from '../support/bed.js';
import { approveWithCli, temporalCli } from '../support/temporal.js';

const taskQueue = uniqueName('probe');
let worker: Worker;
let running: Promise<void>;
let connection: NativeConnection;

beforeAll(async () => {
  connection = await NativeConnection.connect({ address: bed().temporal.address });
  worker = await Worker.create({
    connection,
    taskQueue,
    workflowsPath: fileURLToPath(new URL('../support/probe-workflows.ts', import.meta.url)),
  });
  running = worker.run();
});

afterAll(async () => {
  worker.shutdown();
  await running;
  await connection.close();
});

describe('temporal CLI against the dev server', () => {
  it('starts, signals, queries and shows a workflow', async () => {
    const workflowId = uniqueName('probe-run');
    const started = await temporalCli([
      'workflow',
      'start',
      '--type',
      'probeApproval',
      '--task-queue',
      taskQueue,
      '--workflow-id',
      workflowId,
      '--input',
      '{"gate":"relax"}',
    ]);
    expect(started).toContain(workflowId);

    const status = JSON.parse(
      await temporalCli(['workflow', 'query', '-w', workflowId, '--type', 'status', '-o', 'json']),
    ) as {
      queryResult: [{ waitingFor: string; approvals: unknown[] }];
    };
    expect(status.queryResult[0].waitingFor).toBe('relax');
    // The CLI prints an empty list as null (Go's encoding).
    expect(status.queryResult[0].approvals ?? []).toEqual([]);

    await approveWithCli(workflowId, { gate: 'relax', by: 'alice' });
    const result = await temporalCli(['workflow', 'result', '-w', workflowId, '-o', 'json']);
    expect(JSON.parse(result)).toMatchObject({ status: 'COMPLETED', result: 'approved relax by alice' });

    const history = await temporalCli(['workflow', 'show', '-w', workflowId]);
    for (const event of [
      'WorkflowExecutionStarted',
      'WorkflowExecutionSignaled',
      'WorkflowExecutionCompleted',
    ]) {
      expect(history).toContain(event);
    }
  });
});
