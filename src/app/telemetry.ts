/**
 * The process's Temporal runtime: its log level and, for a worker, the Prometheus endpoint that
 * serves the SDK's metrics and runas-migrate's own (`ProductMetric`).
 */
import { DefaultLogger, Runtime, type LogLevel } from '@temporalio/worker';

/** Log levels the SDK's logger knows, quietest last. */
export const LogLevels = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'] as const satisfies readonly LogLevel[];

/** Environment variable of the log level. */
export const LogLevelEnv = 'RUNAS_MIGRATE_LOG_LEVEL';

/** Environment variable of the worker's metrics address. */
export const MetricsAddressEnv = 'RUNAS_MIGRATE_METRICS_ADDRESS';

/**
 * Installs the runtime once per process, before any connection.
 *
 * @param o.metricsAddress `host:port` of the Prometheus endpoint (`/metrics`); none when absent.
 */
export function installRuntime(o: { logLevel: LogLevel; metricsAddress?: string }): void {
  Runtime.install({
    logger: new DefaultLogger(o.logLevel),
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
