/**
 * `npm run bench [-- name…]`: runs the benchmarks of bench/ (all when none is named), shows
 * their output, and records it in bench/RESULTS.md under the machine and the versions it ran
 * on. A partial run replaces only the sections of the benchmarks it ran.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureTool, ToolName } from '../testbed/tools.js';

const dir = dirname(fileURLToPath(import.meta.url));
const resultsFile = join(dir, 'RESULTS.md');
const all = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .map((f) => f.replace(/\.ts$/, ''));
const chosen = process.argv.slice(2).length ? process.argv.slice(2) : all;
for (const name of chosen) {
  if (!all.includes(name)) throw new Error(`no benchmark "${name}": choose from ${all.join(', ')}`);
}

const version = (cmd: string, args: string[]) => {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8' }).trim().split('\n')[0]!;
  } catch {
    return 'unknown';
  }
};
const pkg = (name: string) =>
  (
    JSON.parse(readFileSync(join(dir, '..', 'node_modules', name, 'package.json'), 'utf8')) as {
      version: string;
    }
  ).version;
const log = () => undefined;
const machine = [
  `- machine: ${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ${version('uname', ['-sr'])}; load average at start ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`,
  `- node ${process.version}, temporal CLI ${version(await ensureTool(ToolName.Temporal, log), ['--version'])}`,
  `- kube-apiserver ${version(await ensureTool(ToolName.KubeApiserver, log), ['--version'])}, etcd ${version(
    await ensureTool(ToolName.Etcd, log),
    ['--version'],
  )}, ${version(await ensureTool(ToolName.Kwok, log), ['--version'])}`,
  `- @temporalio/worker ${pkg('@temporalio/worker')}, @kubernetes/client-node ${pkg('@kubernetes/client-node')}, typescript ${pkg('typescript')}`,
  `- ${version('bash', ['--version'])}; ${version('chown', ['--version'])}; ${version('find', ['--version'])}`,
];

const sections = new Map<string, string>();
for (const name of chosen) {
  process.stdout.write(`\n== ${name}\n`);
  const started = new Date();
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(dir, `${name}.ts`)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  process.stdout.write(r.stdout);
  const outcome = r.status === 0 ? '' : ` — exited with ${r.status ?? r.signal}`;
  sections.set(
    name,
    `## ${name}\n\nrun ${started.toISOString()}${outcome}\n\n\`\`\`text\n${r.stdout.trimEnd()}\n\`\`\`\n`,
  );
}

const previous = existsSync(resultsFile) ? readFileSync(resultsFile, 'utf8') : '';
const kept = new Map<string, string>();
for (const m of previous.matchAll(/<!-- bench:(\S+) -->\n([\s\S]*?)<!-- \/bench:\1 -->/g))
  kept.set(m[1]!, m[2]!);
for (const [name, text] of sections) kept.set(name, text);
const body = [...kept.keys()]
  .sort()
  .map((name) => `<!-- bench:${name} -->\n${kept.get(name)!}<!-- /bench:${name} -->`)
  .join('\n\n');
const header = [...machine, `- benchmarks of the last \`npm run bench\`: ${chosen.join(', ')}`];
writeFileSync(
  resultsFile,
  [
    '# Benchmark results',
    '',
    'Written by `npm run bench`. Every figure is a ratio or time measured side by side in one run on',
    'the test bed (real kube-apiserver with Pod Security Admission, real Temporal dev server, the host',
    'runner running the Jobs as real processes over real files); the machines are noisy, so only',
    'same-run comparisons mean anything.',
    '',
    ...header,
    '',
    body,
    '',
  ].join('\n'),
);
process.stdout.write(`\nresults written to ${resultsFile}\n`);
