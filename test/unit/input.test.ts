import { describe, expect, it } from 'vitest';
import {
  InvalidInputError,
  parseDuration,
  parseMigrationInput,
  refusedByWorker,
} from '../../src/core/input.js';

const ok = { namespace: 'itrs', uid: 5000, gid: 5000 };
const problem = (raw: unknown) => {
  try {
    parseMigrationInput(raw);
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidInputError);
    return (err as Error).message;
  }
  throw new Error('input was accepted');
};

describe('parseMigrationInput', () => {
  it('fills the documented defaults', () => {
    expect(parseMigrationInput(ok)).toEqual({
      ...ok,
      profile: 'itrs-analytics',
      supplementalGroups: [5000],
      approvals: ['plan', 'relax'],
      approvalTimeout: '24h',
      heartbeatTimeout: '30s',
      securityContext: { apply: 'external' },
      window: { mode: 'admission', max: '15m', grace: '5m' },
      policies: { podSecurity: 'baseline', gatekeeper: true },
      job: {
        podAnnotations: {},
        podLabels: {},
        nodeSelector: {},
        tolerations: [],
        resources: {},
        timeout: '6h',
        retries: 1,
      },
      recovery: 'roll-forward',
      verify: {
        checks: ['ownership', 'identity', 'sql', 'logs', 'deep'],
        commands: {},
        timeout: '30m',
        checksAtOnce: 8,
        audit: true,
        auditTimeout: '3m',
      },
      dryRun: false,
    });
  });

  it('lets helm run only with a short list of flags, a repository or OCI chart and a relative values file', () => {
    const helm = (h: object) => ({
      ...ok,
      securityContext: { apply: 'helm', helm: { release: 'iax', chart: 'itrs/iax-platform', ...h } },
    });
    expect(
      parseMigrationInput(
        helm({ valuesFile: 'values/uid.yaml', extraArgs: ['--wait', '--timeout=10m', '--version=2.17.0'] }),
      ).securityContext.helm?.extraArgs,
    ).toEqual(['--wait', '--timeout=10m', '--version=2.17.0']);
    expect(
      parseMigrationInput(helm({ chart: 'oci://registry.example.com/charts/iax-platform' })).securityContext
        .helm?.chart,
    ).toBe('oci://registry.example.com/charts/iax-platform');
    for (const bad of [
      '--post-renderer=/bin/sh',
      '--set-file',
      '--namespace=kube-system',
      '--kube-context=prod',
      '--kubeconfig=/x',
    ])
      expect(problem(helm({ extraArgs: [bad] }))).toContain(
        `securityContext.helm.extraArgs.0: ${JSON.stringify(bad)} is not allowed`,
      );
    for (const bad of [
      '/var/run/secrets/kubernetes.io/serviceaccount/token',
      '../secrets.yaml',
      'values.txt',
    ])
      expect(problem(helm({ valuesFile: bad }))).toContain(
        'securityContext.helm.valuesFile: must be a relative .yaml/.yml path',
      );
    for (const bad of ['/charts/iax', 'https://example.com/iax.tgz', './iax'])
      expect(problem(helm({ chart: bad }))).toContain(
        'securityContext.helm.chart: must be a repository chart',
      );
  });

  it('takes recovery roll-back only where the run can put the old template back itself', () => {
    expect(
      parseMigrationInput({ ...ok, recovery: 'roll-back', securityContext: { apply: 'patch' } }).recovery,
    ).toBe('roll-back');
    expect(
      parseMigrationInput({
        ...ok,
        recovery: 'roll-back',
        securityContext: { apply: 'helm', helm: { release: 'iax', chart: 'itrs/iax-platform' } },
      }).recovery,
    ).toBe('roll-back');
    expect(problem({ ...ok, recovery: 'roll-back' })).toContain(
      'recovery: roll-back puts the old template back itself (a patch, or helm rollback), so it needs securityContext.apply "patch" or "helm"',
    );
    expect(problem({ ...ok, recovery: 'undo' })).toContain(
      'recovery: recovery must be "roll-forward" or "roll-back"',
    );
  });

  it('takes a generic databases form instead of a profile', () => {
    const i = parseMigrationInput({
      ...ok,
      databases: [{ statefulSet: 'pg', container: 'postgres', volumes: ['data'] }],
    });
    expect(i.profile).toBeUndefined();
    expect(i.databases).toEqual([{ statefulSet: 'pg', container: 'postgres', volumes: ['data'] }]);
  });

  const bad: [string, unknown, RegExp][] = [
    ['uid 0', { ...ok, uid: 0 }, /uid: must be at least 1: 0 would run the databases as root/],
    ['gid negative', { ...ok, gid: -5 }, /gid: must be at least 1/],
    ['uid not an integer', { ...ok, uid: 5000.5 }, /uid: must be a whole number/],
    ['uid above 2^31-1', { ...ok, uid: 2147483648 }, /uid: must be at most 2147483647/],
    ['uid as a string', { ...ok, uid: '5000' }, /uid: must be a number/],
    ['namespace with capitals', { ...ok, namespace: 'ITRS' }, /namespace: must be a Kubernetes name/],
    ['namespace too long', { ...ok, namespace: 'a'.repeat(64) }, /namespace: must be at most 63 characters/],
    ['missing namespace', { uid: 1, gid: 1 }, /namespace: must be a string/],
    ['unknown profile', { ...ok, profile: 'oracle' }, /profile: profile must be "itrs-analytics"/],
    [
      'profile and databases',
      { ...ok, profile: 'itrs-analytics', databases: [{ statefulSet: 'pg', container: 'c' }] },
      /give either profile or databases/,
    ],
    ['unknown gate', { ...ok, approvals: ['deploy'] }, /approvals\.0/],
    ['bad duration', { ...ok, approvalTimeout: 'tomorrow' }, /approvalTimeout must be a positive duration/],
    [
      'helm without helm settings',
      { ...ok, securityContext: { apply: 'helm' } },
      /securityContext\.helm: .*required when apply is "helm"/,
    ],
    ['bad window mode', { ...ok, window: { mode: 'forever' } }, /window\.mode/],
    ['bad window grace', { ...ok, window: { grace: 'later' } }, /window\.grace must be a positive duration/],
    [
      'bad supplemental group',
      { ...ok, supplementalGroups: [0] },
      /supplementalGroups\.0: must be at least 1/,
    ],
    ['unknown field', { ...ok, uuid: 5000 }, /unknown field\(s\) uuid/],
    [
      'unknown check',
      { ...ok, verify: { checks: ['vacuum'] } },
      /verify\.checks\.0: each check must be one of "ownership"/,
    ],
    [
      'a check twice',
      { ...ok, verify: { checks: ['sql', 'sql'] } },
      /verify\.checks: lists a check more than once/,
    ],
    [
      'an empty sql command',
      { ...ok, verify: { commands: { sql: [] } } },
      /verify\.commands\.sql: must be a command/,
    ],
    ['an unknown command', { ...ok, verify: { commands: { vacuum: ['x'] } } }, /unknown field\(s\) vacuum/],
    [
      'checks at once 0',
      { ...ok, verify: { checksAtOnce: 0 } },
      /verify\.checksAtOnce: must be at least 1/,
    ],
    [
      'checks at once not whole',
      { ...ok, verify: { checksAtOnce: 2.5 } },
      /verify\.checksAtOnce: must be a whole number of checks/,
    ],
    [
      'checks at once too many',
      { ...ok, verify: { checksAtOnce: 500 } },
      /verify\.checksAtOnce: must be at most 64/,
    ],
    [
      'bad verify timeout',
      { ...ok, verify: { timeout: 'soon' } },
      /verify\.timeout must be a positive duration/,
    ],
  ];
  for (const [name, raw, message] of bad) {
    it(`refuses ${name}, naming the field`, () => expect(problem(raw)).toMatch(message));
  }

  it('lists every problem at once', () => {
    expect(problem({ namespace: 'X', uid: 0, gid: 0 })).toMatch(/namespace: .*; uid: .*; gid: /);
  });
});

describe('refusedByWorker', () => {
  it('says a field the worker does not know means a worker older than the CLI, and only then', () => {
    const unknown = new InvalidInputError(problem({ ...ok, maxOpenWindows: 2 }));
    expect(refusedByWorker(unknown)).toMatch(/unknown field\(s\) maxOpenWindows: remove them/);
    expect(refusedByWorker(unknown)).toMatch(/this worker is older than that CLI: upgrade the workers first/);
    const bad = new InvalidInputError(problem({ ...ok, uid: 0 }));
    expect(refusedByWorker(bad)).toBe(bad.message);
  });
});

describe('parseDuration', () => {
  it('reads the units the input uses', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('15m')).toBe(900_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('2d')).toBe(172_800_000);
    expect(parseDuration('soon')).toBeUndefined();
  });
});
