import type { V1Pod } from '@kubernetes/client-node';

/**
 * A pod shaped like the ownership Job's: root, dropping every capability but adding those it
 * needs (CHOWN, FOWNER, DAC_OVERRIDE by default). What PSA `baseline` admits and `restricted`
 * and the fixture's Gatekeeper constraints refuse.
 */
export function rootPod(
  name: string,
  opts: { capabilities?: string[]; image?: string; command?: string[] } = {},
): V1Pod {
  return {
    metadata: { name },
    spec: {
      restartPolicy: 'Never',
      securityContext: { runAsUser: 0, runAsGroup: 0, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        {
          name: 'fix-ownership',
          image: opts.image ?? 'postgres',
          command: opts.command ?? ['sleep', '3600'],
          securityContext: {
            runAsNonRoot: false,
            allowPrivilegeEscalation: false,
            capabilities: { add: opts.capabilities ?? ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'], drop: ['ALL'] },
          },
        },
      ],
    },
  };
}
