/**
 * The bed's Temporal Web UI, opened in Debian's Chromium (playwright-core, no browser download):
 * a run waiting at its relax gate says what it waits for, and a finished run shows each step by
 * its summary and, in its details, the phase and the security window. Screenshots are kept in
 * test-artifacts/web-ui/.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { defaultPayloadConverter } from '@temporalio/common';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { approveSignal } from '../../src/workflows/messages.js';
import { hostRunnerRun } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { readyFixture, removeFixtures } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const namespace = uniqueName('webui');
const taskQueue = uniqueName('webui');
const artifacts = new URL('../../test-artifacts/web-ui/', import.meta.url).pathname;
let browser: Browser;
let worker: TestWorker;

/** Debian's Chromium, or the one RUNAS_MIGRATE_CHROMIUM names. */
function chromiumPath(): string {
  if (process.env.RUNAS_MIGRATE_CHROMIUM) return process.env.RUNAS_MIGRATE_CHROMIUM;
  try {
    return execFileSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('no chromium on PATH: apt-get install chromium, or set RUNAS_MIGRATE_CHROMIUM');
  }
}

/** Opens a tab of a run's page and waits until the UI has loaded it. */
async function openRun(workflowId: string, runId: string, tab: 'history' | 'user-metadata'): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1200 } });
  await page.goto(
    `${bed().temporal.uiUrl}/namespaces/default/workflows/${encodeURIComponent(workflowId)}/${runId}/${tab}`,
    // Not 'networkidle': the UI long-polls a running workflow's history, so the network never idles.
    { waitUntil: 'domcontentloaded' },
  );
  await page.getByText(workflowId).first().waitFor();
  return page;
}

/**
 * The run's current details as the UI shows them: Markdown it renders in a frame of its own
 * (`/render?content=…`), read once the frame holds `expected`.
 */
async function details(page: Page, expected: string): Promise<string> {
  return waitFor(
    `details showing "${expected}"`,
    async () => {
      for (const frame of page.frames()) {
        if (!frame.url().includes('/render?content=')) continue;
        const text = await frame.innerText('body').catch(() => '');
        if (text.includes(expected)) return text;
      }
      return undefined;
    },
    30_000,
    250,
  );
}

beforeAll(async () => {
  mkdirSync(artifacts, { recursive: true });
  browser = await chromium.launch({ executablePath: chromiumPath(), args: ['--no-sandbox'] });
  await readyFixture(kc, namespace, bed().pvRoot);
  worker = await startTestWorker(taskQueue);
});

afterAll(async () => {
  await browser?.close();
  await worker?.stop();
  await removeFixtures(kc, [namespace]);
});

describe('the Temporal Web UI, in a browser', () => {
  it(
    'shows what a run waits for at the relax gate, then every step of the finished run by its summary, and the phase and window in its details',
    { timeout: 240_000 },
    async () => {
      const { handle } = await startRun(
        worker.w.client,
        { ...hostRunnerRun(namespace), approvals: ['relax'] },
        { taskQueue },
      );
      const { runId } = await handle.describe();
      await waitFor(
        'the relax gate',
        async () => (await queryStatus(worker.w.client, namespace)).gates.some((g) => g.state === 'waiting'),
        120_000,
        200,
      );

      const waiting = await openRun(handle.workflowId, runId, 'user-metadata');
      const waitingDetails = await details(waiting, 'waiting for approval of gate');
      expect(waitingDetails).toMatch(/waiting for approval of gate\s*relax/);
      expect(waitingDetails).toContain(`namespace ${namespace}`);
      expect(waitingDetails).toContain('Signal approve');
      await waiting.screenshot({ path: join(artifacts, 'waiting-at-relax-gate.png') });
      await waiting.close();

      await handle.signal(approveSignal, { gate: 'relax', by: 'web-ui test' });
      await handle.result();

      // Every step the run scheduled, with the summary it gave, from the history itself.
      const steps: string[] = [];
      for (const e of (await handle.fetchHistory()).events ?? []) {
        const summary = e.userMetadata?.summary;
        const type = e.activityTaskScheduledEventAttributes?.activityType?.name;
        if (type && summary) steps.push(`${type} • ${defaultPayloadConverter.fromPayload<string>(summary)}`);
      }
      expect(steps.length).toBeGreaterThan(10);
      expect(steps).toContain(`relaxPolicies • relax the policies of ${namespace}`);

      const history = await openRun(handle.workflowId, runId, 'history');
      await history.locator('svg text', { hasText: 'relaxPolicies' }).first().waitFor();
      const timeline = (await history.locator('svg text').allTextContents()).map((t) => t.trim());
      for (const step of steps) expect(timeline, step).toContain(step);
      await history.screenshot({ path: join(artifacts, 'finished-run-history.png') });
      await history.close();

      const done = await openRun(handle.workflowId, runId, 'user-metadata');
      const doneDetails = await details(done, 'security window #1');
      expect(doneDetails).toContain(`completed — namespace ${namespace}`);
      const window = (await queryStatus(worker.w.client, namespace)).windows[0]!;
      expect(doneDetails).toContain(
        `security window #1: opened ${window.openedAt}, closed ${window.closedAt} (${window.closedBecause})`,
      );
      await done.screenshot({ path: join(artifacts, 'finished-run-details.png') });
      await done.close();
    },
  );
});
