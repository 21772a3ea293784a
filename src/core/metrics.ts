/**
 * runas-migrate's own metrics, served with the Temporal SDK's on the worker's Prometheus
 * endpoint (`runas-migrate worker --metrics-address`). Names as Prometheus shows them; counters
 * also get `_total`.
 */
export const ProductMetric = {
  /** Gauge: relaxation records in the records namespace, counted by each worker every 15 s. */
  WindowsOpen: 'runas_migrate_windows_open',
  /** Histogram (seconds): from relax to re-enforcement, for each window a run closes. */
  WindowSeconds: 'runas_migrate_window_seconds',
  /** Counter by `phase`: runs that entered each phase. */
  PhaseEntered: 'runas_migrate_phase_entered',
  /** Counter by `compensation` and `result` (`ok`, `failed`): compensation steps run. */
  Compensations: 'runas_migrate_compensations',
} as const;
