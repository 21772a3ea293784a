/**
 * Whether Gatekeeper has taken in a constraint as it now stands. A constraint written through
 * the API is not yet what Gatekeeper's webhook decides by: each Gatekeeper pod reports, in the
 * constraint's `status.byPod`, the generation it has loaded and whether it enforces it.
 */

/** One entry of a constraint's `status.byPod`, as Gatekeeper's status operation writes it. */
export interface ConstraintPodStatus {
  id?: string;
  observedGeneration?: number;
  enforced?: boolean;
  operations?: string[];
  errors?: { message?: string }[];
}

/** The parts of a constraint that tell its enforcement. */
export interface EnforcementView {
  metadata: { name?: string; generation?: number };
  status?: { byPod?: ConstraintPodStatus[] };
}

/** Where a constraint's enforcement stands against a generation. */
export type Enforcement =
  /** Every Gatekeeper webhook pod enforces this generation or a later one. */
  | { state: 'enforced'; pods: string[] }
  /** Some webhook pod has not loaded it yet (or reports an error). */
  | { state: 'pending'; waitingFor: string[] }
  /** No Gatekeeper webhook pod reports on it: nothing enforces it to wait for. */
  | { state: 'no-webhook' };

/**
 * Where the enforcement of `constraint` stands: `atLeast` is the generation the caller wrote
 * (a later one, written by someone else meanwhile, counts too).
 */
export function enforcementOf(constraint: EnforcementView, atLeast: number): Enforcement {
  const webhooks = (constraint.status?.byPod ?? []).filter(
    (p) => p.operations === undefined || p.operations.includes('webhook'),
  );
  if (webhooks.length === 0) return { state: 'no-webhook' };
  const waitingFor = webhooks
    .filter((p) => !(p.enforced === true && (p.observedGeneration ?? -1) >= atLeast && !p.errors?.length))
    .map(
      (p) =>
        `${p.id ?? '(unnamed pod)'} at generation ${p.observedGeneration ?? '(none)'} of ${atLeast}` +
        (p.errors?.length ? ` (${p.errors.map((e) => e.message).join('; ')})` : '') +
        (p.enforced === true ? '' : ', not enforced'),
    );
  return waitingFor.length === 0
    ? { state: 'enforced', pods: webhooks.map((p) => p.id ?? '(unnamed pod)') }
    : { state: 'pending', waitingFor };
}
