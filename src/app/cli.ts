/**
 * `runas-migrate`: the operator's command line.
 */
import { Command, Option } from 'commander';
import { stringify as toYaml } from 'yaml';
// Only light modules load with every command: the Kubernetes client, the Temporal worker and
// OpenTelemetry take seconds of CPU to load, and are loaded by the commands that use them.
import type { RestoreReport } from '../services/policy-guard.js';
import type { Kube } from '../cluster/kube.js';
import { RecordsNamespaceEnv, recordsNamespaceOf } from '../core/records.js';
import { connectClient, temporalTarget } from './temporal-connection.js';
import type { WaitMode } from '../services/workloads.js';
import { ApplicationFailure } from '@temporalio/common';
import type { LogLevel } from '@temporalio/worker';
import {
  WorkflowFailedError,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { abortSignal, approvalRefusal, approveSignal } from '../workflows/messages.js';
import { fleetStatusQuery } from '../workflows/fleet-messages.js';
import { reasonOf } from '../core/failure-reason.js';
import { InvalidInputError, parseMigrationInput, type MigrationInput } from '../core/input.js';
import { clusterTaskQueue, TaskQueue } from '../core/names.js';
import { checkClusterName, targetId } from '../core/fleet.js';
import { fleetHandle, queryFleet, requireRunningFleet, signalFleet, startFleet } from './fleets.js';
import { GuardrailsConfigMap, GuardrailsFileEnv } from '../core/guardrails.js';
import { FailureType, TypedFailure } from '../core/failures.js';
import {
  followRun,
  NoRunError,
  queryStatus,
  runFlags,
  readInputFile,
  runningRun,
  runProgress,
  StatusQueryTimeoutMs,
  startRun,
  webUiLink,
  workflowIdOf,
} from './runs.js';
import {
  KubeConnectionModes,
  KubeConnectionsEnv,
  LogFormatEnv,
  LogFormats,
  LogLevelEnv,
  LogLevels,
  MetricsAddressEnv,
  TracesEndpointEnv,
  WaitsEnv,
  type KubeConnections,
  type LogFormat,
} from '../core/settings.js';
import {
  renderFleet,
  renderGuardrails,
  renderPlan,
  renderProgress,
  renderReport,
  renderStatus,
} from './status-view.js';
import { liveStatus } from './live-view.js';
import type { MigrationReport } from '../workflows/messages.js';

const program = new Command('runas-migrate')
  .description(
    'Change the UID/GID of PostgreSQL/TimescaleDB StatefulSets behind strict security policies, durably, on Temporal.',
  )
  .addOption(
    // The SDK's own logs stay at warnings by default; the CLI says what matters.
    new Option('--log-level <level>', "the Temporal SDK's log level")
      .choices(LogLevels)
      .default('WARN')
      .env(LogLevelEnv),
  )
  .addOption(
    new Option('--log-format <format>', 'log lines for people (text) or one JSON object per line (json)')
      .choices(LogFormats)
      .default('text')
      .env(LogFormatEnv),
  )
  .configureHelp({ showGlobalOptions: true });

const temporalOptions = (cmd: Command) =>
  cmd
    .addOption(new Option('--address <host:port>', 'Temporal frontend').env('TEMPORAL_ADDRESS'))
    .addOption(new Option('--temporal-namespace <name>', 'Temporal namespace').env('TEMPORAL_NAMESPACE'));

const kubeOption = (cmd: Command) =>
  cmd.addOption(new Option('--kubeconfig <path>', 'kubeconfig file').env('KUBECONFIG'));

const recordsOption = (cmd: Command) =>
  cmd.addOption(
    new Option(
      '--records-namespace <name>',
      "namespace of the protected relaxation records: the worker's own [runas-migrate]",
    ).env(RecordsNamespaceEnv),
  );

/** Prints a restore report as the operator reads it. */
function printRestore(r: RestoreReport): void {
  const alarms = r.alarms.map((a) => `  ALARM: ${a}`);
  if (r.refused) {
    process.stderr.write([`${r.namespace}: refused: ${r.refused}`, ...alarms].join('\n') + '\n');
    return;
  }
  if (!r.restored) {
    process.stdout.write(
      [`${r.namespace}: no relaxation recorded: nothing to restore`, ...alarms].join('\n') + '\n',
    );
    return;
  }
  const from = r.source === 'run-copy' ? "the run's copy of the record" : 'the protected record';
  const lines = [
    `${r.namespace}: policies restored and verified from ${from} (recorded by run ${r.owner?.workflowId}/${r.owner?.runId})`,
    `  pod security enforce: ${r.podSecurity}`,
    ...r.constraints.map((c) => `  ${c.constraint}: ${c.result}`),
    ...r.keptForeignChanges.map((c) => `  kept (not ours): ${c}`),
    ...(r.otherRuns ?? []).map((c) => `  kept (another run's window): ${c}`),
    ...alarms,
    `  ${r.apiCalls} API calls`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

async function retryTransient<T>(what: string, fn: () => Promise<T>, deadlineMs = 120_000): Promise<T> {
  const { isKubeError } = await import('../cluster/kube.js');
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

recordsOption(
  kubeOption(
    temporalOptions(
      program
        .command('restore')
        .description(
          "put a namespace's policies back from its protected relaxation record (no worker needed)",
        )
        .requiredOption('-n, --namespace <namespace>', 'Kubernetes namespace to restore')
        .option('--force', 'restore even while the run that relaxed it is still running'),
    ),
  ),
).action(
  async (opts: {
    namespace: string;
    force?: boolean;
    kubeconfig?: string;
    address?: string;
    temporalNamespace?: string;
    recordsNamespace?: string;
  }) => {
    const [{ Kube }, { PolicyGuard }] = await Promise.all([
      import('../cluster/kube.js'),
      import('../services/policy-guard.js'),
    ]);
    const kube = Kube.fromKubeconfig(opts.kubeconfig);
    const guard = new PolicyGuard({
      kube,
      log: (m) => process.stderr.write(`${m}\n`),
      ...(opts.recordsNamespace ? { recordsNamespace: opts.recordsNamespace } : {}),
    });
    const found = await retryTransient('read the record', () =>
      guard.describeRelaxation({ namespace: opts.namespace }),
    );
    // Nothing recorded: an unknown namespace is named, not taken for a restored one.
    if (!found) await kube.readNamespace(opts.namespace);
    if (found?.owner) {
      const { owner } = found;
      // Ask the Temporal namespace the run belongs to, whatever the flags say.
      const temporalNamespace = found.temporalNamespace ?? opts.temporalNamespace;
      const { status, problem } = await runStatus(
        { address: opts.address, temporalNamespace },
        owner.workflowId,
        owner.runId,
      );
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
          `cannot tell from Temporal at ${temporalTarget(opts).address} (namespace ${temporalNamespace ?? 'default'}) whether run ${owner.workflowId} is alive (${problem}); restoring\n`,
        );
      }
    }
    // Only the relaxation whose run was just judged, should another have replaced it meanwhile.
    const report = await retryTransient('restore', () =>
      guard.restorePolicies({ namespace: opts.namespace, ...(found?.owner ? { owner: found.owner } : {}) }),
    );
    printRestore(report);
    if (report.refused) process.exitCode = 3;
  },
);

recordsOption(
  kubeOption(
    temporalOptions(
      program
        .command('worker')
        .description(
          'run a worker on the runas-migrate task queue (and create the sweeper Schedule if missing)',
        )
        .option('--task-queue <name>', 'task queue', TaskQueue)
        .option(
          '--cluster <name>',
          "serve one cluster of a fleet: poll <task queue>-<name> (runas-migrate-<name>), with this cluster's kubeconfig",
        )
        .addOption(
          new Option(
            '--guardrails <file>',
            `guardrails file (YAML); else the ConfigMap ${GuardrailsConfigMap.name} in the worker's namespace, else the defaults`,
          ).env(GuardrailsFileEnv),
        )
        .addOption(
          new Option(
            '--metrics-address <host:port>',
            "serve Prometheus metrics (the SDK's and runas-migrate's) on http://<host:port>/metrics",
          ).env(MetricsAddressEnv),
        )
        .addOption(
          new Option(
            '--traces-endpoint <url>',
            'export OpenTelemetry traces over OTLP/HTTP, e.g. http://collector:4318/v1/traces (a trace per run)',
          ).env(TracesEndpointEnv),
        )
        .addOption(
          new Option(
            '--waits <mode>',
            'how waits look: watch (watches wake them, a look every 5 s anyway) or poll (no watch RBAC needed)',
          )
            .choices(['watch', 'poll'])
            .default('watch')
            .env(WaitsEnv),
        )
        .addOption(
          new Option(
            '--kube-connections <mode>',
            'pooled: API calls share keep-alive connections; per-request: a new TLS connection per call, as the client library does by itself',
          )
            .choices([...KubeConnectionModes])
            .default('pooled')
            .env(KubeConnectionsEnv),
        ),
    ),
  ),
).action(
  async (opts: {
    metricsAddress?: string;
    tracesEndpoint?: string;
    guardrails?: string;
    taskQueue: string;
    kubeconfig?: string;
    address?: string;
    temporalNamespace?: string;
    recordsNamespace?: string;
    waits: WaitMode;
    kubeConnections: KubeConnections;
    cluster?: string;
  }) => {
    const [{ installRuntime, workerLog }, { createWorker }] = await Promise.all([
      import('./telemetry.js'),
      import('./worker.js'),
    ]);
    const global = program.opts<{ logLevel: LogLevel; logFormat: LogFormat }>();
    // Only a worker runs the SDK's core: the other commands' client needs no runtime.
    installRuntime({
      logLevel: global.logLevel,
      logFormat: global.logFormat,
      metricsAddress: opts.metricsAddress,
    });
    const log = workerLog(global.logFormat);
    const taskQueue = clusterTaskQueue(
      opts.cluster === undefined ? undefined : checkClusterName(opts.cluster),
      opts.taskQueue,
    );
    const w = await createWorker({
      address: opts.address,
      namespace: opts.temporalNamespace,
      taskQueue,
      kubeconfig: opts.kubeconfig,
      recordsNamespace: opts.recordsNamespace,
      guardrailsFile: opts.guardrails,
      metrics: opts.metricsAddress !== undefined,
      tracesEndpoint: opts.tracesEndpoint,
      waits: opts.waits,
      kubeConnections: opts.kubeConnections,
      log,
    });
    log(
      `worker polling ${taskQueue} on ${temporalTarget({ address: opts.address }).address}${opts.metricsAddress ? `; metrics on http://${opts.metricsAddress}/metrics` : ''}${opts.tracesEndpoint ? `; traces to ${opts.tracesEndpoint}` : ''}`,
    );
    await w.worker.run();
    await w.close();
  },
);

interface InputFlags {
  inputFile?: string;
  input?: string;
  namespace?: string;
  uid?: string;
  gid?: string;
  dryRun?: boolean;
}

const inputOptions = (cmd: Command) =>
  cmd
    .option(
      '-f, --input-file <path>',
      'run input (JSON or YAML), as for temporal workflow start --input-file',
    )
    .option('--input <json>', 'run input as inline JSON')
    .option('-n, --namespace <namespace>', 'Kubernetes namespace (overrides the input)')
    .option('--uid <uid>', 'target user ID (overrides the input)')
    .option('--gid <gid>', 'target group ID (overrides the input)')
    .option('--dry-run', 'plan only: change nothing');

function inlineInput(json: string): unknown {
  try {
    return JSON.parse(json) as unknown;
  } catch (err) {
    throw new InvalidInputError(`invalid input: --input is not valid JSON (${(err as Error).message})`);
  }
}

/** The raw input from a file or inline JSON, with flag overrides. */
function rawInput(flags: InputFlags): unknown {
  const base = flags.inputFile ? readInputFile(flags.inputFile) : flags.input ? inlineInput(flags.input) : {};
  // Spreading a string or a list would turn it into an object of indices: let the schema name it.
  if (typeof base !== 'object' || base === null || Array.isArray(base)) return base;
  const num = (v: string, name: string) => {
    const n = Number(v);
    if (!Number.isFinite(n))
      throw new InvalidInputError(`invalid input: ${name}: must be a number, got "${v}"`);
    return n;
  };
  return {
    ...base,
    ...(flags.namespace ? { namespace: flags.namespace } : {}),
    ...(flags.uid !== undefined ? { uid: num(flags.uid, 'uid') } : {}),
    ...(flags.gid !== undefined ? { gid: num(flags.gid, 'gid') } : {}),
    ...(flags.dryRun ? { dryRun: true } : {}),
  };
}

type TemporalFlags = { address?: string; temporalNamespace?: string };

/** The flags of a fleet command. */
type FleetFlags = TemporalFlags & { fleet: string };

const NoClusterForFleet =
  '--cluster names the cluster of one run (-n): a fleet names its clusters in its file';

/** The `--cluster` of one run: the workflow ID and task queue a fleet gives that cluster's run. */
const clusterOption = () =>
  new Option(
    '--cluster <name>',
    'the run of the namespace on this cluster, as a fleet names it (workflow runas-migrate-<cluster>.<namespace>, task queue runas-migrate-<cluster>)',
  ).argParser((name: string) => checkClusterName(name, 'the cluster a fleet file names for this run'));
type FleetStartFlags = InputFlags & TemporalFlags & { taskQueue: string; follow?: boolean; fleet: string };

/**
 * Whether the command is about a fleet (`--fleet`) rather than a namespace (`-n`): exactly one of
 * them must be given.
 */
function oneTarget(flags: { namespace?: string; fleet?: string; cluster?: string }): boolean {
  if (flags.namespace && flags.fleet)
    throw new InvalidInputError('give either -n <namespace> or --fleet <name>, not both');
  if (flags.fleet && flags.cluster) throw new InvalidInputError(NoClusterForFleet);
  if (!flags.namespace && !flags.fleet)
    throw new InvalidInputError('say which run: -n <namespace>, or --fleet <name> for a fleet');
  return flags.fleet !== undefined;
}

async function startFleetCommand(flags: FleetStartFlags): Promise<void> {
  const extra = (['input', 'inputFile', 'namespace', 'uid', 'gid', 'dryRun'] as const).filter(
    (k) => flags[k],
  );
  if (extra.length)
    throw new InvalidInputError(
      `--fleet takes the whole fleet from its file: leave out ${extra.map((k) => `--${k.replace(/[A-Z]/g, (m) => `-${m.toLowerCase()}`)}`).join(', ')} (put them in its defaults or targets)`,
    );
  const c = await client(flags);
  const { fleet, handle } = await startFleet(c, readInputFile(flags.fleet), { taskQueue: flags.taskQueue });
  process.stdout.write(
    `started fleet ${fleet.name} (${handle.workflowId}): ${fleet.targets.length} namespaces, ${fleet.canary ? 'a canary, then ' : ''}waves of ${fleet.waveSize}, failure budget ${fleet.failureBudget}\n`,
  );
  if (flags.follow) await watchFleet(c, fleet.name);
  await c.connection.close();
}

/**
 * Shows the fleet view each time it changes, until the fleet ends; exit code 1 unless it completed.
 * The end comes from the fleet's result (a long poll that follows continue-as-new), not from
 * asking the server each time whether it still runs.
 */
async function watchFleet(c: Client, name: string): Promise<void> {
  let last = '';
  let ended = false;
  const result = (await fleetHandle(c, name))
    .result()
    .then(
      () => true,
      (err: unknown) => {
        // How the fleet ended (failed, cancelled, terminated); anything else is the connection's
        // error, not the fleet's end, and says so.
        if (err instanceof WorkflowFailedError) return false;
        throw err;
      },
    )
    .finally(() => {
      ended = true;
    });
  result.catch(() => undefined); // thrown where it is awaited, below
  const show = async (): Promise<void> => {
    const status = await queryFleet(c, name).catch((err: unknown) => {
      if (err instanceof NoRunError) throw err;
      return undefined; // between two runs of a continue-as-new, or closing
    });
    if (!status) return;
    const view = renderFleet(status);
    if (view !== last) process.stdout.write(view + '\n');
    last = view;
  };
  while (!ended) {
    await show();
    await Promise.race([result, new Promise((r) => setTimeout(r, 2000))]);
  }
  await show();
  if (!(await result)) process.exitCode = 1;
}

async function fleetStatusCommand(
  flags: FleetFlags & { watch?: boolean },
  output: OutputFormat,
): Promise<void> {
  if (output !== 'text' && flags.watch)
    throw new InvalidInputError(
      `--watch redraws tables: leave out --output ${output}, or poll without --watch`,
    );
  const c = await client(flags);
  if (flags.watch) await watchFleet(c, flags.fleet);
  else {
    const status = await queryFleet(c, flags.fleet);
    process.stdout.write(output === 'text' ? renderFleet(status) + '\n' : formatted(status, output));
  }
  await c.connection.close();
}

async function approveFleet(
  flags: FleetFlags & { gate: string; by: string; comment?: string },
): Promise<void> {
  const c = await client(flags);
  const found = await requireRunningFleet(c, flags.fleet, 'approve');
  const status = await found.handle.query(fleetStatusQuery);
  const refusal = approvalRefusal(status.gates, flags.gate, status.phase);
  if (refusal) throw new Error(`gate "${flags.gate}" of fleet ${flags.fleet}: ${refusal.message}`);
  await signalFleet(found, flags.fleet, approveSignal, {
    gate: flags.gate,
    by: flags.by,
    ...(flags.comment ? { comment: flags.comment } : {}),
  });
  process.stdout.write(`approved gate ${flags.gate} of fleet ${flags.fleet} as ${flags.by}\n`);
  await c.connection.close();
}

async function abortFleet(flags: FleetFlags & { reason: string; by: string }): Promise<void> {
  const c = await client(flags);
  const found = await requireRunningFleet(c, flags.fleet, 'abort');
  await signalFleet(found, flags.fleet, abortSignal, { reason: flags.reason, by: flags.by });
  process.stdout.write(
    `asked fleet ${flags.fleet} to abort: no new run starts, the running ones abort and compensate; follow it with runas-migrate status --fleet ${flags.fleet} --watch\n`,
  );
  await c.connection.close();
}

const client = (o: TemporalFlags): Promise<Client> =>
  connectClient({ address: o.address, namespace: o.temporalNamespace });

/** Follows a run to its end, showing each status; returns its report. */
async function follow(handle: WorkflowHandle, workflowId: string): Promise<MigrationReport> {
  const live = liveStatus(workflowId);
  try {
    return await followRun(handle, (s, jobs) => live.show(s, jobs));
  } finally {
    live.done();
  }
}

/** How `plan` and `status` print: tables for people, or the raw object for scripts. */
type OutputFormat = 'text' | 'json' | 'yaml';
const outputOption = () =>
  new Option('-o, --output <format>', 'text, or the raw object as json or yaml')
    .choices(['text', 'json', 'yaml'])
    .default('text');
/** `value` as the machine-readable `format`. */
const formatted = (value: unknown, format: 'json' | 'yaml') =>
  format === 'json' ? JSON.stringify(value, null, 2) + '\n' : toYaml(value);

/**
 * Prints the guardrails that apply to `input` and whether they refuse it (returns true then).
 * An identity that may not read the worker's ConfigMap is told so; the worker enforces them anyway.
 * With `--output json|yaml` this goes to stderr, leaving stdout to the object.
 */
async function showGuardrails(
  kube: Kube,
  input: MigrationInput,
  flags: { guardrails?: string; recordsNamespace?: string; output?: OutputFormat },
): Promise<boolean> {
  const out = flags.output && flags.output !== 'text' ? process.stderr : process.stdout;
  const [{ isKubeError }, { GuardrailCheck, loadGuardrails }] = await Promise.all([
    import('../cluster/kube.js'),
    import('../services/guardrails.js'),
  ]);
  let inForce;
  try {
    inForce = await loadGuardrails({
      kube,
      workerNamespace: recordsNamespaceOf(flags.recordsNamespace),
      file: flags.guardrails,
    });
  } catch (err) {
    if (!isKubeError(err, FailureType.KubeForbidden)) throw err;
    out.write(
      `Guardrails: not readable with this kubeconfig (${err.message.split('. Fix')[0]}): the worker checks them at start; pass --guardrails FILE to see them here\n`,
    );
    return false;
  }
  const refusals = await new GuardrailCheck({ kube, inForce }).checkGuardrails({ run: input }).then(
    () => [],
    (err: unknown) => {
      if (err instanceof TypedFailure && err.type === FailureType.GuardrailRefused)
        return (err.details[0] as { violations: string[] }).violations;
      throw err;
    },
  );
  out.write(renderGuardrails(inForce, refusals) + '\n');
  return refusals.length > 0;
}

recordsOption(
  kubeOption(
    inputOptions(
      program
        .command('plan')
        .description('discover and print what a run would do, and the guardrails that apply; changes nothing')
        .addOption(
          new Option('--guardrails <file>', "the worker's guardrails file, if it has one").env(
            GuardrailsFileEnv,
          ),
        )
        .addOption(outputOption()),
    ),
  ),
).action(
  async (
    flags: InputFlags & {
      kubeconfig?: string;
      guardrails?: string;
      recordsNamespace?: string;
      output: OutputFormat;
    },
  ) => {
    const input = parseMigrationInput(rawInput(flags));
    const [{ Kube }, { Planner }, { PolicyGuard }] = await Promise.all([
      import('../cluster/kube.js'),
      import('../services/planner.js'),
      import('../services/policy-guard.js'),
    ]);
    const kube = Kube.fromKubeconfig(flags.kubeconfig);
    if (await showGuardrails(kube, input, flags)) {
      process.exitCode = 3;
      return;
    }
    const planner = new Planner({ kube, policyGuard: new PolicyGuard({ kube }) });
    const plan = await planner.planMigration({ run: input, owner: { workflowId: 'plan', runId: 'plan' } });
    if (flags.output !== 'text') {
      process.stdout.write(formatted(plan, flags.output));
      if (plan.preflight.length) process.exitCode = 3;
      return;
    }
    process.stdout.write(renderPlan(plan) + '\n');
    if (input.job.image)
      process.stdout.write(
        `Job image: ${input.job.image} (asked for in job.image instead of each StatefulSet's own image; it runs as root with DAC_OVERRIDE over the database volumes)\n`,
      );
    process.stdout.write(`If the run stops after its Jobs started: ${input.recovery}\n`);
    if (plan.preflight.length) process.exitCode = 3;
  },
);

temporalOptions(
  inputOptions(
    program
      .command('start')
      .description('start a migration run (workflow ID runas-migrate-<namespace>), or a fleet of them')
      .option('--task-queue <name>', 'task queue', TaskQueue)
      .addOption(clusterOption())
      .option('--follow', 'show live progress until the run ends')
      .option(
        '--fleet <file>',
        'start a fleet (JSON or YAML: name, defaults, targets, canary, waveSize, failureBudget, approvals); no other input flag with it',
      ),
  ),
).action(
  async (
    flags: InputFlags &
      TemporalFlags & { taskQueue: string; follow?: boolean; fleet?: string; cluster?: string },
  ) => {
    if (flags.fleet) {
      if (flags.cluster) throw new InvalidInputError(NoClusterForFleet);
      return startFleetCommand(flags as FleetStartFlags);
    }
    const c = await client(flags);
    const { input, handle } = await startRun(c, rawInput(flags), {
      taskQueue: flags.taskQueue,
      ...(flags.cluster ? { cluster: flags.cluster } : {}),
    });
    process.stdout.write(`started ${handle.workflowId} for namespace ${input.namespace}\n`);
    if (process.env.TEMPORAL_UI) {
      const { runId } = await handle.describe();
      process.stdout.write(
        `Web UI: ${webUiLink(process.env.TEMPORAL_UI, flags.temporalNamespace ?? 'default', handle.workflowId, runId)}\n`,
      );
    }
    if (input.approvals.length) {
      process.stdout.write(
        `it waits for: ${input.approvals.map((g) => `runas-migrate approve ${runFlags(input.namespace, flags.cluster)} --gate ${g}`).join(', then ')}\n`,
      );
    }
    if (flags.follow) process.stdout.write(renderReport(await follow(handle, handle.workflowId)) + '\n');
    await c.connection.close();
  },
);

temporalOptions(
  program
    .command('approve')
    .description("approve a gate of the namespace's run (plan or relax), or of a fleet")
    .option('-n, --namespace <namespace>', 'Kubernetes namespace')
    .addOption(clusterOption())
    .option('--fleet <name>', 'the fleet instead (gates after-canary, wave-N)')
    .requiredOption('--gate <gate>', 'plan | relax; for a fleet after-canary | wave-N')
    .option('--by <name>', 'who approves', process.env.USER ?? 'operator')
    .option('--comment <text>', 'why'),
).action(
  async (
    flags: TemporalFlags & {
      namespace: string;
      cluster?: string;
      gate: string;
      by: string;
      comment?: string;
      fleet?: string;
    },
  ) => {
    if (oneTarget(flags))
      return approveFleet(flags as FleetFlags & { gate: string; by: string; comment?: string });
    const c = await client(flags);
    const handle = await runningRun(c, flags.namespace, 'approve', flags.cluster);
    const before = await queryStatus(c, flags.namespace, flags.cluster);
    // The run as the operator named it: a run on a named cluster says which cluster.
    const run = targetId(flags);
    const refusal = approvalRefusal(before.gates, flags.gate, before.phase);
    const gate = before.gates.find((g) => g.gate === flags.gate);
    if (refusal?.kind === 'not-a-gate')
      throw new Error(
        `the run of ${run} has no gate "${flags.gate}": its gates are ${
          before.gates
            .filter((g) => g.required)
            .map((g) => g.gate)
            .join(', ') || 'none'
        }: approve one of those (plan comes before relax)`,
      );
    if (refusal?.kind === 'approved')
      throw new Error(`gate "${flags.gate}" of ${run} was already approved by ${gate?.by} at ${gate?.at}`);
    if (refusal?.kind === 'not-reached')
      throw new Error(
        `gate "${flags.gate}" of ${run} is not reached yet (the run is ${before.phase}): approve it when \`runas-migrate status\` shows it waiting`,
      );
    if (refusal) throw new Error(`gate "${flags.gate}" of ${run}: ${refusal.message}`);
    await handle.signal(approveSignal, {
      gate: flags.gate,
      by: flags.by,
      ...(flags.comment ? { comment: flags.comment } : {}),
    });
    process.stdout.write(`approved gate ${flags.gate} of ${run} as ${flags.by}\n`);
    await c.connection.close();
  },
);

temporalOptions(
  program
    .command('abort')
    .description(
      "abort the namespace's run: it compensates (policies re-enforced, replicas and template restored)",
    )
    .option('-n, --namespace <namespace>', 'Kubernetes namespace')
    .addOption(clusterOption())
    .option('--fleet <name>', 'abort a fleet: no new run starts, the running ones are aborted and compensate')
    .requiredOption('--reason <text>', 'why')
    .option('--by <name>', 'who aborts', process.env.USER ?? 'operator'),
).action(
  async (
    flags: TemporalFlags & {
      namespace: string;
      cluster?: string;
      reason: string;
      by: string;
      fleet?: string;
    },
  ) => {
    if (oneTarget(flags)) return abortFleet(flags as FleetFlags & { reason: string; by: string });
    const c = await client(flags);
    await (
      await runningRun(c, flags.namespace, 'abort', flags.cluster)
    ).signal(abortSignal, { reason: flags.reason, by: flags.by });
    process.stdout.write(
      `asked the run of ${targetId(flags)} to abort; follow it with runas-migrate status ${runFlags(flags.namespace, flags.cluster)} --watch\n`,
    );
    await c.connection.close();
  },
);

temporalOptions(
  program
    .command('status')
    .description("show the status of the namespace's run, or of a fleet")
    .option('-n, --namespace <namespace>', 'Kubernetes namespace')
    .addOption(clusterOption())
    .option('--fleet <name>', "the fleet's view instead: a row per namespace")
    .option('--watch', 'refresh until the run ends')
    .addOption(outputOption())
    .option('--json', 'the same as --output json'),
).action(
  async (
    flags: TemporalFlags & {
      namespace: string;
      cluster?: string;
      watch?: boolean;
      json?: boolean;
      output: OutputFormat;
      fleet?: string;
    },
  ) => {
    const output: OutputFormat = flags.json ? 'json' : flags.output;
    if (oneTarget(flags)) return fleetStatusCommand(flags as FleetFlags & { watch?: boolean }, output);
    if (output !== 'text' && flags.watch)
      throw new InvalidInputError(
        `--watch redraws tables: leave out --output ${output}, or poll without --watch`,
      );
    const c = await client(flags);
    const id = workflowIdOf(flags.namespace, flags.cluster);
    if (output !== 'text')
      process.stdout.write(formatted(await queryStatus(c, flags.namespace, flags.cluster), output));
    else if (flags.watch) {
      try {
        process.stdout.write(renderReport(await follow(c.workflow.getHandle(id), id)) + '\n');
      } catch (err) {
        if (!(err instanceof WorkflowFailedError)) throw err;
        process.stdout.write(`run ended: ${reasonOf(err.cause ?? err)}\n`);
        process.exitCode = 1;
      }
    } else {
      const progress = await runProgress(c, flags.namespace, flags.cluster);
      try {
        const status = await c.connection.withDeadline(Date.now() + StatusQueryTimeoutMs, () =>
          queryStatus(c, flags.namespace, flags.cluster),
        );
        process.stdout.write(
          [renderStatus(status, id, progress.jobs), renderProgress(progress)].filter(Boolean).join('\n') +
            '\n',
        );
      } catch (err) {
        if (progress.status !== 'RUNNING') throw err;
        // A stuck run cannot answer: Temporal's own view of it is all there is.
        process.stdout.write(
          [
            `run ${id} — ${progress.status} on task queue ${progress.taskQueue} — it did not answer its status query within ${StatusQueryTimeoutMs / 1000} s (${reasonOf(err)})`,
            renderProgress(progress),
          ]
            .filter(Boolean)
            .join('\n') + '\n',
        );
        process.exitCode = 2;
      }
    }
    await c.connection.close();
  },
);

program.parseAsync().catch((err: unknown) => {
  const message =
    err instanceof WorkflowFailedError
      ? `run failed: ${reasonOf(err.cause ?? err)}`
      : err instanceof Error
        ? err.message
        : String(err);
  process.stderr.write(`runas-migrate: ${message}\n`);
  process.exit(1);
});
