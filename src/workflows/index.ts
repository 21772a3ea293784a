/**
 * Every workflow of runas-migrate; the worker bundles this file.
 */
export { migrateOwnership } from './migrate.js';
export { sweepRelaxations } from './sweeper.js';
