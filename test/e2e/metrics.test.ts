/**
 * The worker's Prometheus endpoint, scraped during a real run on the bed: the SDK's metrics and
 * runas-migrate's own (open windows, window seconds, phases entered, compensations); its JSON
 * logs; and its OpenTelemetry traces, received by an OTLP/HTTP endpoint the test serves.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { CoreV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInputRaw } from '../../src/core/input.js';
import { ProductMetric } from '../../src/core/metrics.js';
import { DefaultRecordsNamespace, RecordSelector } from '../../src/core/records.js';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { connectClient } from '../../src/app/worker.js';
import { abortSignal, Phase } from '../../src/workflows/messages.js';
import { hostRunnerRun } from '../../testbed/fixture.js';
import { freePort, waitFor } from '../../testbed/process.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { scrape, sumOf, type Sample } from '../support/prometheus.js';
import { readyFixture, removeFixtures } from '../support/snapshot.js';
import { cleanUpAfterProcessWorker } from '../support/worker.js';

const kc = kubeConfig();
const cli = fileURLToPath(new URL('../../bin/runas-migrate.js', import.meta.url));
const namespace = uniqueName('metrics');
const taskQueue = uniqueName('metrics');
let worker: ChildProcess;
let address: string;
let client: Awaited<ReturnType<typeof connectClient>>;
let stderr = '';
let collector: Server;
/** The spans the worker exported (OTLP/HTTP JSON). */
const spans: { traceId: string; spanId: string; parentSpanId?: string; name: string; service: string }[] = [];

interface OtlpTraces {
  resourceSpans: {
    resource: { attributes: { key: string; value: { stringValue?: string } }[] };
    scopeSpans: { spans: { traceId: string; spanId: string; parentSpanId?: string; name: string }[] }[];
  }[];
}

