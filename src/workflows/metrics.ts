/**
 * The run's metrics. The SDK emits nothing while a workflow replays, so each is counted once
 * however often the run is replayed or moves between workers.
 */
import { metricMeter } from '@temporalio/workflow';
import { ProductMetric } from '../core/metrics.js';
import type { Phase } from './messages.js';

/** A run entered `phase`. */
export function phaseEntered(phase: Phase): void {
  metricMeter.createCounter(ProductMetric.PhaseEntered, '', 'runs that entered each phase').add(1, { phase });
}

/** A compensation step ended. */
export function compensationRan(compensation: string, ok: boolean): void {
  metricMeter
    .createCounter(ProductMetric.Compensations, '', 'compensation steps run, by result')
    .add(1, { compensation, result: ok ? 'ok' : 'failed' });
}

/** A security window closed after `seconds`. */
export function windowClosed(seconds: number): void {
  metricMeter
    .createHistogram(ProductMetric.WindowSeconds, 'float', 's', 'seconds from relax to re-enforcement')
    .record(seconds);
}
