/**
 * The guardrails the security team sets beside the worker: loaded once when the worker starts
 * (a file wins over the ConfigMap in the worker's namespace; neither: the defaults), and checked
 * against each run before it changes anything.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import type { Kube } from '../cluster/kube.js';
import { isKubeError } from '../cluster/kube.js';
import { FailureType, TypedFailure } from '../core/failures.js';
import {
  defaultsInForce,
  guardrailViolations,
  GuardrailsConfigMap,
  InvalidGuardrailsError,
  parseGuardrails,
  type Guardrails,
  type GuardrailsInForce,
} from '../core/guardrails.js';
import type { MigrationInput } from '../core/input.js';

/** Where to load guardrails from. */
export interface GuardrailsSource {
  kube: Kube;
  /** The worker's own namespace: where the ConfigMap lives, and never a target. */
  workerNamespace: string;
  /** A guardrails file (YAML or JSON); wins over the ConfigMap. */
  file?: string;
}

/**
 * Loads the guardrails in force.
 *
 * @throws `InvalidGuardrails` when the file or ConfigMap does not validate: a worker must not
 * start with guardrails it cannot read.
 */
/** Parses guardrails text (YAML or JSON) from `where`; any problem names `where`. */
function guardrailsFrom(text: string | undefined, where: string): Guardrails {
  if (text === undefined)
    throw new InvalidGuardrailsError(
      `invalid guardrails in ${where}: it has no key ${GuardrailsConfigMap.key}`,
    );
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new InvalidGuardrailsError(`invalid guardrails in ${where}: not YAML: ${(err as Error).message}`);
  }
  return parseGuardrails(raw, where);
}

export async function loadGuardrails(from: GuardrailsSource): Promise<GuardrailsInForce> {
  const { workerNamespace } = from;
  if (from.file) {
    const text = readFileSync(from.file, 'utf8');
    return {
      guardrails: guardrailsFrom(text, `file ${from.file}`),
      source: `file ${from.file}`,
      version: `sha256:${createHash('sha256').update(text).digest('hex').slice(0, 16)}`,
      workerNamespace,
    };
  }
  const where = `ConfigMap ${workerNamespace}/${GuardrailsConfigMap.name}`;
  try {
    const cm = await from.kube.readConfigMap(workerNamespace, GuardrailsConfigMap.name);
    return {
      guardrails: guardrailsFrom(cm.data?.[GuardrailsConfigMap.key], where),
      source: where,
      version: `uid ${cm.metadata?.uid} resourceVersion ${cm.metadata?.resourceVersion}`,
      workerNamespace,
    };
  } catch (err) {
    if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
    return defaultsInForce(workerNamespace, `defaults (no ${where})`);
  }
}

/** Checks runs against the guardrails the worker loaded. */
export class GuardrailCheck {
  constructor(private readonly deps: { kube: Kube; inForce: GuardrailsInForce }) {}

  /**
   * Checks a run against the guardrails; reads only the target namespace's labels.
   *
   * @returns the guardrails in force, for the run's history and report.
   * @throws `GuardrailRefused` (non-retryable) naming every guardrail the run asks to exceed.
   */
  async checkGuardrails(input: { run: MigrationInput }): Promise<GuardrailsInForce> {
    const labels = await this.deps.kube
      .readNamespace(input.run.namespace)
      .then((ns) => ns.metadata?.labels ?? {})
      .catch((err: unknown) => {
        if (isKubeError(err, FailureType.KubeNotFound)) return {};
        throw err;
      });
    const violations = guardrailViolations(input.run, labels, this.deps.inForce);
    if (violations.length)
      throw TypedFailure.nonRetryable(
        `refused by the guardrails (${this.deps.inForce.source}, version ${this.deps.inForce.version}): ${violations.join('; ')}`,
        FailureType.GuardrailRefused,
        { guardrails: this.deps.inForce, violations },
      );
    return this.deps.inForce;
  }
}
