/**
 * `bundle-workflows.ts <out file>`: bundles the workflows for the worker (run as a child
 * process by {@link workflowBundlePath}).
 */
import { writeFileSync } from 'node:fs';
import { bundleWorkflowCode, DefaultLogger } from '@temporalio/worker';
import { workflowsPath } from './workflow-bundle.js';

const out = process.argv[2];
if (!out) throw new Error('usage: bundle-workflows.ts <out file>');
const { code } = await bundleWorkflowCode({
  workflowsPath: workflowsPath(),
  logger: new DefaultLogger('WARN'),
});
writeFileSync(out, code);
