/**
 * `npm run demo`: brings up the test bed (local Temporal dev server + simulated cluster + host
 * runner), runs a worker, and migrates the ITRS-like fixture end to end — approving each gate
 * itself, and saying so — then prints the report and the run's Web UI link.
 */
import { AppsV1Api } from '@kubernetes/client-node';
import { FixtureNamespace, kubeConfigOf, up } from './bed.js';
import { HostRunnerPlacement } from './host-runner/runner.js';
import { approveSignal, type MigrationStatus } from '../src/workflows/messages.js';
import type { MigrationInputRaw } from '../src/core/input.js';
import { followRun, RunInProgressError, startRun, webUiLink, workflowIdOf } from '../src/app/runs.js';
import { renderReport } from '../src/app/status-view.js';
import { liveStatus } from '../src/app/live-view.js';
import { createWorker } from '../src/app/worker.js';
import { installRuntime, LogLevelEnv } from '../src/app/telemetry.js';
import type { LogLevel } from '@temporalio/worker';

const say = (line: string) => process.stdout.write(`${line}\n`);

/** Runs the demo; resolves when the migration ended. */
export async function runDemo(): Promise<void> {
  // The SDK's INFO lines would bury the run's events; RUNAS_MIGRATE_LOG_LEVEL brings them back.
  installRuntime({ logLevel: (process.env[LogLevelEnv] as LogLevel | undefined) ?? 'WARN' });
  say('runas-migrate demo: bringing up the test bed (the first time builds the tools: minutes)…');
  const bed = await up({ log: (l) => say(`  ${l}`) });
  const kc = kubeConfigOf(bed);
  const current = (
    await kc
      .makeApiClient(AppsV1Api)
      .readNamespacedStatefulSet({ name: 'pgplatform', namespace: FixtureNamespace })
  ).spec?.template.spec?.securityContext?.runAsUser;
  const target = current === 5000 ? 6000 : 5000;
  const input: MigrationInputRaw = {
    namespace: FixtureNamespace,
    uid: target,
    gid: target,
    profile: 'itrs-analytics',
    securityContext: { apply: 'patch' },
    approvals: ['plan', 'relax'],
    window: { mode: 'admission', max: '15m' },
    job: { ...HostRunnerPlacement },
  };
  say(`starting a worker on ${bed.temporal.address}`);
  const w = await createWorker({
    address: bed.temporal.address,
    kubeconfig: bed.kubeconfig,
    log: () => undefined,
  });
  const running = w.worker.run();
  try {
    let handle;
    try {
      ({ handle } = await startRun(w.client, input));
      say(
        `started ${handle.workflowId}: namespace ${FixtureNamespace} from ${current ?? '?'} to ${target}:${target}`,
      );
    } catch (err) {
      if (!(err instanceof RunInProgressError)) throw err;
      handle = w.client.workflow.getHandle(workflowIdOf(FixtureNamespace));
      say(`a run of ${FixtureNamespace} is already in progress: following it`);
    }
    const described = await handle.describe();
    const link = webUiLink(bed.temporal.uiUrl, 'default', handle.workflowId, described.runId);
    say(`Web UI: ${link}`);
    say(
      'the demo approves each gate itself, as "demo (auto-approved)"; an operator would run runas-migrate approve',
    );
    const approved = new Set<string>();
    const live = liveStatus(handle.workflowId);
    const report = await followRun(
      handle,
      async (s: MigrationStatus, jobs) => {
        live.show(s, jobs);
        for (const g of s.gates) {
          if (g.state === 'waiting' && !approved.has(g.gate)) {
            approved.add(g.gate);
            live.note(`>> approving gate "${g.gate}" automatically (demo)`);
            await handle.signal(approveSignal, { gate: g.gate, by: 'demo (auto-approved)' });
          }
        }
      },
      500,
    ).finally(() => live.done());
    say(`\n${renderReport(report)}`);
    say(`\nWeb UI of this run: ${link}`);
    say(
      `the test bed keeps running: eval "$(npm run -s testbed -- env)" to use kubectl/temporal; npm run testbed -- down to stop it`,
    );
  } finally {
    w.worker.shutdown();
    await running;
    await w.close();
  }
}
