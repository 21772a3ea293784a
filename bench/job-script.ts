/**
 * The ownership script's throughput against a bare `chown -R` over identical trees, measured
 * side by side in one run (alternating, fresh trees each round). The script does more: it
 * skips what is already right, never follows symlinks, proves completeness with a second walk
 * and counts. `npm run bench -- job-script` (FILES=… to change the size).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OwnershipScript } from '../src/job.js';

const files = Number(process.env.FILES ?? 200_000);
const rounds = Number(process.env.ROUNDS ?? 3);
const perDir = 1000;
const dirs = Math.ceil(files / perDir);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function tree(): string {
  const root = mkdtempSync(join(tmpdir(), 'bench-tree-'));
  execFileSync('bash', [
    '-c',
    `cd "$1" && for i in $(seq 0 ${dirs - 1}); do mkdir $i && (cd $i && touch $(seq 0 ${perDir - 1})); done && chown -R 1000:1000 .`,
    'tree',
    root,
  ]);
  return root;
}

function time(fn: () => void): number {
  const t = performance.now();
  fn();
  return performance.now() - t;
}

const chownMs: number[] = [];
const scriptMs: number[] = [];
for (let r = 0; r < rounds; r++) {
  const a = tree();
  const b = tree();
  const env = { ...process.env, TARGET_UID: '5000', TARGET_GID: '5000' };
  // alternate which goes first, so page-cache effects do not favour one side
  const runs = [
    () => chownMs.push(time(() => execFileSync('chown', ['-R', '5000:5000', a]))),
    () =>
      scriptMs.push(
        time(() =>
          execFileSync('bash', ['-c', OwnershipScript, 'fix-ownership', b], { env, stdio: 'ignore' }),
        ),
      ),
  ];
  if (r % 2) runs.reverse();
  runs.forEach((f) => f());
  rmSync(a, { recursive: true, force: true });
  rmSync(b, { recursive: true, force: true });
}
const entries = dirs * perDir + dirs + 1;
const c = median(chownMs);
const s = median(scriptMs);
process.stdout.write(
  [
    `ownership script vs chown -R over ${entries} entries (median of ${rounds})`,
    `  chown -R:          ${c.toFixed(0)} ms (${Math.round(entries / (c / 1000))} entries/s)`,
    `  ownership script:  ${s.toFixed(0)} ms (${Math.round(entries / (s / 1000))} entries/s), completeness proof included`,
    `  throughput ratio (script / chown -R): ${(c / s).toFixed(2)}`,
  ].join('\n') + '\n',
);