/** An OTLP/HTTP traces endpoint: keeps every span it is sent. */
async function startCollector(): Promise<string> {
  collector = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const traces = JSON.parse(body) as OtlpTraces;
      for (const r of traces.resourceSpans) {
        const service = r.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
        for (const scope of r.scopeSpans) for (const sp of scope.spans) spans.push({ ...sp, service });
      }
      res.setHeader('Content-Type', 'application/json');
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces`;
}

const recordsNow = async () =>
  (
    await kc
      .makeApiClient(CoreV1Api)
      .listNamespacedConfigMap({ namespace: DefaultRecordsNamespace, labelSelector: RecordSelector })
  ).items.length;

beforeAll(async () => {
  client = await connectClient({ address: bed().temporal.address });
  await readyFixture(kc, namespace, bed().pvRoot);
  address = `127.0.0.1:${await freePort()}`;
  const tracesEndpoint = await startCollector();
  worker = spawn(process.execPath, [cli, 'worker', '--task-queue', taskQueue], {
    env: {
      ...process.env,
      KUBECONFIG: bed().kubeconfig,
      TEMPORAL_ADDRESS: bed().temporal.address,
      RUNAS_MIGRATE_METRICS_ADDRESS: address,
      RUNAS_MIGRATE_LOG_FORMAT: 'json',
      RUNAS_MIGRATE_LOG_LEVEL: 'INFO',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: tracesEndpoint,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  worker.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitFor(
    'the metrics endpoint',
    () =>
      scrape(address).then(
        () => true,
        () => false,
      ),
    30_000,
    200,
  );
});

afterAll(async () => {
  worker?.kill('SIGKILL');
  await cleanUpAfterProcessWorker(client, { taskQueue, namespace, test: 'metrics' });
  await client.connection.close();
  await removeFixtures(kc, [namespace]);
  collector?.close();
});

describe('worker metrics, logs and traces', () => {
  it(
    'a run held in its window and aborted shows up in the open-windows gauge, the window histogram, the phase and compensation counters, the SDK metrics, and one trace',
    { timeout: 180_000 },
    async () => {
      const mine = { task_queue: taskQueue };
      const input: MigrationInputRaw = {
        ...hostRunnerRun(namespace, 'job-duration'),
        // Jobs that can never be scheduled keep the run inside its window until it is aborted.
        job: { nodeSelector: { 'runas-migrate.dev/no-such-node': 'true' } },
      };
      const { handle } = await startRun(client, input, { taskQueue });
      await waitFor(
        'policies relaxed',
        async () => (await queryStatus(client, namespace)).policies.state === 'relaxed',
        120_000,
        100,
      );
      // The gauge is the cluster's count of relaxation records (other runs' included).
      let during: Sample[] = [];
      await waitFor(
        'the open-windows gauge counts this window',
        async () => {
          during = await scrape(address);
          const records = await recordsNow();
          return records >= 1 && sumOf(during, ProductMetric.WindowsOpen) === records;
        },
        20_000,
        200,
      );
      expect(sumOf(during, `${ProductMetric.PhaseEntered}_total`, { phase: Phase.RelaxingPolicies })).toBe(1);
      expect(sumOf(during, `${ProductMetric.PhaseEntered}_total`, { phase: Phase.Verifying })).toBe(0);
      expect(sumOf(during, `${ProductMetric.WindowSeconds}_count`)).toBe(0);

      await handle.signal(abortSignal, { reason: 'metrics test', by: 'test' });
      await expect(handle.result()).rejects.toThrow();
      const status = await queryStatus(client, namespace);
      const after = await scrape(address);

      expect(sumOf(after, `${ProductMetric.PhaseEntered}_total`, { phase: Phase.Aborted })).toBe(1);
      expect(sumOf(after, `${ProductMetric.PhaseEntered}_total`, { phase: Phase.Compensating })).toBe(1);
      // One window, closed: the histogram holds its seconds as the run measured them.
      const window = status.windows.at(-1)!;
      expect(window.closedAt).toBeDefined();
      expect(sumOf(after, `${ProductMetric.WindowSeconds}_count`)).toBe(1);
      expect(sumOf(after, `${ProductMetric.WindowSeconds}_sum`)).toBeCloseTo(
        (Date.parse(window.closedAt!) - Date.parse(window.openedAt)) / 1000,
        3,
      );
      expect(status.compensations.length).toBeGreaterThan(0);
      expect(sumOf(after, `${ProductMetric.Compensations}_total`, { result: 'ok' })).toBe(
        status.compensations.length,
      );
      expect(sumOf(after, `${ProductMetric.Compensations}_total`, { result: 'failed' })).toBe(0);
      for (const c of status.compensations)
        expect(sumOf(after, `${ProductMetric.Compensations}_total`, { compensation: c })).toBeGreaterThan(0);
      await waitFor(
        'the open-windows gauge drops the closed window',
        async () => sumOf(await scrape(address), ProductMetric.WindowsOpen) === (await recordsNow()),
        20_000,
        200,
      );
      // The SDK's own metrics, for this task queue.
      expect(
        sumOf(after, 'temporal_activity_execution_latency_count', {
          ...mine,
          activity_type: 'relaxPolicies',
        }),
      ).toBeGreaterThan(0);
      expect(sumOf(after, 'temporal_workflow_failed_total', mine)).toBe(1);

      // RUNAS_MIGRATE_LOG_FORMAT=json: every line the worker wrote is one JSON object, and the
      // run's own lines carry its IDs, target namespace and phase.
      const lines = stderr.split('\n').filter(Boolean);
      const entries = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      for (const e of entries) expect(Object.keys(e).slice(0, 3)).toEqual(['time', 'level', 'message']);
      expect(entries.some((e) => String(e.message).startsWith(`worker polling ${taskQueue}`))).toBe(true);
      const { runId } = await handle.describe();
      const phases = entries.filter((e) => e.message === 'phase entered' && e.runId === runId);
      expect(phases.map((e) => e.phase)).toEqual(
        expect.arrayContaining([Phase.RelaxingPolicies, Phase.Compensating, Phase.Aborted]),
      );
      for (const e of phases)
        expect(e).toMatchObject({
          workflowId: `runas-migrate-${namespace}`,
          targetNamespace: namespace,
          taskQueue,
        });

      // OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the run is one trace, from the workflow's span through
      // the steps it scheduled to the steps the worker ran.
      const run = await waitFor(
        "the run's workflow span",
        () => spans.find((sp) => sp.name === 'RunWorkflow:migrateOwnership'),
        20_000,
        200,
      );
      expect(run.service).toBe('runas-migrate-worker');
      const ofRun = (name: string) => spans.filter((sp) => sp.traceId === run.traceId && sp.name === name);
      await waitFor('the steps run', () => ofRun('RunActivity:restorePolicies').length > 0, 20_000, 200);
      for (const step of ['relaxPolicies', 'restorePolicies']) {
        const started = ofRun(`StartActivity:${step}`);
        expect(started.length).toBeGreaterThan(0);
        const ran = ofRun(`RunActivity:${step}`);
        expect(ran.length).toBeGreaterThan(0);
        for (const r of ran) expect(started.map((sp) => sp.spanId)).toContain(r.parentSpanId);
      }
      // A signal's span continues its sender's trace (this test's client has none: a trace of its own).
      expect(spans.filter((sp) => sp.name === 'HandleSignal:abort')).toHaveLength(1);
    },
  );
});
