/**
 * The Helm release that owns the databases (securityContext.apply = helm): its revision before
 * the run, the upgrade to the new IDs (a values file written by the run, as the vendor procedure's
 * step 1) and the rollback to the recorded revision, which is the compensation: putting back the
 * release as it was, not a reverse `--set` that would leave a revision with guessed values.
 *
 * helm runs as a child process with the worker's kubeconfig. A running helm is never killed on
 * cancellation: killed mid-upgrade it leaves the release `pending-upgrade`, and that status
 * refuses the very rollback that would undo it. Its operations are short (no `--wait` unless the
 * input asks for it), so a cancelled step waits for it.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { FailureType, TypedFailure } from '../core/failures.js';
import { HelmCommandMs } from '../core/helm.js';

const run = promisify(execFile);

/** Dependencies of {@link HelmReleases}. */
export interface HelmDeps {
  /** The `helm` binary. @default "helm" */
  helm?: string;
  /** The kubeconfig helm uses (the worker's); helm's own loading rules when absent. */
  kubeconfig?: string;
  log?: (message: string) => void;
}

/** Which release. */
export interface ReleaseRef {
  namespace: string;
  release: string;
}

/** A release as `helm status` shows it. */
export interface ReleaseState {
  release: string;
  /** The revision number (`helm history`'s REVISION). */
  revision: number;
  /** deployed, failed, pending-upgrade, … */
  status: string;
  /** `<chart name>-<chart version>` */
  chart: string;
  /** The chart's version alone (null when helm did not say). */
  chartVersion?: string | null;
}

/** Input of {@link HelmReleases.helmUpgrade}. */
export interface HelmUpgradeInput extends ReleaseRef {
  chart: string;
  /** The operator's own values file, applied before the run's. */
  valuesFile?: string;
  extraArgs: string[];
  uid: number;
  gid: number;
  supplementalGroups: number[];
}

/** What an upgrade did. */
export interface HelmUpgradeResult extends ReleaseState {
  /** The values file the run wrote and passed with `--values`, as YAML. */
  values: string;
}

/** The values the run sets, under the keys the vendor procedure's values file uses. */
export function idValues(input: Pick<HelmUpgradeInput, 'uid' | 'gid' | 'supplementalGroups'>) {
  return {
    securityContext: {
      pod: {
        runAsUser: input.uid,
        runAsGroup: input.gid,
        supplementalGroups: input.supplementalGroups,
        fsGroup: input.gid,
      },
    },
  };
}

/**
 * Whether a helm failure may pass on a second try: the API server or the network being briefly
 * away, or another helm operation holding the release. A refused object, a chart that does not
 * render or a missing release fails the same way every time.
 */
export function helmFailureIsTransient(stderr: string): boolean {
  return /another operation \(install\/upgrade\/rollback\) is in progress|connection refused|i\/o timeout|TLS handshake timeout|timed out waiting|context deadline exceeded|unexpected EOF|Too Many Requests|etcdserver|the server is currently unable/i.test(
    stderr,
  );
}

/** The Helm release of the databases. */
export class HelmReleases {
  private readonly helm: string;
  private readonly log: (message: string) => void;

  constructor(private readonly deps: HelmDeps = {}) {
    this.helm = deps.helm ?? 'helm';
    this.log = deps.log ?? (() => undefined);
  }

  /** Reads the release's current revision (recorded before the upgrade, for the rollback). */
  async readHelmRelease(input: ReleaseRef): Promise<ReleaseState> {
    return this.status(input, 'read');
  }

