/**
 * How much of a fault matrix `npm test` runs. The whole matrix (every phase, both stops, every
 * kill point) is `npm run bench -- fault-matrix`, which sets RUNAS_MIGRATE_FAULT_MATRIX=full;
 * `npm test` runs the cases each invariant needs, so a fresh machine's CI stays within its time.
 */
export const FullMatrix = process.env.RUNAS_MIGRATE_FAULT_MATRIX === 'full';

/** All of `cases` with the full matrix; else only those `keep` picks. */
export function matrix<T>(cases: readonly T[], keep: (c: T) => boolean): T[] {
  return FullMatrix ? [...cases] : cases.filter(keep);
}
