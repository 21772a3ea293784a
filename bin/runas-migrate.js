#!/usr/bin/env -S node --max-semi-space-size=1 --heap-growing-percent=10
// A small young generation, and an old one that grows by 10% between full collections instead of
// V8's own choice (1.1× to 4×): under 20 concurrent runs the worker's live heap is about 60 MB, and
// most of its peak heap was garbage not yet collected. Peak RSS 348 → 266 MB with the growth flag,
// worker CPU per run 0.98× in that fleet (bench/fleet.ts starts it with these flags; see README).
// NODE_OPTIONS does not accept --heap-growing-percent: the image's entrypoint passes it too.
// Runs the compiled CLI; `npm run build` (run by `npm ci` and `npm test`) makes it.
import { existsSync } from 'node:fs';
import process from 'node:process';
import { URL } from 'node:url';

const built = new URL('../dist/src/app/cli.js', import.meta.url);
if (!existsSync(built)) {
  process.stderr.write('runas-migrate: not built yet: run "npm run build" in the project folder\n');
  process.exit(1);
}
await import(built.href);