  /**
   * `helm upgrade --reuse-values` with a values file holding the new IDs, at the chart version
   * deployed unless `extraArgs` choose one: without `--version` helm takes the repository's
   * newest chart, which would upgrade the whole platform along with the IDs.
   *
   * @throws `HelmFailed`: retryable only when the failure is transient ({@link helmFailureIsTransient}).
   */
  async helmUpgrade(input: HelmUpgradeInput): Promise<HelmUpgradeResult> {
    const values = stringify(idValues(input));
    const dir = await mkdtemp(join(tmpdir(), 'runas-migrate-helm-'));
    try {
      const file = join(dir, 'values.yaml');
      await writeFile(file, values, { mode: 0o600 });
      const deployed = choosesVersion(input.extraArgs)
        ? null
        : (await this.status(input, 'upgrade')).chartVersion;
      const out = await this.helmCommand('upgrade', input, [
        'upgrade',
        input.release,
        input.chart,
        '--reuse-values',
        ...(input.valuesFile ? ['--values', input.valuesFile] : []),
        '--values',
        file,
        ...(deployed ? ['--version', deployed] : []),
        ...input.extraArgs,
        '--output',
        'json',
      ]);
      // The upgrade's own output does not name the chart: read the release as it is now.
      const upgraded = JSON.parse(out) as { version: number };
      const state = { ...(await this.status(input, 'upgrade')), revision: upgraded.version };
      this.log(`helm release ${input.release}: upgraded to revision ${state.revision} (${state.status})`);
      return { ...state, values };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** `helm rollback` to `revision`; returns the release after it. */
  async helmRollback(input: ReleaseRef & { revision: number }): Promise<ReleaseState> {
    await this.helmCommand('rollback', input, ['rollback', input.release, String(input.revision)]);
    const state = await this.status(input, 'rollback');
    this.log(
      `helm release ${input.release}: rolled back to revision ${input.revision} (now revision ${state.revision}, ${state.status})`,
    );
    return state;
  }

  /**
   * The release as `helm get metadata` shows it (`helm status` does not name the chart); a helm
   * older than 3.13, which has no `get metadata`, gives its status without the chart (so the
   * upgrade is not pinned).
   */
  private async status(input: ReleaseRef, step: string): Promise<ReleaseState> {
    let out: string;
    try {
      out = await this.helmCommand(step, input, ['get', 'metadata', input.release, '--output', 'json']);
    } catch (err) {
      if (!(err instanceof TypedFailure) || !/unknown command "metadata"/.test(err.message)) throw err;
      const r = JSON.parse(
        await this.helmCommand(step, input, ['status', input.release, '--output', 'json']),
      ) as { version: number; info?: { status?: string } };
      return {
        release: input.release,
        revision: r.version,
        status: r.info?.status ?? 'unknown',
        chart: '?',
        chartVersion: null,
      };
    }
    const m = JSON.parse(out) as { revision: number; status?: string; chart?: string; version?: string };
    return {
      release: input.release,
      revision: m.revision,
      status: m.status ?? 'unknown',
      chart: `${m.chart ?? '?'}-${m.version ?? '?'}`,
      chartVersion: m.version ?? null,
    };
  }

  private async helmCommand(step: string, ref: ReleaseRef, args: string[]): Promise<string> {
    const full = [
      ...args,
      '--namespace',
      ref.namespace,
      ...(this.deps.kubeconfig ? ['--kubeconfig', this.deps.kubeconfig] : []),
    ];
    try {
      const { stdout } = await run(this.helm, full, { timeout: HelmCommandMs, maxBuffer: 64 << 20 });
      return stdout;
    } catch (err) {
      const e = err as { code?: string | number; stderr?: string; message: string };
      if (e.code === 'ENOENT')
        throw new TypedFailure(
          FailureType.HelmFailed,
          `helm is not installed on the worker (looked for "${this.helm}"): install helm 3 or set RUNAS_MIGRATE_HELM, or use securityContext.apply "patch" or "external"`,
        );
      const stderr = (e.stderr ?? e.message).trim();
      if (/release: not found/.test(stderr))
        throw new TypedFailure(
          FailureType.HelmFailed,
          `helm ${step}: release "${ref.release}" not found in namespace ${ref.namespace}: check securityContext.helm.release (helm list -n ${ref.namespace})`,
        );
      throw new TypedFailure(FailureType.HelmFailed, `helm ${step} of ${ref.release} failed: ${stderr}`, {
        retryable: helmFailureIsTransient(stderr),
      });
    }
  }
}

/** Whether helm arguments choose a chart version themselves (`--version X` or `--version=X`). */
export function choosesVersion(args: readonly string[]): boolean {
  return args.some((a) => a === '--version' || a.startsWith('--version='));
}
