/** Where Temporal is, and a client connected to it: all the CLI's run commands need. */
import { Client, Connection } from '@temporalio/client';

/** Temporal connection settings from options and the `temporal` CLI's environment variables. */
export function temporalTarget(opts: { address?: string; namespace?: string }): {
  address: string;
  namespace: string;
} {
  return {
    address: opts.address ?? process.env.TEMPORAL_ADDRESS ?? 'localhost:7233',
    namespace: opts.namespace ?? process.env.TEMPORAL_NAMESPACE ?? 'default',
  };
}

/** Connects a client (for the CLI and for the activities that ask about runs). */
export async function connectClient(opts: { address?: string; namespace?: string }): Promise<Client> {
  const target = temporalTarget(opts);
  const connection = await Connection.connect({ address: target.address });
  return new Client({ connection, namespace: target.namespace });
}
