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
 * Where `npm run build` writes the same workflows with OpenTelemetry's workflow interceptors: a
 * bundle's interceptors are fixed when it is made, and a worker without tracing keeps the plain one.
 */
export const builtTracedWorkflowBundle = join(projectRoot, 'dist', 'workflow-bundle-traced.js');

/**
 * Path of the built workflow bundle (the traced one with `traced`).
 *
 * @throws when it was not built, naming the command that builds it.
 */
export function workflowBundlePath(traced = false): string {
  const path = traced ? builtTracedWorkflowBundle : builtWorkflowBundle;
  if (!existsSync(path)) throw new Error(`no workflow bundle at ${path}: run "npm run build" first`);
  return path;
}
