/**
 * Every workflow of runas-migrate; the worker bundles this file.
 */
export { migrateOwnership } from './migrate.js';
export { migrateFleet } from './fleet.js';
export { sweepRelaxations } from './sweeper.js';
