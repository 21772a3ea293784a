/**
 * The `runas-migrate` command as an operator types it, against the test bed.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { bed } from './bed.js';

const exec = promisify(execFile);
const cli = fileURLToPath(new URL('../../bin/runas-migrate.js', import.meta.url));

/** What a command printed and how it exited. */
export interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** Settles a command's promise into its outcome, a non-zero exit included. */
export function outcome(p: Promise<{ stdout: string; stderr: string }>): Promise<Outcome> {
  return p.then(
    (r) => ({ code: 0, ...r }),
    (e: Outcome) => ({ code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }),
  );
}

/** Runs `runas-migrate …` with the bed's KUBECONFIG and TEMPORAL_ADDRESS (`env` overrides them). */
export function runasMigrate(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<Outcome> {
  return outcome(
    exec(process.execPath, [cli, ...args], {
      env: { ...process.env, KUBECONFIG: bed().kubeconfig, TEMPORAL_ADDRESS: bed().temporal.address, ...env },
      timeout: 120_000,
    }),
  );
}
