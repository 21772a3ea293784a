import { defineConfig } from 'vitest/config';

// Files that start workers or talk to the test bed run one at a time in one fork: the native
// worker crashes under multi-threaded vitest workers, and one bed serves the whole run.
const serial = {
  pool: 'forks' as const,
  fileParallelism: false,
  setupFiles: ['test/support/quiet-runtime.ts'],
};

export default defineConfig({
  test: {
    reporters: process.env.CI ? ['default', ['json', { outputFile: '.vitest-report.json' }]] : ['default'],
    projects: [
      { test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      {
        test: {
          name: 'workflow',
          include: ['test/workflow/**/*.test.ts'],
          globalSetup: ['test/support/time-skipping-setup.ts'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          ...serial,
        },
      },
      {
        test: {
          name: 'bed',
          include: ['test/integration/**/*.test.ts', 'test/e2e/**/*.test.ts', 'test/fault/**/*.test.ts'],
          globalSetup: ['test/support/testbed-setup.ts'],
          testTimeout: 120_000,
          hookTimeout: 300_000,
          ...serial,
        },
      },
    ],
  },
});
