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

/** A pod spec any Pod Security level admits. */
export function restrictedPodSpec(): NonNullable<V1Pod['spec']> {
  return {
    securityContext: { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } },
    containers: [
      {
        name: 'c',
        image: 'busybox',
        command: ['sleep', '3600'],
        securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
      },
    ],
  };
}

/** A pod that is never scheduled (no node has its label): it only has to exist, and go. */
export function unscheduledPod(name: string): V1Pod {
  return {
    metadata: { name },
    spec: { ...restrictedPodSpec(), nodeSelector: { 'runas-migrate.dev/no-such-node': 'true' } },
  };
}
