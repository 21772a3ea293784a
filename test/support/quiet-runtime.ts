/**
 * Keeps the Temporal runtime's logs to warnings in test output.
 */
import { DefaultLogger, Runtime } from '@temporalio/worker';

try {
  Runtime.install({ logger: new DefaultLogger('WARN') });
} catch {
  // already installed in this fork by an earlier file
}
