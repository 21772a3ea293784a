/**
 * The test bed's cold tool builds one at a time against two at once, side by side in one run:
 * each mode builds the same components into fresh, empty caches (tools, Go build and module
 * caches), so both download every module and compile everything. The module proxy's own cache
 * is warm for both. The tools are built one at a time because of it: two at once were 1.10×
 * slower on two cores. `npm run bench -- tool-builds` (TOOLS=kwok,helm: the tools whose
 * components are built; ORDER=parallel-first to swap the modes).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureAllTools, overrideVariable, ToolName } from '../testbed/tools.js';
import { machineBusySeconds } from './support/worker-process.js';

const tools = (process.env.TOOLS ?? 'kwok,helm').split(',').map((t) => {
  if (!(Object.values(ToolName) as string[]).includes(t))
    throw new Error(`TOOLS: no tool "${t}": choose from ${Object.values(ToolName).join(', ')}`);
  return t as ToolName;
});
const modes = process.env.ORDER === 'parallel-first' ? [2, 1] : [1, 2];

interface Measured {
  atOnce: number;
  seconds: number;
  busy: number;
}

async function coldBuild(atOnce: number): Promise<Measured> {
  const root = mkdtempSync(join(tmpdir(), 'bench-tools-'));
  const env = {
    RUNAS_MIGRATE_CACHE: join(root, 'cache'),
    GOCACHE: join(root, 'go-build'),
    GOMODCACHE: join(root, 'go-mod'),
    GOPATH: join(root, 'go'),
  };
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  for (const t of tools) delete process.env[overrideVariable(t)];
  try {
    const busy = machineBusySeconds();
    const started = Date.now();
    await ensureAllTools((line) => process.stderr.write(`[${atOnce} at once] ${line}\n`), {
      atOnce,
      only: tools,
    });
    return { atOnce, seconds: (Date.now() - started) / 1000, busy: machineBusySeconds() - busy };
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    // The module cache is read-only by design.
    execFileSync('chmod', ['-R', 'u+w', root]);
    rmSync(root, { recursive: true, force: true });
  }
}

const results: Measured[] = [];
for (const atOnce of modes) results.push(await coldBuild(atOnce));
const one = results.find((r) => r.atOnce === 1)!;
const two = results.find((r) => r.atOnce === 2)!;
const cores = (await import('node:os')).cpus().length;
const line = (r: Measured) =>
  `${r.seconds.toFixed(0)} s, machine busy ${r.busy.toFixed(0)} core-s (${((100 * r.busy) / (r.seconds * cores)).toFixed(0)}% of ${cores} cores)`;
process.stdout.write(
  [
    `cold builds of the components of ${tools.join(', ')} into empty caches (modes in the order ${modes.join(', ')})`,
    `  one at a time: ${line(one)}`,
    `  two at once:   ${line(two)}`,
    `  two at once / one at a time: ${(two.seconds / one.seconds).toFixed(2)}×`,
  ].join('\n') + '\n',
);
