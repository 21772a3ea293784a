/**
 * Guardrails: what the security team allows a run to do, set beside the worker (a file or a
 * ConfigMap in the worker's own namespace), never in the run's input. A run that asks for more
 * is refused before anything changes, naming the guardrail and where it is set. Pure: the
 * schema, the defaults, and the check.
 */
import { z } from 'zod';
import { FailureType, TypedFailure } from './failures.js';
import { parseDuration, type Gate, type MigrationInput } from './input.js';

/** Name of the guardrails ConfigMap in the worker's namespace, and its key. */
export const GuardrailsConfigMap = { name: 'runas-migrate-guardrails', key: 'guardrails.yaml' } as const;

/** Environment variable naming a guardrails file (it wins over the ConfigMap). */
export const GuardrailsFileEnv = 'RUNAS_MIGRATE_GUARDRAILS';

/** Namespaces no run may ever target, whatever the guardrails say (the worker's own is added). */
export const AlwaysDeniedNamespaces = ['kube-system', 'kube-public', 'kube-node-lease'] as const;

const durationText = (what: string) =>
  z.string().refine((s) => (parseDuration(s) ?? 0) > 0, {
    error: `${what}: must be a duration such as 90s, 15m, 24h or 2d`,
  });
const glob = z
  .string()
  .min(1)
  .regex(/^[a-z0-9*?.-]+$/, 'must be a namespace name or a glob of one (* and ?)');

/** The guardrails file or ConfigMap, as the security team writes it. */
export const GuardrailsSchema = z.strictObject({
  namespaces: z
    .strictObject({
      /** Names or globs a run may target; absent: any namespace not denied. */
      allow: z.array(glob).optional(),
      /** A label selector (`key=value,key2=value2`) the target namespace must match. */
      selector: z
        .string()
        .regex(/^([\w./-]+=[\w.-]*)(,[\w./-]+=[\w.-]*)*$/, 'must be key=value[,key=value…]')
        .optional(),
      /** Names or globs a run may never target, besides the built-in ones. */
      deny: z.array(glob).default([]),
      /** The Gatekeeper namespace (denied). */
      gatekeeper: z.string().min(1).default('gatekeeper-system'),
    })
    .default({ deny: [], gatekeeper: 'gatekeeper-system' }),
  /** The longest `window.max` a run may ask for. */
  maxWindow: durationText('maxWindow').default('15m'),
  /** The longest `approvalTimeout` a run may ask for. */
  maxApprovalWait: durationText('maxApprovalWait').default('24h'),
  /** The most a run may relax Pod Security Admission's `enforce` to. */
  maxPodSecurity: z.enum(['baseline', 'privileged']).default('baseline'),
  /** Images (or globs of them) a run may ask for in `job.image`; none: only each StatefulSet's own. */
  jobImages: z.array(z.string().min(1)).default([]),
  /** Gates every run must wait at. */
  requiredGates: z.array(z.enum(['plan', 'relax'])).default([]),
});

/** The guardrails with every default filled in. */
export type Guardrails = z.output<typeof GuardrailsSchema>;

/** The guardrails in force on a worker, and where they come from. */
export interface GuardrailsInForce {
  guardrails: Guardrails;
  /** Where they are set, e.g. `ConfigMap runas-migrate/runas-migrate-guardrails` or a file path. */
  source: string;
  /** Which version: the ConfigMap's uid and resourceVersion, or the file's sha256; "defaults" when none. */
  version: string;
  /** The worker's own namespace, denied to runs. */
  workerNamespace: string;
}

/** The defaults, in force when neither a file nor a ConfigMap sets guardrails. */
export function defaultGuardrails(): Guardrails {
  return GuardrailsSchema.parse({});
}

/** The defaults as the guardrails in force of a worker in `workerNamespace`. */
export function defaultsInForce(workerNamespace: string, source = 'defaults'): GuardrailsInForce {
  return { guardrails: defaultGuardrails(), source, version: 'defaults', workerNamespace };
}

