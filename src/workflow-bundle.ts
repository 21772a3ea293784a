/**
 * The worker's workflow code, bundled once per version of the sources in a separate process
 * and kept on disk: a worker then starts in about a second, and webpack's memory never becomes
 * the worker's high-water mark.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project folder (from src/ or from its compiled copy in dist/src/). */
const root = (() => {
  let dir = fileURLToPath(new URL('..', import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return dir;
})();

/** Entry module of the workflows. */
export function workflowsPath(): string {
  return join(root, 'workflows', 'index.ts');
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

/** Where bundles are kept: $RUNAS_MIGRATE_CACHE, else ~/.cache/runas-migrate, else the temp folder. */
function cacheDir(): string {
  const base = process.env.RUNAS_MIGRATE_CACHE ?? join(homedir(), '.cache', 'runas-migrate');
  for (const dir of [join(base, 'workflow-bundles'), join(tmpdir(), 'runas-migrate-workflow-bundles')]) {
    try {
      mkdirSync(dir, { recursive: true });
      return dir;
    } catch {
      // read-only home (a container): try the next place
    }
  }
  throw new Error('no writable folder for the workflow bundle: set RUNAS_MIGRATE_CACHE');
}

/**
 * Path of the workflow bundle for the current sources (everything under workflows/ and src/,
 * and the SDK version), built in a child process when missing.
 */
export function workflowBundlePath(): string {
  const hash = createHash('sha256');
  for (const f of [...sourceFiles(join(root, 'workflows')), ...sourceFiles(join(root, 'src'))]) {
    hash.update(f.slice(root.length)).update(readFileSync(f));
  }
  hash.update(
    readFileSync(
      join(dirname(fileURLToPath(import.meta.resolve('@temporalio/workflow'))), '..', 'package.json'),
    ),
  );
  const file = join(cacheDir(), `workflows-${hash.digest('hex').slice(0, 16)}.js`);
  if (existsSync(file)) return file;
  const partial = `${file}.${process.pid}.partial`;
  execFileSync(
    process.execPath,
    ['--import', import.meta.resolve('tsx'), join(root, 'src', 'bundle-workflows.ts'), partial],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  renameSync(partial, file);
  return file;
}
