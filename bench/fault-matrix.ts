/**
 * The whole fault matrix (`test/fault/`, RUNAS_MIGRATE_FAULT_MATRIX=full): abort and cancel in
 * every phase, the worker killed at every phase boundary, the rest as in `npm test`. `npm test`
 * runs the cases each invariant needs; this runs them all, on the same bed, and says how long
 * each file took and how many cases passed.
 * `npm run bench -- fault-matrix`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const report = join(tmpdir(), `runas-migrate-fault-matrix-${process.pid}.json`);
const started = Date.now();
const r = spawnSync(
  'npx',
  ['vitest', 'run', '--project', 'bed', 'test/fault', '--reporter=json', `--outputFile=${report}`],
  {
    env: { ...process.env, RUNAS_MIGRATE_FAULT_MATRIX: 'full' },
    stdio: ['ignore', 'ignore', 'inherit'],
  },
);
const seconds = (Date.now() - started) / 1000;
const result = JSON.parse(readFileSync(report, 'utf8')) as {
  numPassedTests: number;
  numFailedTests: number;
  testResults: {
    name: string;
    startTime: number;
    endTime: number;
    assertionResults: { status: string; title: string }[];
  }[];
};
rmSync(report, { force: true });
console.log(
  `the whole fault matrix: ${result.numPassedTests} passed, ${result.numFailedTests} failed in ${seconds.toFixed(0)} s`,
);
for (const f of result.testResults.sort((a, b) => a.name.localeCompare(b.name))) {
  const cases = f.assertionResults;
  console.log(
    `  ${f.name.slice(f.name.indexOf('test/fault/'))}: ${cases.filter((c) => c.status === 'passed').length}/${cases.length} passed in ${((f.endTime - f.startTime) / 1000).toFixed(0)} s`,
  );
  for (const c of cases.filter((c) => c.status !== 'passed')) console.log(`    ${c.status}: ${c.title}`);
}
process.exit(r.status ?? 1);
