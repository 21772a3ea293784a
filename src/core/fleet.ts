/**
 * The input of a fleet run (`migrateFleet`): many namespaces, on one or many clusters, each
 * migrated by its own `migrateOwnership` run, a canary first and then in waves. Validated here,
 * by the CLI before the start and by the workflow again; each target's input is the shared
 * `defaults` with the target's own fields over them, validated as a run's input.
 */
import { z } from 'zod';
import { duration, InvalidInputError, parseMigrationInput, type MigrationInput } from './input.js';
import { clusterTaskQueue, runWorkflowId } from './names.js';

const name = (what: string) =>
  z
    .string({ error: `must be ${what}` })
    .regex(
      /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/,
      'must be lowercase letters, digits and "-", starting and ending alphanumeric',
    )
    .max(40, 'must be at most 40 characters');

const clusterName = name('a cluster name such as "prod-eu"');

/**
 * Checks a `--cluster` name the way a fleet file's `cluster` is checked: a worker's name a fleet
 * could not route to would leave it polling a queue nothing reaches; a run's would name no run.
 * `meaning` says what the flag stands for where it was given.
 */
export function checkClusterName(
  cluster: string,
  meaning = 'the fleet file\'s "cluster" of the targets this worker serves',
): string {
  const parsed = clusterName.safeParse(cluster);
  if (!parsed.success)
    throw new InvalidInputError(
      `invalid input: --cluster "${cluster}": ${parsed.error.issues[0]?.message ?? 'not a cluster name'} (${meaning})`,
    );
  return parsed.data;
}

/** The most targets a fleet may list: its history holds each one's whole input (resolvedFleetInput). */
export const MaxFleetTargets = 1000;

/** How a fleet asks for approvals. */
export const FleetApprovals = {
  /** No fleet gate, and each run without its own gates. */
  None: 'none',
  /** One gate after the canary (`after-canary`); the runs without their own gates. */
  AfterCanary: 'after-canary',
  /** A gate before every wave (`wave-1`, `wave-2`, …); the runs without their own gates. */
  EachWave: 'each-wave',
  /** No fleet gate: each run keeps the approvals of its input (`runas-migrate approve -n … [--cluster …]`). */
  EachRun: 'each-run',
} as const;
export type FleetApprovals = (typeof FleetApprovals)[keyof typeof FleetApprovals];

const target = z
  .object({
    namespace: z.string({ error: 'must name the namespace to migrate' }),
    /** The cluster (its workers poll `runas-migrate-<cluster>`); the fleet's own queue when absent. */
    cluster: clusterName.optional(),
    /** Fields of this target's run over `defaults` (objects merged, everything else replaced). */
    input: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();

/** The zod schema of a fleet's input, with its defaults. */
export const FleetInputSchema = z
  .object({
    name: name('the fleet\'s name, e.g. "uid-5000-q4"'),
    /** Fields every target's run shares (a run's input without `namespace`). */
    defaults: z.record(z.string(), z.unknown()).default({}),
    targets: z.array(target).min(1, 'must list at least one target {namespace, cluster?}'),
    /** Run the first target alone first, and go on only if it succeeds. */
    canary: z.boolean().default(true),
    /** How many runs a wave starts at once. */
    waveSize: z.number().int().min(1, 'must be at least 1').max(100, 'must be at most 100').default(5),
    /** How many runs may fail before the fleet stops starting waves (0: stop at the first). */
    failureBudget: z.number().int().min(0, 'must be 0 or more').default(0),
    approvals: z
      .enum(Object.values(FleetApprovals) as [FleetApprovals, ...FleetApprovals[]], {
        message: `approvals must be one of ${Object.values(FleetApprovals).join(', ')}`,
      })
      .default(FleetApprovals.AfterCanary),
    /** How long a fleet gate waits for its approval before the fleet stops. */
    approvalTimeout: duration('approvalTimeout').default('24h'),
    /**
     * How many of the fleet's runs may have their namespace relaxed at once (a security window
     * open); a run past it waits, its databases stopped, before it relaxes. Unset: no limit.
     */
    maxOpenWindows: z.number().int().min(1, 'must be at least 1 (or left out: no limit)').optional(),
    /** Runs after which the fleet continues as new (between waves), keeping its history short. */
    continueAfterRuns: z.number().int().min(1).default(200),
  })
  .strict();

/** A fleet's input as the operator writes it. */
export type FleetInputRaw = z.input<typeof FleetInputSchema>;

/** One target of a fleet, resolved: its run's workflow ID, task queue and validated input. */
export interface FleetTarget {
  /** `cluster/namespace`, or the namespace alone. */
  id: string;
  namespace: string;
  cluster: string | null;
  workflowId: string;
  taskQueue: string;
  input: MigrationInput;
}

/** A fleet's input with every default filled in and every target resolved. */
export type FleetInput = Omit<z.output<typeof FleetInputSchema>, 'targets'> & { targets: FleetTarget[] };

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** `over` on `base`: objects merged key by key, anything else replaced. */
export function mergeInput(
  base: Record<string, unknown>,
  over: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over))
    out[k] = isObject(v) && isObject(out[k]) ? mergeInput(out[k], v) : v;
  return out;
}

