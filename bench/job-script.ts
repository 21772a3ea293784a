/**
 * The ownership script's throughput and CPU time against a bare `chown -R` over identical trees,
 * measured side by side in one run (fresh trees each round, the order rotated each round), with
 * the script sizing its workers for 1, 2 and 8 CPUs (`nproc` answers what CPUS lists, whatever
 * the machine has). The script does more: it skips what is already right, never follows symlinks,
 * proves completeness with a second walk and counts. `npm run bench -- job-script` (FILES=…,
 * ROUNDS=…, CPUS=1,2,8 to change the size, the rounds and the CPU counts).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OwnershipScript } from '../src/services/ownership-script.js';
import { measure } from './support/cpu.js';

const files = Number(process.env.FILES ?? 200_000);
const rounds = Number(process.env.ROUNDS ?? 3);
const cpuCounts = (process.env.CPUS ?? '1,2,8').split(',').map(Number);
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

// `nproc` answering each CPU count, first on PATH.
const fakes = mkdtempSync(join(tmpdir(), 'bench-nproc-'));
const envFor = (cpus: number) => {
  const bin = join(fakes, String(cpus));
  mkdirSync(bin, { recursive: true });
  writeFileSync(join(bin, 'nproc'), `#!/bin/sh\necho ${cpus}\n`);
  chmodSync(join(bin, 'nproc'), 0o755);
  // TERMINATION_LOG: a run on this host must not leave a /dev/termination-log behind.
  return {
    ...process.env,
    PATH: `${bin}:${process.env.PATH}`,
    TARGET_UID: '5000',
    TARGET_GID: '5000',
    TERMINATION_LOG: '/dev/null',
  };
};

type Sample = { ms: number; cpuMs: number };
const contenders: { name: string; run: (dir: string) => Sample; samples: Sample[] }[] = [
  {
    name: 'chown -R',
    run: (dir) => measure('chown', ['-R', '5000:5000', dir], process.env),
    samples: [],
  },
  ...cpuCounts.map((cpus) => {
    const env = envFor(cpus);
    return {
      name: `script, ${cpus} CPU${cpus === 1 ? '' : 's'}`,
      run: (dir: string) => measure('bash', ['-c', OwnershipScript, 'fix-ownership', dir], env),
      samples: [] as Sample[],
    };
  }),
];

for (let r = 0; r < rounds; r++) {
  const trees = contenders.map(() => tree());
  // rotate which goes first, so page-cache effects do not favour one side
  for (let i = 0; i < contenders.length; i++) {
    const k = (i + r) % contenders.length;
    contenders[k]!.samples.push(contenders[k]!.run(trees[k]!));
  }
  for (const t of trees) rmSync(t, { recursive: true, force: true });
}
rmSync(fakes, { recursive: true, force: true });

const entries = dirs * perDir + dirs + 1;
const chown = contenders[0]!;
const c = median(chown.samples.map((s) => s.ms));
const cCpu = median(chown.samples.map((s) => s.cpuMs));
const lines = [`ownership script vs chown -R over ${entries} entries (median of ${rounds})`];
for (const x of contenders) {
  const ms = median(x.samples.map((s) => s.ms));
  const cpuMs = median(x.samples.map((s) => s.cpuMs));
  lines.push(
    `  ${`${x.name}:`.padEnd(20)}${ms.toFixed(0)} ms (${Math.round(entries / (ms / 1000))} entries/s), CPU ${cpuMs.toFixed(0)} ms` +
      (x === chown
        ? ''
        : `: throughput ratio ${(c / ms).toFixed(2)}, CPU-time ratio ${(cpuMs / cCpu).toFixed(2)}`),
  );
}
lines.push('  (ratios: script / chown -R; the script includes its counting and proof walks)');
process.stdout.write(lines.join('\n') + '\n');
