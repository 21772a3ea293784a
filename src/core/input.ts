/**
 * The input of a migration run, validated with zod at every edge (CLI and workflow start):
 * a bad input fails with a message that names the field and the fix, before anything changes.
 */
import { FailureType, TypedFailure } from './failures.js';
import { z } from 'zod';
import { ProfileName } from './profiles.js';
import { AllDatabaseChecks, type DatabaseCheck } from './verification.js';

const MaxId = 2147483647;

/** Gates a run can wait on for an `approve` signal. */
export const Gate = { Plan: 'plan', Relax: 'relax' } as const;
export type Gate = (typeof Gate)[keyof typeof Gate];

/**
 * What a failure, `abort` or cancel does once ownership Jobs may have changed files, so that
 * files and template always agree: `roll-forward` finishes the change (waits for the Jobs that
 * run, then starts the databases as the new IDs), `roll-back` stops the Jobs and changes the
 * files back with reverse Jobs under a fresh, counted window, then puts the old template back.
 */
export const Recovery = { RollForward: 'roll-forward', RollBack: 'roll-back' } as const;
export type Recovery = (typeof Recovery)[keyof typeof Recovery];

/**
 * The only flags `securityContext.helm.extraArgs` may pass: others could run code with the
 * worker's token (`--post-renderer`), copy files into the release (`--set-file`) or send the
 * upgrade elsewhere (`--namespace`, `--kube-*`).
 */
export const HelmExtraArgs: readonly RegExp[] = [
  /^--wait$/,
  /^--wait-for-jobs$/,
  /^--atomic$/,
  /^--timeout=\d+[smh]$/,
  /^--version=[\w.+-]+$/,
];
const HelmExtraArgsText =
  '--wait, --wait-for-jobs, --atomic, --timeout=<n>[s|m|h], --version=<chart version>';

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses a duration such as `90s`, `15m`, `24h`, `2d`; undefined when it is not one. */
export function parseDuration(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(s.trim());
  return m ? Number(m[1]) * durationUnits[m[2]!]! : undefined;
}

/** A duration field: positive, such as "90s", "15m", "24h" or "2d"; the error names `what`. */
export const duration = (what: string) =>
  z.string().refine((s) => (parseDuration(s) ?? 0) > 0, {
    error: (iss) =>
      `${what} must be a positive duration such as "90s", "15m", "24h" or "2d", not ${JSON.stringify(iss.input)}`,
  });

/** The message of a missing or mistyped field: say which, since the fix differs. */
const required = (type: string, what: string) => (iss: { input: unknown }) =>
  iss.input === undefined
    ? `must be ${type} (it is missing): give ${what}`
    : `must be ${type}, not ${JSON.stringify(iss.input)}`;

const id = (what: string) =>
  z
    .number({ error: required('a number', what) })
    .int('must be a whole number')
    .min(1, {
      error: (iss) =>
        iss.input === 0
          ? 'must be at least 1: 0 would run the databases as root, which the restored policies refuse'
          : `must be at least 1: ${String(iss.input)} is not a valid ID`,
    })
    .max(MaxId, `must be at most ${MaxId}`);

const dnsLabel = (what: string) =>
  z
    .string({ error: required('a string', what) })
    .regex(
      /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/,
      'must be a Kubernetes name: lowercase letters, digits and "-", starting and ending alphanumeric',
    )
    .max(63, 'must be at most 63 characters');

const database = z.object({
  statefulSet: dnsLabel('the name of the StatefulSet'),
  container: z.string().min(1, 'must name the database container'),
  /** Names of the pod template's volumes (claim templates) to migrate; default every PVC-backed mount of the container. */
  volumes: z.array(z.string().min(1)).min(1, 'when given, must name at least one volume').optional(),
});

const toleration = z.object({
  key: z.string().optional(),
  operator: z.enum(['Exists', 'Equal']).optional(),
  value: z.string().optional(),
  effect: z.enum(['NoSchedule', 'PreferNoSchedule', 'NoExecute']).optional(),
  tolerationSeconds: z.number().int().optional(),
});

