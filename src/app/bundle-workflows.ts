/**
 * `node dist/src/app/bundle-workflows.js <out file>`: bundles the compiled workflows for the
 * worker. The last step of `npm run build`.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode, DefaultLogger } from '@temporalio/worker';

const out = process.argv[2];
if (!out) throw new Error('usage: bundle-workflows.js <out file>');
const { code } = await bundleWorkflowCode({
  workflowsPath: fileURLToPath(new URL('../workflows/index.js', import.meta.url)),
  logger: new DefaultLogger('WARN'),
});
writeFileSync(out, code);
