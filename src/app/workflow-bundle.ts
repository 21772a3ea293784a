/**
 * The worker's workflow code, bundled at build time (`npm run build` writes
 * `dist/workflow-bundle.js`, as Temporal's production sample does): a worker then starts in
 * about a second, never runs webpack, and needs no writable folder.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project folder (from src/app or from its compiled copy in dist/src/app). */
export const projectRoot = (() => {
  let dir = fileURLToPath(new URL('.', import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return dir;
})();

/** Where `npm run build` writes the workflow bundle. */
export const builtWorkflowBundle = join(projectRoot, 'dist', 'workflow-bundle.js');

/**
 * Path of the built workflow bundle.
 *
 * @throws when it was not built, naming the command that builds it.
 */
export function workflowBundlePath(): string {
  if (!existsSync(builtWorkflowBundle))
    throw new Error(`no workflow bundle at ${builtWorkflowBundle}: run "npm run build" first`);
  return builtWorkflowBundle;
}
