import { describe, expect, it } from 'vitest';
import { enforcementOf, type ConstraintPodStatus } from '../../src/core/enforcement.js';

const constraint = (generation: number, byPod?: ConstraintPodStatus[]) => ({
  metadata: { name: 'drop-all', generation },
  ...(byPod ? { status: { byPod } } : {}),
});
const webhook = (id: string, observedGeneration: number, enforced = true): ConstraintPodStatus => ({
  id,
  observedGeneration,
  enforced,
  operations: ['audit', 'status', 'webhook'],
});

describe('enforcementOf: whether Gatekeeper has taken in a constraint', () => {
  it('enforced once every webhook pod reports the written generation or a later one', () => {
    const e = enforcementOf(constraint(5, [webhook('gk-a', 5), webhook('gk-b', 6)]), 5);
    expect(e).toEqual({ state: 'enforced', pods: ['gk-a', 'gk-b'] });
  });

  it('pending while one webhook pod is behind, naming it and its generation', () => {
    const e = enforcementOf(constraint(5, [webhook('gk-a', 5), webhook('gk-b', 4)]), 5);
    expect(e).toEqual({ state: 'pending', waitingFor: ['gk-b at generation 4 of 5'] });
  });

  it('pending while a pod has loaded it but does not enforce it, or reports an error', () => {
    expect(enforcementOf(constraint(2, [webhook('gk-a', 2, false)]), 2)).toEqual({
      state: 'pending',
      waitingFor: ['gk-a at generation 2 of 2, not enforced'],
    });
    const broken = { ...webhook('gk-a', 2), errors: [{ message: 'rego compile error' }] };
    expect(enforcementOf(constraint(2, [broken]), 2)).toMatchObject({
      state: 'pending',
      waitingFor: ['gk-a at generation 2 of 2 (rego compile error)'],
    });
  });

  it('audit-only pods do not enforce anything: only webhook pods count', () => {
    const audit: ConstraintPodStatus = {
      id: 'gk-audit',
      observedGeneration: 1,
      enforced: true,
      operations: ['audit'],
    };
    expect(enforcementOf(constraint(3, [audit, webhook('gk-a', 3)]), 3)).toEqual({
      state: 'enforced',
      pods: ['gk-a'],
    });
    expect(enforcementOf(constraint(3, [audit]), 3)).toEqual({ state: 'no-webhook' });
  });

  it('no status at all (no Gatekeeper running): nothing to wait for', () => {
    expect(enforcementOf(constraint(1), 1)).toEqual({ state: 'no-webhook' });
    expect(enforcementOf(constraint(1, []), 1)).toEqual({ state: 'no-webhook' });
  });
});
