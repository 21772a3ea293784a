/**
 * Histories saved as JSON with the generated proto module's own `toObject`/`fromObject`.
 *
 * `historyToJSON`/`historyFromJSON` from `@temporalio/common/lib/proto-utils` throw "type must be
 * a Type" in 1.24.0 with this dependency tree: `@temporalio/common` and `@temporalio/proto` each
 * get their own copy of protobufjs 8, and protojson's `instanceof Type` check fails across them.
 */
import { temporal } from '@temporalio/proto';

const History = temporal.api.history.v1.History;

/**
 * A history as stable, readable JSON (int64 as strings, enums by name, bytes as base64), without
 * what names the machine that recorded it: stack traces and worker identities are blanked (replay
 * reads neither).
 */
export function historyToJSON(history: temporal.api.history.v1.IHistory): string {
  const json = History.toObject(History.fromObject(history), {
    longs: String,
    enums: String,
    bytes: String,
  });
  return (
    JSON.stringify(
      json,
      (key, value: unknown) =>
        key === 'stackTrace' ? '' : key === 'identity' && value ? 'recorded-run' : value,
      2,
    ) + '\n'
  );
}

/** The inverse of {@link historyToJSON}: a History whose event IDs are Longs, as replay expects. */
export function historyFromJSON(json: unknown): temporal.api.history.v1.History {
  return History.fromObject(json as Record<string, unknown>);
}