/** The zod schema of a run's input, with its defaults. */
export const MigrationInputSchema = z
  .object({
    namespace: dnsLabel('the Kubernetes namespace to migrate'),
    uid: id('the user ID the databases will run as'),
    gid: id('the group ID the databases will run as'),
    supplementalGroups: z.array(id('a group ID')).optional(),
    profile: z
      .enum([ProfileName.ItrsAnalytics], {
        message: `profile must be "${ProfileName.ItrsAnalytics}" (or give "databases")`,
      })
      .optional(),
    databases: z
      .array(database)
      .min(1, 'databases, when given, must list at least one StatefulSet')
      .optional(),
    approvals: z
      .array(z.enum([Gate.Plan, Gate.Relax]))
      .refine((a) => new Set(a).size === a.length, {
        error: 'lists a gate more than once: name each gate once, e.g. ["plan", "relax"]',
      })
      .default([Gate.Plan, Gate.Relax]),
    approvalTimeout: duration('approvalTimeout').default('24h'),
    /**
     * How long a step may go without a sign of life from its worker before Temporal runs it
     * again on another worker: bounds the recovery after a worker dies.
     */
    heartbeatTimeout: duration('heartbeatTimeout').default('30s'),
    securityContext: z
      .object({
        apply: z.enum(['patch', 'helm', 'external', 'none']).default('external'),
        helm: z
          .object({
            release: dnsLabel('the Helm release'),
            chart: z
              .string({ error: required('a string', 'the chart, e.g. "itrs/iax-platform"') })
              .regex(
                /^(oci:\/\/[a-z0-9.-]+(:\d+)?(\/[a-z0-9._-]+)+|[a-z0-9][a-z0-9._-]*\/[a-z0-9][a-z0-9._-]*)$/,
                'must be a repository chart ("repo/chart") or an OCI reference ("oci://registry/path"): a local path or URL is refused',
              ),
            valuesFile: z
              .string()
              .regex(
                /^(?!\/)(?!.*(^|\/)\.\.(\/|$))[\w./-]+\.ya?ml$/,
                'must be a relative .yaml/.yml path inside the worker\'s working directory (no "/" at the start, no ".."): its content goes into the release',
              )
              .optional(),
            extraArgs: z
              .array(
                z.string().refine((a) => HelmExtraArgs.some((allowed) => allowed.test(a)), {
                  error: (iss) =>
                    `${JSON.stringify(iss.input)} is not allowed: helm runs with the worker's credentials, so only ${HelmExtraArgsText} may be passed`,
                }),
              )
              .default([]),
          })
          .optional(),
      })
      .default({ apply: 'external' })
      .refine((s) => s.apply !== 'helm' || s.helm !== undefined, {
        message: 'securityContext.helm {release, chart} is required when apply is "helm"',
        path: ['helm'],
      }),
    window: z
      .object({
        mode: z.enum(['admission', 'job-duration']).default('admission'),
        max: duration('window.max').default('15m'),
        /**
         * How long after window.max the sweeper may close a window whose run is stuck (a workflow
         * task failing for good, no worker left): the record's notAfter is window.max + grace.
         */
        grace: duration('window.grace').default('5m'),
      })
      .default({ mode: 'admission', max: '15m', grace: '5m' }),
    policies: z
      .object({
        podSecurity: z.enum(['baseline', 'privileged']).default('baseline'),
        gatekeeper: z.boolean().default(true),
      })
      .default({ podSecurity: 'baseline', gatekeeper: true }),
    job: z
      .object({
        image: z.string().min(1).optional(),
        podAnnotations: z.record(z.string(), z.string()).default({}),
        podLabels: z.record(z.string(), z.string()).default({}),
        nodeSelector: z.record(z.string(), z.string()).default({}),
        tolerations: z.array(toleration).default([]),
        resources: z
          .object({
            requests: z.record(z.string(), z.string()).optional(),
            limits: z.record(z.string(), z.string()).optional(),
          })
          .default({}),
        timeout: duration('job.timeout').default('6h'),
        /** How many times a failed Job is run again (each under a fresh window). */
        retries: z.number().int().min(0).max(5).default(1),
      })
      .default({
        podAnnotations: {},
        podLabels: {},
        nodeSelector: {},
        tolerations: [],
        resources: {},
        timeout: '6h',
        retries: 1,
      }),
    recovery: z
      .enum([Recovery.RollForward, Recovery.RollBack], {
        message: `recovery must be "${Recovery.RollForward}" or "${Recovery.RollBack}"`,
      })
      .default(Recovery.RollForward),
    /**
     * The checks of every replica once the databases are back, run inside the database
     * container (exec) and on its log; user and database default to the profile's.
     */
    verify: z
      .object({
        checks: z
          .array(
            z.enum(AllDatabaseChecks as [DatabaseCheck, ...DatabaseCheck[]], {
              message: `each check must be one of ${AllDatabaseChecks.map((c) => `"${c}"`).join(', ')}`,
            }),
          )
          .refine((a) => new Set(a).size === a.length, {
            error: 'lists a check more than once: name each check once',
          })
          .default([...AllDatabaseChecks]),
        user: z.string().min(1, 'must name the database user, e.g. "postgres"').optional(),
        database: z.string().min(1, 'must name a database, e.g. "postgres"').optional(),
        commands: z
          .object({
            sql: z.array(z.string().min(1)).min(1, 'must be a command and its arguments').optional(),
            deep: z.array(z.string().min(1)).min(1, 'must be a command and its arguments').optional(),
          })
          .strict()
          .default({}),
        timeout: duration('verify.timeout').default('30m'),
        /**
         * How many checks run at once over all replicas (each an exec stream through the API
         * server), so a StatefulSet of many replicas does not open replicas × checks of them.
         */
        checksAtOnce: z
          .number({ message: 'must be a whole number of checks, e.g. 8' })
          .int('must be a whole number of checks, e.g. 8')
          .min(1, 'must be at least 1 (1: one check after another)')
          .max(64, 'must be at most 64: more exec streams at once only load the API server')
          .default(8),
        /** Read Gatekeeper's audit of the namespace once the policies are back (the seed's last check). */
        audit: z.boolean().default(true),
        /** How long to wait for an audit pass that started after the Jobs were gone. */
        auditTimeout: duration('verify.auditTimeout').default('3m'),
      })
      .strict()
      .default({
        checks: [...AllDatabaseChecks],
        commands: {},
        timeout: '30m',
        checksAtOnce: 8,
        audit: true,
        auditTimeout: '3m',
      }),
    dryRun: z.boolean().default(false),
  })
  .strict()
  .refine((i) => i.recovery !== Recovery.RollBack || ['patch', 'helm'].includes(i.securityContext.apply), {
    message:
      'roll-back puts the old template back itself (a patch, or helm rollback), so it needs securityContext.apply "patch" or "helm": use recovery "roll-forward" or one of those',
    path: ['recovery'],
  })
  .refine((i) => !(i.profile && i.databases), {
    message: 'give either profile or databases, not both',
    path: ['profile'],
  })
  .transform((i) => ({
    ...i,
    profile: i.databases ? undefined : (i.profile ?? ProfileName.ItrsAnalytics),
    supplementalGroups: i.supplementalGroups ?? [i.gid],
  }));