/** The target's ID as the status shows it. */
export const targetId = (t: { namespace: string; cluster?: string | null }) =>
  t.cluster ? `${t.cluster}/${t.namespace}` : t.namespace;

/**
 * Validates a fleet's input and each target's run input; `baseTaskQueue` is the queue targets
 * without a cluster run on (and the prefix of the clusters' queues).
 *
 * @throws InvalidInputError naming every problem, by field (`targets[2].input.uid: …`).
 */
export function parseFleetInput(raw: unknown, baseTaskQueue?: string): FleetInput {
  const parsed = FleetInputSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => {
      const field = i.path.length ? i.path.join('.') : '(fleet)';
      return i.code === 'unrecognized_keys'
        ? `${field}: unknown field(s) ${i.keys.join(', ')}: remove them (see the README's fleet input)`
        : `${field}: ${i.message}`;
    });
    throw new InvalidInputError(`invalid fleet: ${problems.join('; ')}`);
  }
  const fleet = parsed.data;
  const problems: string[] = [];
  if ('namespace' in fleet.defaults)
    problems.push('defaults.namespace: each target names its namespace; remove it from defaults');
  // Without a canary there is nothing to wait after: the fleet would run with no gate at all.
  if (!fleet.canary && fleet.approvals === FleetApprovals.AfterCanary)
    problems.push(
      'approvals: after-canary (the default) needs canary: true; without a canary say how the fleet is approved: each-wave, each-run or none',
    );
  const seen = new Set<string>();
  const targets: FleetTarget[] = [];
  fleet.targets.forEach((t, i) => {
    const id = targetId(t);
    if (seen.has(id))
      problems.push(`targets[${i}]: ${id} is listed twice: list each namespace once per cluster`);
    seen.add(id);
    if (t.input && 'namespace' in t.input)
      problems.push(`targets[${i}].input.namespace: give the namespace as targets[${i}].namespace`);
    try {
      const input = parseMigrationInput({
        ...mergeInput(fleet.defaults, t.input ?? {}),
        namespace: t.namespace,
      });
      targets.push({
        id,
        namespace: input.namespace,
        cluster: t.cluster ?? null,
        workflowId: runWorkflowId(input.namespace, t.cluster),
        taskQueue: clusterTaskQueue(t.cluster, baseTaskQueue),
        input,
      });
    } catch (err) {
      if (!(err instanceof InvalidInputError)) throw err;
      problems.push(`targets[${i}] (${id}): ${err.message.replace(/^invalid input: /, '')}`);
    }
  });
  if (problems.length) throw new InvalidInputError(`invalid fleet: ${problems.join('; ')}`);
  return { ...fleet, targets };
}

/**
 * The fleet's input with every default written out and each target's whole run input: what the
 * fleet's workflow is started and continued with, so that a later change of a default does not
 * change what an open fleet does when it is replayed. Parsed again it gives the same fleet.
 */
export function resolvedFleetInput(fleet: FleetInput): FleetInputRaw {
  const { targets, defaults, ...settings } = fleet;
  void defaults;
  return {
    ...settings,
    targets: targets.map((t) => {
      const { namespace, ...own } = t.input;
      return { namespace, ...(t.cluster ? { cluster: t.cluster } : {}), input: own };
    }),
  };
}

/**
 * The waves of a fleet, as indexes into its targets: the canary alone first (when asked), then
 * waves of `waveSize` in the order the targets are listed.
 */
export function wavesOf(count: number, canary: boolean, waveSize: number): number[][] {
  const order = Array.from({ length: count }, (_, i) => i);
  const waves: number[][] = [];
  if (canary && count > 0) waves.push(order.splice(0, 1));
  for (let i = 0; i < order.length; i += waveSize) waves.push(order.slice(i, i + waveSize));
  return waves;
}
