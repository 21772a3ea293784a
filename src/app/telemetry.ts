/**
 * The process's Temporal runtime: its log level and, for a worker, the Prometheus endpoint that
 * serves the SDK's metrics and runas-migrate's own (`ProductMetric`).
 */
import { DefaultLogger, Runtime, type LogEntry, type LogLevel } from '@temporalio/worker';
import {
  LogFormatEnv,
  LogFormats,
  LogLevelEnv,
  LogLevels,
  MetricsAddressEnv,
  type LogFormat,
} from '../core/settings.js';

export { LogFormatEnv, LogFormats, LogLevelEnv, LogLevels, MetricsAddressEnv, type LogFormat };

/**
 * One log entry as a line of JSON: `time`, `level`, `message`, then the SDK's metadata (a
 * workflow's `workflowId`, `runId`, `workflowType`, `taskQueue`; an activity's
 * `activityType` too) and the run's own (`targetNamespace`, `phase`).
 */
export function jsonLogLine(entry: LogEntry): string {
  const time = new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString();
  const meta = JSON.parse(
    JSON.stringify(entry.meta ?? {}, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)),
  ) as Record<string, unknown>;
  return JSON.stringify({ time, level: entry.level, message: entry.message, ...meta });
}

/**
 * The worker's own lines (guardrails read, polling, records namespace missing): always written,
 * whatever the SDK's log level, in the chosen format.
 */
export function workerLog(format: LogFormat): (message: string) => void {
  return format === 'json'
    ? (message) =>
        process.stderr.write(
          `${JSON.stringify({ time: new Date().toISOString(), level: 'INFO', message, component: 'runas-migrate' })}\n`,
        )
    : (message) => process.stderr.write(`[runas-migrate] ${message}\n`);
}

/**
 * Installs the runtime once per process, before any connection.
 *
 * @param o.metricsAddress `host:port` of the Prometheus endpoint (`/metrics`); none when absent.
 */
export function installRuntime(o: {
  logLevel: LogLevel;
  logFormat?: LogFormat;
  metricsAddress?: string;
}): void {
  Runtime.install({
    logger:
      o.logFormat === 'json'
        ? new DefaultLogger(o.logLevel, (entry) => process.stderr.write(`${jsonLogLine(entry)}\n`))
        : new DefaultLogger(o.logLevel),
    ...(o.metricsAddress
      ? {
          telemetryOptions: {
            metrics: {
              prometheus: {
                bindAddress: o.metricsAddress,
                countersTotalSuffix: true,
                useSecondsForDurations: true,
              },
            },
          },
        }
      : {}),
  });
}
