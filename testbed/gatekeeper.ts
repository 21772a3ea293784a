/**
 * Gatekeeper on the test bed: the real `manager` binary (webhook, audit, status and generate
 * operations) as a host process, its CRDs, a serving certificate from a CA the bed makes, the
 * ValidatingWebhookConfiguration that sends Pod admissions to it, and this project's
 * ConstraintTemplates. The template controller creates the constraint kinds.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  AdmissionregistrationV1Api,
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubernetesObjectApi,
  loadAllYaml,
  type KubeConfig,
  type KubernetesObject,
  type V1CustomResourceDefinition,
  type V1ValidatingWebhookConfiguration,
} from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { freePort, startDetached, waitFor, type RecordedProcess } from './process.js';
import { testbedDir } from './tools.js';

/** Namespace and Pod that Gatekeeper's status operation names itself after (POD_NAMESPACE, POD_NAME). */
export const GatekeeperPod = { namespace: 'gatekeeper-system', name: 'gatekeeper-host' } as const;

/** Names Gatekeeper's own chart uses for its validating webhook. */
export const GatekeeperWebhook = {
  configuration: 'gatekeeper-validating-webhook-configuration',
  webhook: 'validation.gatekeeper.sh',
  /** Namespaces with this label are never sent to Gatekeeper (the chart's exemption). */
  ignoreLabel: 'admission.gatekeeper.sh/ignore',
} as const;

/** What the bed's webhook does when Gatekeeper does not answer. */
export type WebhookFailurePolicy = 'Fail' | 'Ignore';

/** Seconds between two audit passes on the bed (the chart's default is 60). */
export const AuditIntervalSeconds = 5;

/** What the bed records about its Gatekeeper. */
export interface GatekeeperState {
  dir: string;
  port: number;
  healthPort: number;
  /** Gatekeeper always serves Prometheus metrics: on a port of its own, not 8888 shared by beds. */
  metricsPort: number;
  failurePolicy: WebhookFailurePolicy;
  process?: RecordedProcess;
}

/** The templates this project writes, one YAML file each, in testbed/gatekeeper/. */
export function constraintTemplates(): KubernetesObject[] {
  const dir = join(testbedDir, 'gatekeeper');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8'))[0]!.toJS() as KubernetesObject);
}

/** The CRDs of a Gatekeeper binary: kept beside its bin/ folder by the tool build. */
export function gatekeeperCrdDir(binary: string): string {
  const dir = process.env.RUNAS_MIGRATE_GATEKEEPER_CRDS ?? join(dirname(dirname(binary)), 'crds');
  if (!existsSync(dir)) {
    throw new Error(
      `no Gatekeeper CRDs at ${dir}: set RUNAS_MIGRATE_GATEKEEPER_CRDS to the manifest_staging/charts/gatekeeper/crds folder of its module`,
    );
  }
  return dir;
}

/** The bed's Gatekeeper state before it starts: folder, ports, failure policy. */
export async function planGatekeeper(bedDir: string): Promise<GatekeeperState> {
  const dir = join(bedDir, 'gatekeeper');
  mkdirSync(join(dir, 'certs'), { recursive: true });
  mkdirSync(join(dir, 'api-cache'), { recursive: true });
  const policy = process.env.RUNAS_MIGRATE_TESTBED_WEBHOOK_FAILURE_POLICY ?? 'Fail';
  if (policy !== 'Fail' && policy !== 'Ignore') {
    throw new Error(`RUNAS_MIGRATE_TESTBED_WEBHOOK_FAILURE_POLICY=${policy}: use Fail or Ignore`);
  }
  const ports = new Set<number>();
  while (ports.size < 3) ports.add(await freePort());
  const [port, healthPort, metricsPort] = [...ports] as [number, number, number];
  return { dir, port, healthPort, metricsPort, failurePolicy: policy };
}

/**
 * A CA and a serving certificate for 127.0.0.1, written where `--cert-dir` reads them
 * (`tls.crt`, `tls.key`); returns the CA in PEM for the webhook's caBundle.
 */
