/**
 * What one `runas-migrate` command costs before it does anything: CPU and wall time of `--help`,
 * of `status` for a namespace with no run (one call to Temporal) and of `plan` for a namespace
 * that does not exist (one call to the API server), against the same commands with the heavy
 * modules loaded up front (`node --import` of the Kubernetes client, the Temporal worker and the
 * OTLP exporter), as every command did before they were loaded only by the commands that use
 * them. Side by side in one run, alternating, on the test bed. `npm run bench -- cli-start`
 * (ROUNDS=…).
 */
import { fileURLToPath } from 'node:url';
import { up } from '../testbed/bed.js';
import { measure } from './support/cpu.js';
import { median } from './support/worker-process.js';

const rounds = Number(process.env.ROUNDS ?? 7);
const bed = await up({ name: process.env.RUNAS_MIGRATE_TESTBED ?? 'default', log: () => undefined });
const cli = fileURLToPath(new URL('../bin/runas-migrate.js', import.meta.url));
const env = { ...process.env, KUBECONFIG: bed.kubeconfig, TEMPORAL_ADDRESS: bed.temporal.address };
const eager = [
  '@kubernetes/client-node',
  '@temporalio/worker',
  '@opentelemetry/exporter-trace-otlp-http',
].flatMap((m) => ['--import', m]);
const commands: { name: string; args: string[]; exitCode: number }[] = [
  { name: '--help', args: ['--help'], exitCode: 0 },
  { name: 'status (no run)', args: ['status', '-n', 'bench-no-such-run'], exitCode: 1 },
  {
    name: 'plan (no namespace)',
    args: ['plan', '-n', 'bench-no-such-ns', '--uid', '5000', '--gid', '5000'],
    exitCode: 1,
  },
];
const lines = [
  `one runas-migrate command, loading only what it uses vs loading everything up front (median of ${rounds})`,
];
for (const c of commands) {
  const lazy: { ms: number; cpuMs: number }[] = [];
  const all: { ms: number; cpuMs: number }[] = [];
  for (let r = 0; r < rounds; r++) {
    // Alternated, the order swapped each round: the machine's noise falls on both.
    const pair = [
      () => lazy.push(measure(process.execPath, [cli, ...c.args], env, c.exitCode)),
      () => all.push(measure(process.execPath, [...eager, cli, ...c.args], env, c.exitCode)),
    ];
    for (const run of r % 2 ? pair.reverse() : pair) run();
  }
  const cpu = median(lazy.map((s) => s.cpuMs)) / median(all.map((s) => s.cpuMs));
  lines.push(
    `  ${c.name.padEnd(20)} only what it uses: CPU ${median(lazy.map((s) => s.cpuMs)).toFixed(0)} ms, wall ${median(lazy.map((s) => s.ms)).toFixed(0)} ms; ` +
      `everything: CPU ${median(all.map((s) => s.cpuMs)).toFixed(0)} ms, wall ${median(all.map((s) => s.ms)).toFixed(0)} ms; CPU ratio ${cpu.toFixed(2)}`,
  );
}
process.stdout.write(lines.join('\n') + '\n');
