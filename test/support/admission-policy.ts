import { AdmissionregistrationV1Api, type KubeConfig } from '@kubernetes/client-node';

/**
 * A ValidatingAdmissionPolicy (and its binding) refusing pod creations in namespace `namespace`
 * unless the CEL `expression` holds: a policy runas-migrate neither models nor may relax.
 * Returns what removes both.
 */
export async function podAdmissionPolicy(
  kc: KubeConfig,
  name: string,
  namespace: string,
  expression: string,
  message: string,
): Promise<() => Promise<void>> {
  const admission = kc.makeApiClient(AdmissionregistrationV1Api);
  await admission.createValidatingAdmissionPolicy({
    body: {
      metadata: { name },
      spec: {
        failurePolicy: 'Fail',
        matchConstraints: {
          resourceRules: [
            { apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE'], resources: ['pods'] },
          ],
        },
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
