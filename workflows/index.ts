/**
 * Every workflow of runas-migrate; the worker bundles this file.
 */
export { sweepRelaxations } from './sweeper.js';
