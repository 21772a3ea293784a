/**
 * Exec readiness probes, run as a kubelet runs them: the probe's command inside the container
 * every `periodSeconds` after `initialDelaySeconds`, killed after `timeoutSeconds`; the container
 * turns ready after `successThreshold` successes in a row and unready after `failureThreshold`
 * failures in a row.
 */
import { spawn } from 'node:child_process';
import type { V1Probe } from '@kubernetes/client-node';

/** Runs one command with a timeout; resolves with whether it exited 0. */
function runProbe(argv: readonly string[], timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve(code === 0);
    });
  });
}

/** One container's readiness probe. */
export class ReadinessProbe {
  private timer?: NodeJS.Timeout;
  private ready = false;
  private successes = 0;
  private failures = 0;
  private stopped = false;

  /**
   * @param execPrefix the argv that runs a command inside the container (launch.ts `execArgv`).
   * @param onChange called when the verdict changes.
   */
  constructor(
    private readonly probe: V1Probe,
    private readonly execPrefix: readonly string[],
    private readonly onChange: (ready: boolean) => void,
  ) {}

  /** Whether the probe can be run here (only exec probes can). */
  static supported(probe: V1Probe | undefined): probe is V1Probe {
    return (probe?.exec?.command?.length ?? 0) > 0;
  }

  /** Starts probing. */
  start(): void {
    this.schedule((this.probe.initialDelaySeconds ?? 0) * 1000);
  }

  /** Stops probing; no verdict is reported after this. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.tick(), delayMs);
  }

  private async tick(): Promise<void> {
    const ok = await runProbe(
      [...this.execPrefix, ...this.probe.exec!.command!],
      (this.probe.timeoutSeconds ?? 1) * 1000,
    );
    if (this.stopped) return;
    if (ok) {
      this.failures = 0;
      this.successes++;
      if (!this.ready && this.successes >= (this.probe.successThreshold ?? 1)) this.set(true);
    } else {
      this.successes = 0;
      this.failures++;
      if (this.ready && this.failures >= (this.probe.failureThreshold ?? 3)) this.set(false);
    }
    this.schedule((this.probe.periodSeconds ?? 10) * 1000);
  }

  private set(ready: boolean): void {
    this.ready = ready;
    this.onChange(ready);
  }
}
