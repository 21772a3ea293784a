/**
 * `node dist/src/app/bundle-workflows.js <out file> [<traced out file>]`: bundles the compiled
 * workflows for the worker, and a second time with OpenTelemetry's workflow interceptors for a
 * worker that exports traces. The last step of `npm run build`.
 */
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode, DefaultLogger } from '@temporalio/worker';

const [out, tracedOut] = process.argv.slice(2);
if (!out) throw new Error('usage: bundle-workflows.js <out file> [<traced out file>]');
const workflowsPath = fileURLToPath(new URL('../workflows/index.js', import.meta.url));
const logger = new DefaultLogger('WARN');
writeFileSync(out, (await bundleWorkflowCode({ workflowsPath, logger })).code);
if (tracedOut) {
  const tracing = createRequire(import.meta.url).resolve(
    '@temporalio/interceptors-opentelemetry/lib/workflow-interceptors',
  );
  const { code } = await bundleWorkflowCode({ workflowsPath, logger, workflowInterceptorModules: [tracing] });
  writeFileSync(tracedOut, code);
}
