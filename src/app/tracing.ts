/**
 * OpenTelemetry tracing of a worker, optional: with an OTLP/HTTP traces endpoint, each run is
 * one trace — the workflow's span, a span per step it schedules and per step a worker runs,
 * signals and queries — exported in batches. Through `@temporalio/interceptors-opentelemetry`,
 * which needs the OpenTelemetry JS SDK 1.x line (its `Resource` class and span processors).
 */
import { context, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import {
  makeWorkflowExporter,
  OpenTelemetryActivityInboundInterceptor,
  OpenTelemetryActivityOutboundInterceptor,
} from '@temporalio/interceptors-opentelemetry';
import type { WorkerInterceptors, WorkerOptions } from '@temporalio/worker';

export { TracesEndpointEnv } from '../core/settings.js';

/** A worker's tracing: what its Worker needs, and how to flush it at shutdown. */
export interface WorkerTracing {
  /** The activity interceptors that open a span per step and carry the trace into it. */
  interceptors: WorkerInterceptors;
  /** The sink the workflow's spans leave the sandbox through. */
  sinks: NonNullable<WorkerOptions['sinks']>;
  /** Exports what is left and stops. */
  shutdown(): Promise<void>;
}

/** Starts exporting spans to `endpoint` as service `serviceName`. */
export function startTracing(endpoint: string, serviceName = 'runas-migrate-worker'): WorkerTracing {
  const resource = new Resource({ 'service.name': serviceName });
  const spanProcessor = new BatchSpanProcessor(new OTLPTraceExporter({ url: endpoint }), {
    scheduledDelayMillis: 1_000,
  });
  const provider = new BasicTracerProvider({ resource, spanProcessors: [spanProcessor] });
  // The activity interceptors take their tracer, the propagator that reads the trace from a
  // step's headers, and the context its span runs in from the globals.
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  return {
    interceptors: {
      activity: [
        (ctx) => ({
          inbound: new OpenTelemetryActivityInboundInterceptor(ctx),
          outbound: new OpenTelemetryActivityOutboundInterceptor(ctx),
        }),
      ],
    },
    sinks: { exporter: makeWorkflowExporter(spanProcessor, resource) },
    shutdown: () => provider.shutdown(),
  };
}