export function makeServingCertificate(gk: GatekeeperState): string {
  const certs = join(gk.dir, 'certs');
  const openssl = (args: string[]) => execFileSync('openssl', args, { cwd: certs, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '30',
    '-subj',
    '/CN=runas-migrate test bed webhook CA',
  ]);
  openssl([
    'req',
    ...ec,
    '-keyout',
    'tls.key',
    '-out',
    'tls.csr',
    '-subj',
    '/CN=gatekeeper-webhook-service.gatekeeper-system.svc',
  ]);
  writeFileSync(join(certs, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl([
    'x509',
    '-req',
    '-in',
    'tls.csr',
    '-CA',
    'ca.crt',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'tls.crt',
    '-days',
    '30',
    '-extfile',
    'san.ext',
  ]);
  return readFileSync(join(certs, 'ca.crt'), 'utf8');
}

/** Applies Gatekeeper's CRDs, its namespace and the Pod its status operation names itself after. */
export async function installGatekeeperObjects(kc: KubeConfig, crdDir: string): Promise<void> {
  const ext = kc.makeApiClient(ApiextensionsV1Api);
  const core = kc.makeApiClient(CoreV1Api);
  // loadAllYaml gives client-node's models: a plain object's `x-kubernetes-*` keys would be
  // dropped when the client serializes it.
  const crds = readdirSync(crdDir)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => loadAllYaml(readFileSync(join(crdDir, f), 'utf8')) as V1CustomResourceDefinition[])
    .filter((o) => o?.kind === 'CustomResourceDefinition')
    .map(typedOpenSchema);
  await Promise.all(
    crds.map((crd) => createIfMissing(() => ext.createCustomResourceDefinition({ body: crd }))),
  );
  await createIfMissing(() =>
    core.createNamespace({
      body: {
        metadata: {
          name: GatekeeperPod.namespace,
          labels: { [GatekeeperWebhook.ignoreLabel]: 'no-self-managing' },
        },
      },
    }),
  );
  await createIfMissing(() =>
    core.createNamespacedPod({
      namespace: GatekeeperPod.namespace,
      body: {
        metadata: { name: GatekeeperPod.name, labels: { 'gatekeeper.sh/system': 'yes' } },
        spec: {
          // Never scheduled: Gatekeeper runs on the host and only reads this object's name and UID.
          nodeSelector: { 'runas-migrate.dev/gatekeeper-runs-on-the-host': 'true' },
          containers: [{ name: 'manager', image: `openpolicyagent/gatekeeper` }],
        },
      },
    }),
  );
  for (const crd of crds) {
    await waitFor(
      `CRD ${crd.metadata!.name} established`,
      async () => {
        const c = await ext.readCustomResourceDefinition({ name: crd.metadata!.name! });
        return c.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True');
      },
      30_000,
      100,
    );
  }
}

/** Starts Gatekeeper as a host process with the bed's kubeconfig. */
export function startGatekeeper(binary: string, gk: GatekeeperState, kubeconfig: string): RecordedProcess {
  return startDetached(
    binary,
    [
      `--kubeconfig=${kubeconfig}`,
      '--operation=webhook',
      '--operation=audit',
      '--operation=status',
      '--operation=generate',
      '--host=127.0.0.1',
      `--port=${gk.port}`,
      `--cert-dir=${join(gk.dir, 'certs')}`,
      '--disable-cert-rotation',
      `--health-addr=127.0.0.1:${gk.healthPort}`,
      '--metrics-addr=0',
      `--prometheus-port=${gk.metricsPort}`,
      `--audit-interval=${AuditIntervalSeconds}`,
      `--api-cache-dir=${join(gk.dir, 'api-cache')}`,
      '--default-create-vap-for-templates=false',
      '--default-create-vap-binding-for-constraints=false',
      '--enable-external-data=false',
      '--enable-generator-resource-expansion=false',
      '--log-denies',
      '--shutdown-delay=0',
      `--exempt-namespace=${GatekeeperPod.namespace}`,
    ],
    {
      logFile: join(gk.dir, 'gatekeeper.log'),
      marker: join(gk.dir, 'certs'),
      env: {
        ...process.env,
        POD_NAME: GatekeeperPod.name,
        POD_NAMESPACE: GatekeeperPod.namespace,
        NAMESPACE: GatekeeperPod.namespace,
      },
    },
  );
}

/** Whether Gatekeeper answers its readiness endpoint. */
export async function gatekeeperReady(gk: GatekeeperState): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${gk.healthPort}/readyz`, {
      signal: AbortSignal.timeout(2000),
    });
    return res.ok;
  } catch {
    return false;
  }
}

/** The bed's ValidatingWebhookConfiguration: Pods (create, update) to Gatekeeper at 127.0.0.1. */
export function webhookConfiguration(
  gk: Pick<GatekeeperState, 'port' | 'failurePolicy'>,
  caPem: string,
  name: string = GatekeeperWebhook.configuration,
): V1ValidatingWebhookConfiguration {
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'ValidatingWebhookConfiguration',
    metadata: { name, labels: { 'gatekeeper.sh/system': 'yes' } },
    webhooks: [
      {
        name: GatekeeperWebhook.webhook,
        admissionReviewVersions: ['v1', 'v1beta1'],
        clientConfig: {
          url: `https://127.0.0.1:${gk.port}/v1/admit`,
          caBundle: Buffer.from(caPem).toString('base64'),
        },
        failurePolicy: gk.failurePolicy,
        matchPolicy: 'Exact',
        sideEffects: 'None',
        timeoutSeconds: 3,
        namespaceSelector: {
          matchExpressions: [{ key: GatekeeperWebhook.ignoreLabel, operator: 'DoesNotExist' }],
        },
        rules: [
          {
            apiGroups: [''],
            apiVersions: ['v1'],
            operations: ['CREATE', 'UPDATE'],
            resources: ['pods'],
            scope: 'Namespaced',
          },
        ],
      },
    ],
  };
}

