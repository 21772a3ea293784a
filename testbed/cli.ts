/**
 * `npm run tools`, `npm run testbed -- up|down|status|env [--name N]` and `npm run demo`
 * (the demo is a test-bed command that uses the product).
 */
import { parseArgs } from 'node:util';
import { down, envLines, health, readState, up } from './bed.js';
import { runDemo } from './demo.js';
import { ensureAllTools } from './tools.js';

async function main(argv: readonly string[]): Promise<void> {
  const { positionals, values } = parseArgs({
    args: [...argv],
    allowPositionals: true,
    options: { name: { type: 'string', default: process.env.RUNAS_MIGRATE_TESTBED ?? 'default' } },
  });
  const [command = 'status'] = positionals;
  const name = values.name;
  switch (command) {
    case 'tools': {
      const started = Date.now();
      const tools = await ensureAllTools();
      for (const [tool, path] of Object.entries(tools)) process.stdout.write(`${tool}\t${path}\n`);
      process.stderr.write(`[tools] ready in ${Math.round((Date.now() - started) / 1000)} s\n`);
      return;
    }
    case 'up': {
      const state = await up({ name });
      process.stdout.write(envLines(state).join('\n') + '\n');
      process.stderr.write(`[testbed] Temporal Web UI: ${state.temporal.uiUrl}\n`);
      return;
    }
    case 'env': {
      const state = readState(name);
      if (!state) throw new Error(`no test bed "${name}" is running: start one with npm run testbed -- up`);
      process.stdout.write(envLines(state).join('\n') + '\n');
      return;
    }
    case 'status': {
      const state = readState(name);
      if (!state) {
        process.stdout.write(`test bed "${name}": not running\n`);
        process.exitCode = 1;
        return;
      }
      const h = await health(state);
      process.stdout.write(
        [
          `test bed "${name}" (started ${state.startedAt}, state in ${state.dir})`,
          `  temporal dev server  ${h.temporal ? 'serving' : 'DOWN'}  ${state.temporal.address}  UI ${state.temporal.uiUrl}`,
          `  kube-apiserver       ${h.apiserver ? 'ready' : 'DOWN'}  KUBECONFIG=${state.kubeconfig}`,
          `  host runner          ${h.runner ? 'running' : 'DOWN'}  node ${h.runnerNodeReady ? 'Ready' : 'not Ready'}`,
          `  gatekeeper           ${h.gatekeeper ? 'ready' : 'DOWN'}  webhook failurePolicy ${state.gatekeeper?.failurePolicy ?? '-'}  log ${state.gatekeeper?.process?.logFile ?? '-'}`,
        ].join('\n') + '\n',
      );
      if (!(h.temporal && h.apiserver && h.runner && h.runnerNodeReady && h.gatekeeper)) process.exitCode = 1;
      return;
    }
    case 'down':
      await down({ name });
      return;
    case 'demo':
      await runDemo();
      return;
    default:
      throw new Error(`unknown command "${command}": use tools|up|down|status|env|demo`);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
