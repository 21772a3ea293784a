import { describe, expect, it } from 'vitest';
import { isPassingCreateFailure, podOfJob, refusalOf } from '../../src/core/admission.js';
import { parseMigrationInput } from '../../src/core/input.js';
import { buildOwnershipJob, JobLabel } from '../../src/core/job.js';

describe('refusalOf: who refused a pod, from the API server message', () => {
  it('Pod Security Admission', () => {
    const m =
      'pods "fix-" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false';
    expect(refusalOf(m)).toEqual({ by: 'pod-security', message: m });
  });

  it("Gatekeeper, naming every constraint once, not the brackets inside a violation's text", () => {
    const m =
      'admission webhook "validation.gatekeeper.sh" denied the request: [drop-all] container <c> adds capabilities ["CHOWN"]; the allowed capabilities are []\n' +
      '[allowed-user-ranges] container <c> runs with runAsUser 0\n[allowed-user-ranges] the pod does not set fsGroup';
    expect(refusalOf(m)).toEqual({
      by: 'gatekeeper',
      constraints: ['drop-all', 'allowed-user-ranges'],
      message: m,
    });
  });

  it('another webhook, a ValidatingAdmissionPolicy, a Gatekeeper message without a constraint: not relaxable', () => {
    for (const m of [
      'admission webhook "validate.kyverno.svc" denied the request: require-non-root',
      "ValidatingAdmissionPolicy 'no-root' with binding 'no-root' denied request: not here",
      'admission webhook "validation.gatekeeper.sh" denied the request: some other text',
    ])
      expect(refusalOf(m).by).toBe('other');
  });

  it('a webhook that could not be called says nothing yet', () => {
    expect(
      refusalOf(
        'Internal error occurred: failed calling webhook "validation.gatekeeper.sh": Post "https://127.0.0.1:1/v1/admit": connection refused',
      ).by,
    ).toBe('unavailable');
  });
});

describe("isPassingCreateFailure: a Job controller's FailedCreate that is no refusal", () => {
  // What the controller retries by itself passes; an admission refusal, a quota the pod does
  // not fit and a webhook that cannot be called are refusals.
  it.each([
    [
      'Operation cannot be fulfilled on resourcequotas "compute": the object has been modified; please apply your changes to the latest version and try again',
      true,
    ],
    ['Timeout: request did not complete within requested timeout - context deadline exceeded', true],
    ['the server is currently unable to handle the request', true],
    ['etcdserver: request timed out', true],
    [
      'Internal error occurred: failed calling webhook "validation.gatekeeper.sh": failed to call webhook: Post "https://gatekeeper-webhook-service.gatekeeper-system.svc:443/v1/admit?timeout=3s": context deadline exceeded',
      false,
    ],
    [
      'pods "fix-ownership-pgplatform-0-x" is forbidden: violates PodSecurity "baseline:latest": privileged',
      false,
    ],
    [
      'admission webhook "validation.gatekeeper.sh" denied the request: [drop-all] container <fix-ownership> is not dropping all required capabilities',
      false,
    ],
    [
      'pods "fix-ownership-pgplatform-0-x" is forbidden: exceeded quota: compute, requested: limits.cpu=1, used: limits.cpu=4, limited: limits.cpu=4',
      false,
    ],
    ["ValidatingAdmissionPolicy 'no-root' with binding 'no-root' denied request: root", false],
  ])('Error creating: %s → passing %s', (why, passing) => {
    expect(isPassingCreateFailure(`Error creating: ${why}`)).toBe(passing);
  });
});

describe('podOfJob', () => {
  it("is the Job's template with the labels the Job controller adds", () => {
    const input = parseMigrationInput({
      namespace: 'itrs',
      uid: 5000,
      gid: 5000,
      job: { podLabels: { team: 'db' } },
    });
    const job = buildOwnershipJob(
      input,
      {
        statefulSet: 'pg',
        ordinal: 1,
        image: 'postgres',
        volumes: [{ volume: 'data', claimName: 'data-pg-1', mountPath: '/data' }],
      },
      { workflowId: 'w', runId: '7b0c3c64-5f1e-4b8e-9a4f-3d2b1c0e9f8a' },
      'true',
    );
    const pod = podOfJob(job);
    const name = job.metadata!.name!;
    expect(pod.metadata?.generateName).toBe(`${name}-`);
    expect(pod.metadata?.labels).toMatchObject({
      team: 'db',
      [JobLabel.ManagedBy]: 'runas-migrate',
      'job-name': name,
      'batch.kubernetes.io/job-name': name,
    });
    expect(pod.spec).toEqual(job.spec?.template.spec);
  });
});
