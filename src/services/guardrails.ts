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
  defaultGuardrails,
  guardrailViolations,
  GuardrailsConfigMap,
  parseGuardrails,
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
export async function loadGuardrails(from: GuardrailsSource): Promise<GuardrailsInForce> {
  const { workerNamespace } = from;
  if (from.file) {
    const text = readFileSync(from.file, 'utf8');
    return {
      guardrails: parseGuardrails(parseYaml(text), `file ${from.file}`),
      source: `file ${from.file}`,
      version: `sha256:${createHash('sha256').update(text).digest('hex').slice(0, 16)}`,
      workerNamespace,
    };
  }
  const where = `ConfigMap ${workerNamespace}/${GuardrailsConfigMap.name}`;
  try {
    const cm = await from.kube.readConfigMap(workerNamespace, GuardrailsConfigMap.name);
    const text = cm.data?.[GuardrailsConfigMap.key];
    if (text === undefined)
      throw TypedFailure.nonRetryable(
        `invalid guardrails in ${where}: it has no key ${GuardrailsConfigMap.key}`,
        FailureType.InvalidGuardrails,
      );
    return {
      guardrails: parseGuardrails(parseYaml(text), where),
      source: where,
      version: `uid ${cm.metadata?.uid} resourceVersion ${cm.metadata?.resourceVersion}`,
      workerNamespace,
    };
  } catch (err) {
    if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
    return {
      guardrails: defaultGuardrails(),
      source: `defaults (no ${where})`,
      version: 'defaults',
      workerNamespace,
    };
  }
}

/** Checks runs against the guardrails the worker loaded. */
export class GuardrailCheck {
  constructor(private readonly deps: { kube: Kube; inForce: GuardrailsInForce }) {}

  /** The guardrails in force. */
  get inForce(): GuardrailsInForce {
    return this.deps.inForce;
  }

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
