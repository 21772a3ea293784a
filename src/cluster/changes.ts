/**
 * Wake-ups for the waits: Kubernetes watches on the objects a wait reads, so that the wait checks
 * again as soon as one of them changes instead of at every poll. The watch only says *when* to
 * look; the wait's own check still decides, with the same reads as before, so a missed or
 * duplicated event costs at most one poll interval or one extra check, never a wrong answer.
 *
 * Each watch resumes from the last resourceVersion it saw (bookmarks keep it fresh), and starts
 * again from the current state when the server answers 410 Gone (that version is compacted).
 */
import { Watch, type KubeConfig } from '@kubernetes/client-node';

/** One collection to watch: its API path and optional selectors. */
export interface WatchedCollection {
  /** API path of the collection, e.g. `/api/v1/namespaces/itrs/pods`. */
  path: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** Start after this version; from the current state when absent. */
  resourceVersion?: string;
}

/** Counts of what the watches did, for tests and benches. */
export interface ChangeCounts {
  /** Watch requests made (the first ones, resumptions, restarts). */
  watches: number;
  /** Events received (bookmarks excluded). */
  events: number;
  /** Restarts from the current state after a 410 Gone. */
  relists: number;
  /** Watches that ended with an error other than 410. */
  errors: number;
  /** Collections the API server would not let us watch (401/403): polled from then on. */
  refused: number;
}

/** Wakes a wait when a watched collection changes. */
export interface ChangeFeed {
  /**
   * Resolves at the first change since the last call returned (at once if one came in between),
   * or after `ms`; rejects with `cancelled`'s reason as soon as it is aborted.
   */
  changeOrTimeout(ms: number, cancelled?: AbortSignal): Promise<void>;
  /** Stops every watch. */
  close(): void;
  readonly counts: ChangeCounts;
}

/** How long one watch request lasts before the server ends it and it is resumed. */
const WatchSeconds = 300;
/** Pause before resuming a watch that failed, so an API server outage is not hammered. */
const RetryMs = [250, 1000, 2000, 5000];

interface WatchEvent {
  type: string;
  object?: { code?: number; metadata?: { resourceVersion?: string } };
}

/** Starts watches on `collections` and returns the feed that wakes on their changes. */
export function watchChanges(kubeConfig: KubeConfig, collections: WatchedCollection[]): ChangeFeed {
  const watch = new Watch(kubeConfig);
  const counts: ChangeCounts = { watches: 0, events: 0, relists: 0, errors: 0, refused: 0 };
  let changed = false;
  let closed = false;
  let wake: (() => void) | undefined;
  const controllers = new Set<AbortController>();
  const timers = new Set<NodeJS.Timeout>();

  const noteChange = () => {
    changed = true;
    wake?.();
  };

  const follow = (c: WatchedCollection, resourceVersion: string | undefined, failures: number) => {
    if (closed) return;
    let rv = resourceVersion;
    let gone = false;
    let sawEvent = false;
    let ended = false;
    let controller: AbortController | undefined;
    counts.watches++;
    const params = {
      allowWatchBookmarks: true,
      timeoutSeconds: WatchSeconds,
      ...(rv ? { resourceVersion: rv } : {}),
      ...(c.labelSelector ? { labelSelector: c.labelSelector } : {}),
      ...(c.fieldSelector ? { fieldSelector: c.fieldSelector } : {}),
    };
    const onEvent = (type: string, _obj: unknown, raw: WatchEvent) => {
      sawEvent = true;
      if (type === 'ERROR') {
        if (raw.object?.code === 410) gone = true;
        return;
      }
      const v = raw.object?.metadata?.resourceVersion;
      if (v) rv = v;
      if (type === 'BOOKMARK') return;
      counts.events++;
      noteChange();
    };
    const onDone = (err: unknown) => {
      if (ended) return;
      ended = true;
      if (controller) controllers.delete(controller);
      if (closed) return;
      const status = (err as { statusCode?: number } | null)?.statusCode;
      if (gone || status === 410) {
        // The version is compacted: start from the current state, and look, since changes in
        // between were not seen.
        counts.relists++;
        noteChange();
        return later(() => follow(c, undefined, 0), 0);
      }
      if (status === 401 || status === 403) {
        // Not allowed to watch: wake the wait, which already sleeps towards its fallback look
        // (the refusal comes after its first look), so that it polls from now on.
        counts.refused++;
        noteChange();
        return;
      }
      if (err) {
        counts.errors++;
        noteChange();
      }
      // A watch that ended at once, or failed, waits before the next one: no hot loop on a
      // server that closes every watch.
      const struggling = err || !sawEvent;
      later(
        () => follow(c, rv, struggling ? failures + 1 : 0),
        struggling ? RetryMs[Math.min(failures, RetryMs.length - 1)]! : 0,
      );
    };
    watch
      .watch(c.path, params, onEvent, onDone)
      .then((c) => {
        if (closed) c.abort();
        else if (!ended) controllers.add((controller = c));
      })
      .catch(onDone);
  };

  const later = (fn: () => void, ms: number) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };

  for (const c of collections) follow(c, c.resourceVersion, 0);

  return {
    counts,
    changeOrTimeout(ms: number, signal?: AbortSignal): Promise<void> {
      if (signal?.aborted) return Promise.reject(signal.reason as Error);
      if (changed) {
        changed = false;
        return Promise.resolve();
      }
      return new Promise<void>((resolve, reject) => {
        const finish = (err?: Error) => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          wake = undefined;
          changed = false;
          if (err) reject(err);
          else resolve();
        };
        const onAbort = () => finish(signal!.reason as Error);
        const timer = setTimeout(() => finish(), ms);
        signal?.addEventListener('abort', onAbort, { once: true });
        wake = () => finish();
      });
    },
    close() {
      closed = true;
      for (const c of controllers) c.abort();
      for (const t of timers) clearTimeout(t);
      controllers.clear();
      timers.clear();
      wake?.();
    },
  };
}

/** The API paths of the collections the waits watch. */
export const Collections = {
  pods: (namespace: string) => `/api/v1/namespaces/${namespace}/pods`,
  events: (namespace: string) => `/api/v1/namespaces/${namespace}/events`,
  jobs: (namespace: string) => `/apis/batch/v1/namespaces/${namespace}/jobs`,
  statefulSets: (namespace: string) => `/apis/apps/v1/namespaces/${namespace}/statefulsets`,
  custom: (kind: { group: string; version: string; plural: string }, namespace: string) =>
    `/apis/${kind.group}/${kind.version}/namespaces/${namespace}/${kind.plural}`,
  clusterCustom: (kind: { group: string; version: string; plural: string }) =>
    `/apis/${kind.group}/${kind.version}/${kind.plural}`,
} as const;

/** A field selector for one object by name. */
export const byName = (name: string) => `metadata.name=${name}`;
