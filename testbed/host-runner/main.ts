/**
 * Entry point of the host runner process: `tsx testbed/host-runner/main.ts`, configured by
 * environment (the test bed starts it detached and records its PID).
 */
import { KubeConfig } from '@kubernetes/client-node';
import { HostRunner } from './runner.js';

const required = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must be set`);
  return v;
};

const kubeConfig = new KubeConfig();
kubeConfig.loadFromFile(required('KUBECONFIG'));
const runner = new HostRunner({
  kubeConfig,
  nodeName: process.env.HOST_RUNNER_NODE ?? 'host-runner',
  stateDir: required('HOST_RUNNER_STATE_DIR'),
  port: Number(required('HOST_RUNNER_PORT')),
  tlsCert: required('HOST_RUNNER_TLS_CERT'),
  tlsKey: required('HOST_RUNNER_TLS_KEY'),
  execHelper: process.env.HOST_RUNNER_EXEC_HELPER,
});
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => void runner.stop().finally(() => process.exit(0)));
}
await runner.start();
process.stderr.write('[host-runner] ready\n');
