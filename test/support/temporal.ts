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
