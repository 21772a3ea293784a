/**
 * `runas-migrate`: the operator's command line.
 */
import { Command, Option } from 'commander';
import { createPolicyActivities, type RestoreReport } from '../activities/policy.js';
import { isKubeError } from './kube.js';
import { Kube } from './kube.js';
import { parseRelaxationRecord, RelaxationAnnotation } from './policy.js';
import { connectClient, createWorker, temporalTarget } from './worker.js';
import { ApplicationFailure } from '@temporalio/common';
import { WorkflowNotFoundError } from '@temporalio/client';

const program = new Command('runas-migrate').description(
  'Change the UID/GID of PostgreSQL/TimescaleDB StatefulSets behind strict security policies, durably, on Temporal.',
);

const temporalOptions = (cmd: Command) =>
  cmd
    .addOption(new Option('--address <host:port>', 'Temporal frontend').env('TEMPORAL_ADDRESS'))
    .addOption(new Option('--temporal-namespace <name>', 'Temporal namespace').env('TEMPORAL_NAMESPACE'));

const kubeOption = (cmd: Command) =>
  cmd.addOption(new Option('--kubeconfig <path>', 'kubeconfig file').env('KUBECONFIG'));

/** Prints a restore report as the operator reads it. */
function printRestore(r: RestoreReport): void {
  if (!r.restored) {
    process.stdout.write(`${r.namespace}: no relaxation recorded: nothing to restore\n`);
    return;
  }
  const lines = [
    `${r.namespace}: policies restored and verified (recorded by run ${r.owner?.workflowId}/${r.owner?.runId})`,
    `  pod security enforce: ${r.podSecurity}`,
    ...r.constraints.map((c) => `  ${c.constraint}: ${c.result}`),
    ...r.keptForeignChanges.map((c) => `  kept (not ours): ${c}`),
    `  ${r.apiCalls} API calls`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

async function retryTransient<T>(what: string, fn: () => Promise<T>, deadlineMs = 120_000): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (let delay = 500; ; delay = Math.min(delay * 2, 10_000)) {
    try {
      return await fn();
    } catch (err) {
      const retryable =
        err instanceof ApplicationFailure ? !err.nonRetryable : isKubeError(err) ? err.retryable : false;
      if (!retryable || Date.now() + delay > deadline) throw err;
      process.stderr.write(`${what}: ${(err as Error).message}; retrying in ${delay} ms\n`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** Asks Temporal for the run's status: its name, or why it cannot be told. */
async function runStatus(
  opts: { address?: string; temporalNamespace?: string },
  workflowId: string,
  runId: string,
): Promise<{ status?: string; problem?: string }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('no answer within 5 s')), 5_000);
  });
  let client: Awaited<ReturnType<typeof connectClient>> | undefined;
  try {
    client = await Promise.race([
      connectClient({ address: opts.address, namespace: opts.temporalNamespace }),
      timeout,
    ]);
    const d = await Promise.race([client.workflow.getHandle(workflowId, runId).describe(), timeout]);
    return { status: d.status.name };
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return { status: 'NOT_FOUND' };
    return { problem: err instanceof Error ? err.message : String(err) };
  } finally {
    clearTimeout(timer);
    await client?.connection.close();
  }
}

kubeOption(
  temporalOptions(
    program
      .command('restore')
      .description("put a namespace's policies back from the record on the namespace (no worker needed)")
      .requiredOption('-n, --namespace <namespace>', 'Kubernetes namespace to restore')
      .option('--force', 'restore even while the run that relaxed it is still running'),
  ),
).action(
  async (opts: {
    namespace: string;
    force?: boolean;
    kubeconfig?: string;
    address?: string;
    temporalNamespace?: string;
  }) => {
    const kube = Kube.fromKubeconfig(opts.kubeconfig);
    const ns = await kube.readNamespace(opts.namespace);
    const annotation = ns.metadata?.annotations?.[RelaxationAnnotation];
    if (annotation) {
      const { owner } = parseRelaxationRecord(annotation);
      const { status, problem } = await runStatus(opts, owner.workflowId, owner.runId);
      if (status === 'RUNNING' && !opts.force) {
        process.stderr.write(
          `run ${owner.workflowId}/${owner.runId} is still running and will restore ${opts.namespace} itself; ` +
            `abort it (runas-migrate abort) or pass --force to restore now\n`,
        );
        process.exitCode = 2;
        return;
      }
      if (problem) {
        process.stderr.write(
          `cannot tell from Temporal at ${temporalTarget(opts).address} whether run ${owner.workflowId} is alive (${problem}); restoring\n`,
        );
      }
    }
    const guard = createPolicyActivities({ kube, log: (m) => process.stderr.write(`${m}\n`) });
    printRestore(await retryTransient('restore', () => guard.restorePolicies({ namespace: opts.namespace })));
  },
);

kubeOption(
  temporalOptions(
    program
      .command('worker')
      .description(
        'run a worker on the runas-migrate task queue (and create the sweeper Schedule if missing)',
      )
      .option('--task-queue <name>', 'task queue', 'runas-migrate'),
  ),
).action(
  async (opts: { taskQueue: string; kubeconfig?: string; address?: string; temporalNamespace?: string }) => {
    const w = await createWorker({
      address: opts.address,
      namespace: opts.temporalNamespace,
      taskQueue: opts.taskQueue,
      kubeconfig: opts.kubeconfig,
    });
    process.stderr.write(
      `[runas-migrate] worker polling ${opts.taskQueue} on ${temporalTarget({ address: opts.address }).address}\n`,
    );
    await w.worker.run();
    await w.close();
  },
);

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`runas-migrate: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