/** A run's input as the operator writes it. */
export type MigrationInputRaw = z.input<typeof MigrationInputSchema>;
/** A run's input with every default filled in. */
export type MigrationInput = z.output<typeof MigrationInputSchema>;

/** Thrown for an input that does not validate; the message names each field and the fix. */
export class InvalidInputError extends TypedFailure {
  override readonly name = 'InvalidInputError';
  constructor(message: string) {
    super(FailureType.InvalidInput, message);
  }
}

/**
 * What a workflow says when it refuses its input at start. The CLI checked the same input with
 * its own version first, so a field the worker does not know, in an input the CLI accepted, means
 * the worker is older than the CLI (a worker rolled back, or not yet upgraded): say so, rather
 * than only "remove them", which would drop what the operator asked for, `maxOpenWindows` say.
 */
export function refusedByWorker(err: InvalidInputError): string {
  return err.message.includes('unknown field(s)')
    ? `${err.message}. If runas-migrate start accepted this input, this worker is older than that CLI: upgrade the workers first, then the CLI`
    : err.message;
}

/** Validates a raw input; throws {@link InvalidInputError} listing every problem. */
export function parseMigrationInput(raw: unknown): MigrationInput {
  const parsed = MigrationInputSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((i) => {
    const field = i.path.length ? i.path.join('.') : '(input)';
    const message =
      i.code === 'unrecognized_keys'
        ? `unknown field(s) ${i.keys.join(', ')}: remove them (see the README for the input)`
        : i.code === 'invalid_type' && i.path.length === 0
          ? `must be an object such as {"namespace": "itrs", "uid": 5000, "gid": 5000}, not ${
              raw === undefined ? 'nothing' : JSON.stringify(raw)
            }`
          : i.message;
    return `${field}: ${message}`;
  });
  throw new InvalidInputError(`invalid input: ${problems.join('; ')}`);
}
