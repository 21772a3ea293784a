/**
 * Helpers for tests that drive the real `temporal` CLI against the test bed's dev server.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { bed } from './bed.js';

const exec = promisify(execFile);

/** Runs the built `temporal` CLI against the bed's server; returns stdout. */
export async function temporalCli(args: readonly string[]): Promise<string> {
  const b = bed();
  const { stdout } = await exec(b.tools.temporal!, [...args, '--address', b.temporal.address], {
    timeout: 60_000,
    maxBuffer: 32 << 20,
  });
  return stdout;
}

/**
 * `temporal workflow start --type migrateOwnership`, the input given inline (`input`), from a
 * file (`inputFile`), or not at all.
 */
export function startMigrationWithCli(
  taskQueue: string,
  workflowId: string,
  input: { input?: unknown; inputFile?: string } = {},
): Promise<string> {
  return temporalCli([
    'workflow',
    'start',
    '--type',
    'migrateOwnership',
    '--task-queue',
    taskQueue,
    '--workflow-id',
    workflowId,
    ...('input' in input ? ['--input', JSON.stringify(input.input)] : []),
    ...(input.inputFile ? ['--input-file', input.inputFile] : []),
  ]);
}

/** `temporal workflow signal --name approve` with the given payload. */
export function approveWithCli(workflowId: string, approval: { gate: string; by?: string }): Promise<string> {
  return temporalCli([
    'workflow',
    'signal',
    '-w',
    workflowId,
    '--name',
    'approve',
    '--input',
    JSON.stringify(approval),
  ]);
}
