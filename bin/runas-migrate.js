#!/usr/bin/env -S node --max-semi-space-size=1
// A small young generation: the worker's peak RSS under 20 concurrent runs drops from about
// 350 MB to 265 MB at no measurable cost in time (bench/fleet.ts starts it with these flags).
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
