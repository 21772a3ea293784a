/**
 * End-to-end migration of an ITRS-like namespace on the test bed (3 replicas, 9 volumes), in
 * `admission` and in `job-duration` window mode, side by side in one run: the run's total time
 * and the security window (relaxed → re-enforced, as the run records it).
 * `npm run bench -- migration` (FILES=… files per data volume; ROUNDS=…).
 */
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { startRun } from '../src/app/runs.js';
import { createWorker } from '../src/app/worker.js';
import { kubeConfigOf, up } from '../testbed/bed.js';
import { hostRunnerRun, removeFixture, seedItrsFixture, waitForFixtureReady } from '../testbed/fixture.js';
import type { MigrationReport } from '../src/workflows/messages.js';
import { renderStepTimes, renderTimeline, stepTimeline, stepTimes, type StepSpan } from './support/steps.js';

const files = Number(process.env.FILES ?? 1000);
const rounds = Number(process.env.ROUNDS ?? 3);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const bed = await up({ log: () => undefined });
const kc = kubeConfigOf(bed);
const taskQueue = `bench-${Date.now().toString(36)}`;
// The worker's runtime logs stay quiet in the figures.
Runtime.install({ logger: new DefaultLogger('WARN') });
const w = await createWorker({
  address: bed.temporal.address,
  kubeconfig: bed.kubeconfig,
  taskQueue,
  sweepEvery: '1 hour',
  log: () => undefined,
});
const running = w.worker.run();
const results: Record<string, { total: number[]; window: number[] }> = {
  admission: { total: [], window: [] },
  'job-duration': { total: [], window: [] },
};
/** Where the last admission-mode run's time went. */
let breakdown: ReturnType<typeof stepTimes> | undefined;
let timeline: StepSpan[] = [];
const namespaces: string[] = [];
try {
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['admission', 'job-duration'] as const) {
      const namespace = `bench-${mode === 'admission' ? 'adm' : 'job'}-${r}-${Date.now().toString(36)}`;
      namespaces.push(namespace);
      await seedItrsFixture(kc, { namespace, pvRoot: bed.pvRoot, filesPerVolume: files });
      await waitForFixtureReady(kc, namespace);
      const input = hostRunnerRun(namespace, mode);
      const t = performance.now();
      const { handle } = await startRun(w.client, input, { taskQueue });
      const report = (await handle.result()) as MigrationReport;
      results[mode]!.total.push((performance.now() - t) / 1000);
      results[mode]!.window.push(report.windowSeconds);
      if (mode === 'admission') {
        const history = await handle.fetchHistory();
        breakdown = stepTimes(history);
        timeline = stepTimeline(history);
      }
    }
  }
} finally {
  w.worker.shutdown();
  await running;
  await w.close();
  for (const name of namespaces) {
    await removeFixture(kc, name, bed.pvRoot);
  }
}
const adm = results.admission!;
const job = results['job-duration']!;
process.stdout.write(
  [
    `migration of an ITRS-like namespace on the test bed (3 Jobs, 9 volumes, ~${files} files per data volume; median of ${rounds})`,
    `  admission mode:    end-to-end ${median(adm.total).toFixed(2)} s, window ${median(adm.window).toFixed(2)} s`,
    `  job-duration mode: end-to-end ${median(job.total).toFixed(2)} s, window ${median(job.window).toFixed(2)} s`,
    `  window ratio admission / job-duration: ${(median(adm.window) / median(job.window)).toFixed(2)}`,
    `  where the last admission-mode run's time went (each step from scheduled to closed, summed by type):`,
    ...(breakdown ? renderStepTimes(breakdown) : []),
    `  the same run step by step (seconds from its start, scheduled → closed):`,
    ...renderTimeline(timeline),
  ].join('\n') + '\n',
);
