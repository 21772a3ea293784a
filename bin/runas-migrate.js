#!/usr/bin/env node
// Runs the compiled CLI (npm run build) when it is at least as new as every source file, and
// the TypeScript sources through tsx's loader otherwise: the compiled one starts faster and a
// worker needs about 100 MB less memory.
import { existsSync, readdirSync, statSync } from 'node:fs';

const root = `${import.meta.dirname}/../`;
const built = `${root}dist/src/cli.js`;
const stamp = `${root}dist/.tsbuildinfo`;

function newestSource() {
  let newest = 0;
  for (const dir of ['src', 'activities', 'workflows', 'testbed']) {
    for (const f of readdirSync(`${root}${dir}`, { recursive: true })) {
      if (String(f).endsWith('.ts')) newest = Math.max(newest, statSync(`${root}${dir}/${f}`).mtimeMs);
    }
  }
  return newest;
}

if (existsSync(built) && existsSync(stamp) && statSync(stamp).mtimeMs >= newestSource()) {
  await import(built);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli.ts');
}