/** Registers the webhook (replacing one left by an earlier bed). */
export async function registerWebhook(
  kc: KubeConfig,
  config: V1ValidatingWebhookConfiguration,
): Promise<void> {
  const api = kc.makeApiClient(AdmissionregistrationV1Api);
  await api.deleteValidatingWebhookConfiguration({ name: config.metadata!.name! }).catch(() => undefined);
  await api.createValidatingWebhookConfiguration({ body: config });
}

/**
 * Applies this project's ConstraintTemplates and waits until Gatekeeper has created and
 * established the constraint kind of each.
 */
export async function installConstraintTemplates(kc: KubeConfig): Promise<void> {
  const objects = kc.makeApiClient(KubernetesObjectApi);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const ext = kc.makeApiClient(ApiextensionsV1Api);
  const templates = constraintTemplates();
  // Replaced when present: a bed's templates are always this checkout's.
  await Promise.all(
    templates.map(async (t) => {
      try {
        const live = await objects.read({
          apiVersion: t.apiVersion!,
          kind: t.kind!,
          metadata: { name: t.metadata!.name! },
        });
        await objects.replace({
          ...t,
          metadata: { ...t.metadata, resourceVersion: live.metadata!.resourceVersion! },
        });
      } catch (err) {
        if ((err as { code?: number }).code !== 404) throw err;
        await objects.create(t);
      }
    }),
  );
  for (const t of templates) {
    const name = t.metadata!.name!;
    await waitFor(
      `ConstraintTemplate ${name} created by Gatekeeper`,
      async () => {
        const live = (await custom.getClusterCustomObject({
          group: 'templates.gatekeeper.sh',
          version: 'v1',
          plural: 'constrainttemplates',
          name,
        })) as { status?: { created?: boolean } };
        if (!live.status?.created) return false;
        const crd = await ext.readCustomResourceDefinition({ name: `${name}.constraints.gatekeeper.sh` });
        return crd.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True');
      },
      120_000,
      200,
    );
  }
}

/**
 * v3.23.1's Connection CRD has a field with only `x-kubernetes-preserve-unknown-fields`, which
 * the 1.35 API server refuses as not structural; such a field is given `type: object`.
 */
function typedOpenSchema(crd: V1CustomResourceDefinition): V1CustomResourceDefinition {
  const fix = (node: unknown): void => {
    if (!node || typeof node !== 'object') return;
    const n = node as Record<string, unknown>;
    if (n.xKubernetesPreserveUnknownFields === true && n.type === undefined && !n.xKubernetesIntOrString)
      n.type = 'object';
    for (const v of Object.values(n)) fix(v);
  };
  fix(crd.spec);
  return crd;
}

async function createIfMissing(create: () => Promise<unknown>): Promise<void> {
  try {
    await create();
  } catch (err) {
    if ((err as { code?: number }).code !== 409) throw err;
  }
}
