import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadGuardrails } from '../../src/services/guardrails.js';
import {
  defaultGuardrails,
  guardrailViolations,
  InvalidGuardrailsError,
  parseGuardrails,
  type GuardrailsInForce,
} from '../../src/core/guardrails.js';
import { parseMigrationInput, type MigrationInputRaw } from '../../src/core/input.js';

const inForce = (raw: unknown = {}): GuardrailsInForce => ({
  guardrails: parseGuardrails(raw, 'file g.yaml'),
  source: 'file g.yaml',
  version: 'sha256:0',
  workerNamespace: 'runas-migrate',
});
const input = (extra: Partial<MigrationInputRaw> = {}) =>
  parseMigrationInput({ namespace: 'itrs', uid: 5000, gid: 5000, ...extra });
const check = (extra: Partial<MigrationInputRaw>, raw?: unknown, labels: Record<string, string> = {}) =>
  guardrailViolations(input(extra), labels, inForce(raw));

describe('guardrails', () => {
  it('defaults: 15m windows, 24h approvals, baseline, no other Job image, no mandatory gate', () => {
    expect(defaultGuardrails()).toEqual({
      namespaces: { deny: [], gatekeeper: 'gatekeeper-system' },
      maxWindow: '15m',
      maxApprovalWait: '24h',
      maxPodSecurity: 'baseline',
      jobImages: [],
      requiredGates: [],
    });
    expect(check({})).toEqual([]);
  });

  it.each([
    [{ window: { max: '72h' } }, 'window.max 72h is longer than maxWindow 15m (guardrails from file g.yaml)'],
    [{ approvalTimeout: '30d' }, 'approvalTimeout 30d is longer than maxApprovalWait 24h'],
    [
      { policies: { podSecurity: 'privileged' } },
      'policies.podSecurity privileged relaxes more than maxPodSecurity baseline',
    ],
    [
      { job: { image: 'evil:latest' } },
      "job.image evil:latest is not in jobImages []: leave it out to use each StatefulSet's own image",
    ],
    [{ namespace: 'kube-system' }, 'namespace kube-system is never a target'],
    [{ namespace: 'kube-node-lease' }, 'namespace kube-node-lease is never a target'],
    [{ namespace: 'gatekeeper-system' }, 'namespace gatekeeper-system is never a target'],
    [{ namespace: 'runas-migrate' }, 'namespace runas-migrate is never a target'],
  ] as [Partial<MigrationInputRaw>, string][])(
    'refuses %j by default, naming the guardrail',
    (extra, words) => {
      const v = check(extra);
      expect(v).toHaveLength(1);
      expect(v[0]).toContain(words);
    },
  );

  it('allows what the guardrails allow', () => {
    const raw = {
      maxWindow: '72h',
      maxApprovalWait: '30d',
      maxPodSecurity: 'privileged',
      jobImages: ['registry.bank/postgres:*'],
      requiredGates: ['relax'],
      namespaces: { allow: ['itrs', 'itrs-*'], selector: 'team=analytics' },
    };
    expect(
      check(
        {
          window: { max: '72h' },
          approvalTimeout: '30d',
          policies: { podSecurity: 'privileged' },
          job: { image: 'registry.bank/postgres:15' },
          approvals: ['relax'],
        },
        raw,
        { team: 'analytics' },
      ),
    ).toEqual([]);
  });

  it('refuses a namespace outside allow, denied, or not matching the selector, and a dropped mandatory gate', () => {
    const raw = {
      namespaces: { allow: ['itrs-*'], deny: ['itrs-prod'], selector: 'team=analytics' },
      requiredGates: ['relax'],
    };
    expect(check({ namespace: 'payments', approvals: ['plan'] }, raw, { team: 'analytics' })).toEqual([
      'namespace payments is not in namespaces.allow [itrs-*] (guardrails from file g.yaml)',
      'approvals must include relax (requiredGates (guardrails from file g.yaml))',
    ]);
    expect(check({ namespace: 'itrs-prod' }, raw, { team: 'analytics' })[0]).toContain(
      'matches namespaces.deny [itrs-prod]',
    );
    expect(check({ namespace: 'itrs-dev' }, raw, { team: 'payments' })[0]).toContain(
      'does not match namespaces.selector team=analytics (missing team=analytics)',
    );
  });

  it('refuses guardrails it cannot read, naming the field and where they are set', () => {
    expect(() => parseGuardrails({ maxWindow: 'forever', maxPodSecurity: 'root' }, 'ConfigMap w/g')).toThrow(
      InvalidGuardrailsError,
    );
    expect(() => parseGuardrails({ maxWindow: 'forever' }, 'ConfigMap w/g')).toThrow(
      /invalid guardrails in ConfigMap w\/g: maxWindow: maxWindow: must be a duration/,
    );
    expect(() => parseGuardrails({ requiredGates: ['deploy'] }, 'file g.yaml')).toThrow(/requiredGates\.0/);
    expect(() => parseGuardrails({ windowMax: '1h' }, 'file g.yaml')).toThrow(/windowMax/);
  });

  it('names the file when it is not YAML at all', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'g-')), 'g.yaml');
    writeFileSync(file, 'maxWindow: [15m\n');
    await expect(loadGuardrails({ kube: undefined as never, workerNamespace: 'w', file })).rejects.toThrow(
      new RegExp(`invalid guardrails in file ${file}: not YAML`),
    );
  });

  it('refuses an input that lists a gate twice', () => {
    expect(() => input({ approvals: ['plan', 'plan'] })).toThrow(
      /approvals: lists a gate more than once: name each gate once/,
    );
  });
});