/** Thrown for a guardrails file or ConfigMap that does not validate: the worker does not start. */
export class InvalidGuardrailsError extends TypedFailure {
  override readonly name = 'InvalidGuardrailsError';
  constructor(message: string) {
    super(FailureType.InvalidGuardrails, message);
  }
}

/** Validates guardrails as written; throws naming each field and where it is set. */
export function parseGuardrails(raw: unknown, source: string): Guardrails {
  const parsed = GuardrailsSchema.safeParse(raw ?? {});
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(guardrails)'}: ${i.message}`);
  throw new InvalidGuardrailsError(`invalid guardrails in ${source}: ${problems.join('; ')}`);
}

const globRegExp = (g: string) =>
  new RegExp(
    `^${g
      .replace(/[.+^${}()|[\]\\-]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
const matches = (name: string, globs: readonly string[]) => globs.some((g) => globRegExp(g).test(name));
const levelRank = { baseline: 1, privileged: 2 } as const;

/**
 * What `input` asks for beyond the guardrails: one line per guardrail, naming it, its value and
 * where it is set. Empty: the run may go on. `labels` are the target namespace's labels.
 */
export function guardrailViolations(
  input: MigrationInput,
  labels: Record<string, string>,
  inForce: GuardrailsInForce,
): string[] {
  const g = inForce.guardrails;
  const at = `(guardrails from ${inForce.source})`;
  const ns = input.namespace;
  const out: string[] = [];
  const denied = [...AlwaysDeniedNamespaces, g.namespaces.gatekeeper, inForce.workerNamespace];
  if (denied.includes(ns))
    out.push(`namespace ${ns} is never a target: it is a system, Gatekeeper or the worker's own namespace`);
  else if (matches(ns, g.namespaces.deny))
    out.push(`namespace ${ns} matches namespaces.deny [${g.namespaces.deny.join(', ')}] ${at}`);
  else if (g.namespaces.allow && !matches(ns, g.namespaces.allow))
    out.push(`namespace ${ns} is not in namespaces.allow [${g.namespaces.allow.join(', ')}] ${at}`);
  if (g.namespaces.selector) {
    const missing = g.namespaces.selector
      .split(',')
      .map((kv) => kv.split('='))
      .filter(([k, v]) => labels[k!] !== v)
      .map(([k, v]) => `${k}=${v}`);
    if (missing.length)
      out.push(
        `namespace ${ns} does not match namespaces.selector ${g.namespaces.selector} (missing ${missing.join(', ')}) ${at}`,
      );
  }
  const ms = (d: string) => parseDuration(d) ?? 0;
  if (ms(input.window.max) > ms(g.maxWindow))
    out.push(`window.max ${input.window.max} is longer than maxWindow ${g.maxWindow} ${at}`);
  if (ms(input.approvalTimeout) > ms(g.maxApprovalWait))
    out.push(
      `approvalTimeout ${input.approvalTimeout} is longer than maxApprovalWait ${g.maxApprovalWait} ${at}`,
    );
  if (levelRank[input.policies.podSecurity] > levelRank[g.maxPodSecurity])
    out.push(
      `policies.podSecurity ${input.policies.podSecurity} relaxes more than maxPodSecurity ${g.maxPodSecurity} ${at}`,
    );
  if (input.job.image && !g.jobImages.some((i) => globRegExp(i).test(input.job.image!)))
    out.push(
      `job.image ${input.job.image} is not in jobImages [${g.jobImages.join(', ')}]: leave it out to use each StatefulSet's own image ${at}`,
    );
  const missingGates = g.requiredGates.filter((gate: Gate) => !input.approvals.includes(gate));
  if (missingGates.length)
    out.push(`approvals must include ${missingGates.join(', ')} (requiredGates ${at})`);
  return out;
}
