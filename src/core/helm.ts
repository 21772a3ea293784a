/**
 * Limits the helm steps share between the worker, which runs helm, and the workflow, which
 * times the steps that run it.
 */

/**
 * How long one helm command may run before its process is stopped: `--wait` in
 * `securityContext.helm.extraArgs` can take that long.
 */
export const HelmCommandMs = 10 * 60_000;
