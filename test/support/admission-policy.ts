import { AdmissionregistrationV1Api, type KubeConfig } from '@kubernetes/client-node';

/** Which requests a policy judges. */
export interface AdmissionRule {
  apiGroups: string[];
  apiVersions: string[];
  operations: ('CREATE' | 'UPDATE' | 'DELETE')[];
  resources: string[];
}

/**
 * A ValidatingAdmissionPolicy (and its binding) refusing pod creations in namespace `namespace`
 * unless the CEL `expression` holds: a policy runas-migrate neither models nor may relax.
 * Returns what removes both.
 */
export function podAdmissionPolicy(
  kc: KubeConfig,
  name: string,
  namespace: string,
  expression: string,
  message: string,
): Promise<() => Promise<void>> {
  const pods: AdmissionRule = {
    apiGroups: [''],
    apiVersions: ['v1'],
    operations: ['CREATE'],
    resources: ['pods'],
  };
  return admissionPolicy(kc, name, namespace, pods, expression, message);
}

/** A ValidatingAdmissionPolicy refusing the requests of `rule` in `namespace` unless `expression` holds. */
export async function admissionPolicy(
  kc: KubeConfig,
  name: string,
  namespace: string,
  rule: AdmissionRule,
  expression: string,
  message: string,
): Promise<() => Promise<void>> {
  const admission = kc.makeApiClient(AdmissionregistrationV1Api);
  await admission.createValidatingAdmissionPolicy({
    body: {
      metadata: { name },
      spec: {
        failurePolicy: 'Fail',
        matchConstraints: { resourceRules: [rule] },
        validations: [{ expression, message }],
      },
    },
  });
  await admission.createValidatingAdmissionPolicyBinding({
    body: {
      metadata: { name },
      spec: {
        policyName: name,
        validationActions: ['Deny'],
        matchResources: { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': namespace } } },
      },
    },
  });
  return async () => {
    await admission.deleteValidatingAdmissionPolicyBinding({ name }).catch(() => undefined);
    await admission.deleteValidatingAdmissionPolicy({ name }).catch(() => undefined);
  };
}
