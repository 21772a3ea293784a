/**
 * The environment variables the CLI and the worker read, and the choices of their options. Every
 * CLI command loads this module to define its options, so it loads nothing else: the Temporal
 * worker, the Kubernetes client and OpenTelemetry are loaded only by the commands that use them.
 */
import type { LogLevel } from '@temporalio/worker';

/** Log levels the SDK's logger knows, quietest last. */
export const LogLevels = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'] as const satisfies readonly LogLevel[];

/** Environment variable of the log level. */
export const LogLevelEnv = 'RUNAS_MIGRATE_LOG_LEVEL';

/** How log lines are written: for people, or one JSON object per line for a log pipeline. */
export const LogFormats = ['text', 'json'] as const;
export type LogFormat = (typeof LogFormats)[number];

/** Environment variable of the log format. */
export const LogFormatEnv = 'RUNAS_MIGRATE_LOG_FORMAT';

/** Environment variable of the worker's metrics address. */
export const MetricsAddressEnv = 'RUNAS_MIGRATE_METRICS_ADDRESS';

/** The standard variable naming the OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces. */
export const TracesEndpointEnv = 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT';

/** Environment variable choosing how the worker's waits look: `watch` or `poll`. */
export const WaitsEnv = 'RUNAS_MIGRATE_WAITS';

/** How the worker's API calls reach the API server (see cluster/connections.ts). */
export type KubeConnections = 'pooled' | 'per-request';
/** The connection modes, for the CLI and the environment. */
export const KubeConnectionModes = ['pooled', 'per-request'] as const satisfies readonly KubeConnections[];
/** Environment variable of the connection mode: `pooled` (the default) or `per-request`; anything else is refused. */
export const KubeConnectionsEnv = 'RUNAS_MIGRATE_KUBE_CONNECTIONS';
