/**
 * Renders a run's status (the `status` query) and a plan for a terminal, with cli-table3.
 */
import { AlwaysDeniedNamespaces, type GuardrailsInForce } from '../core/guardrails.js';
import CliTable from 'cli-table3';
import type { HelmStatus, MigrationReport, MigrationStatus, WindowStatus } from '../workflows/messages.js';
import type { FleetStatus } from '../workflows/fleet-messages.js';
import type { MigrationPlan } from '../core/plan.js';
import type { NamespaceAudit } from '../services/gatekeeper-audit.js';
import type { CheckResult } from '../core/verification.js';
import type { RunProgress } from './runs.js';
import { describeJobProgress, type JobProgress } from '../core/job.js';

/** The guardrails in force and what a run asks beyond them. */
export function renderGuardrails(inForce: GuardrailsInForce, refusals: readonly string[]): string {
  const g = inForce.guardrails;
  const t = new Table({ head: ['guardrail', 'value'] });
  t.push(
    ['namespaces.allow', g.namespaces.allow?.join(', ') ?? 'any not denied'],
    ['namespaces.selector', g.namespaces.selector ?? '-'],
    [
      'namespaces denied',
      [
        ...AlwaysDeniedNamespaces,
        g.namespaces.gatekeeper,
        inForce.workerNamespace,
        ...g.namespaces.deny,
      ].join(', '),
    ],
    ['maxWindow', g.maxWindow],
    ['maxApprovalWait', g.maxApprovalWait],
    ['maxPodSecurity', g.maxPodSecurity],
    ['jobImages', g.jobImages.join(', ') || "none: each StatefulSet's own image"],
    ['requiredGates', g.requiredGates.join(', ') || 'none'],
  );
  const lines = [`Guardrails from ${inForce.source} (${inForce.version}):`, t.toString()];
  if (refusals.length) lines.push('REFUSED by the guardrails:', ...refusals.map((r) => `  - ${r}`));
  return lines.join('\n');
}

/** A table, colourless unless stdout is a terminal. */
class Table extends CliTable {
  constructor(opts: { head: string[] }) {
    super({ ...opts, style: process.stdout.isTTY ? {} : { head: [], border: [] } });
  }
}

const since = (iso: string | undefined, until?: string) =>
  iso ? `${((Date.parse(until ?? new Date().toISOString()) - Date.parse(iso)) / 1000).toFixed(1)} s` : '';

/** The plan as tables: one row per Job with its volumes, then the policies it will relax. */
export function renderPlan(plan: MigrationPlan): string {
  const jobs = new Table({
    head: ['Job', 'StatefulSet', 'replica', 'image', 'volumes (claim → mount path)'],
  });
  for (const db of plan.databases) {
    for (const j of db.jobs) {
      jobs.push([
        j.name,
        db.statefulSet,
        String(j.ordinal),
        j.image,
        j.volumes.map((v) => `${v.claimName} → ${v.mountPath}`).join('\n'),
      ]);
    }
  }
  const rec = plan.policies;
  // PSA's refusal hides Gatekeeper's verdict until PSA is relaxed.
  const hidden = plan.jobPodsAdmission?.refusals.some((r) => /^(pod-security|unavailable):/.test(r)) ?? false;
  const policies = new Table({ head: ['policy', 'now', 'during the window'] });
  policies.push([
    'PSA enforce',
    rec.snapshot.podSecurity['pod-security.kubernetes.io/enforce'] ?? '(absent)',
    rec.plan.podSecurityEnforce ?? '(unchanged)',
  ]);
  for (const c of rec.snapshot.constraints) {
    const action = rec.plan.constraints.find(
      (p) => p.ref.name === c.ref.name && p.ref.kind === c.ref.kind,
    )?.action;
    policies.push([
      `${c.ref.kind}/${c.ref.name}`,
      c.excludedNamespaces === null
        ? 'excludedNamespaces absent'
        : `excludes ${c.excludedNamespaces.join(', ') || '(empty)'}`,
      action
        ? `${action === 'create' ? 'create list with' : 'add'} ${plan.namespace}${hidden ? ' if it refuses the Job pods' : ''}`
        : c.excludedBy === null
          ? 'left enforced: it admits the Job pods'
          : `already excluded by "${c.excludedBy}"`,
    ]);
  }
  const lines = [
    `Plan for namespace ${plan.namespace}: ownership to ${plan.uid}:${plan.gid} (supplementalGroups ${plan.supplementalGroups.join(',')})`,
    jobs.toString(),
    policies.toString(),
    ...plan.databases.map(
      (d) =>
        `${d.statefulSet}: ${d.replicas} replicas, runs as ${d.currentIds.runAsUser ?? '?'}:${d.currentIds.runAsGroup ?? '?'} (fsGroup ${d.currentIds.fsGroup ?? '?'}) today`,
    ),
    plan.platform
      ? `platform ${plan.platform.plural}/${plan.platform.name}: ${plan.platform.status ?? '(not found)'} (ready when ${plan.platform.ready})`
      : '',
    ...rec.snapshot.skipped.map((s) => `not relaxed: ${s.ref.kind}/${s.ref.name}: ${s.reason}`),
    ...(plan.jobPodsAdmission
      ? [
          `the ownership Jobs' pods, asked of the admission chain by dry run: ${plan.jobPodsAdmission.state}`,
          ...plan.jobPodsAdmission.refusals.map((r) => `  refused by ${r}`),
          ...plan.jobPodsAdmission.relaxation.map((r) => `  relaxation: ${r}`),
        ]
      : []),
    plan.databasePodsAdmission
      ? `the databases' pods with ${plan.uid}:${plan.gid}, asked of the admission chain by dry run: ${plan.databasePodsAdmission}`
      : '',
    plan.preflight.length
      ? `PREFLIGHT FAILED:\n  ${plan.preflight.join('\n  ')}`
      : 'preflight: the target IDs satisfy every policy that will be re-enforced',
  ];
  return lines.filter(Boolean).join('\n');
}

/** The Helm release's revisions in a run: before, upgraded to, rolled back to. */
export function renderHelm(h: HelmStatus): string {
  return (
    `helm release ${h.release}: revision ${h.revisionBefore} before the run` +
    (h.upgradedTo !== null ? `, upgraded to ${h.upgradedTo}` : '') +
    (h.rolledBackTo !== null ? `, rolled back to ${h.revisionBefore} as revision ${h.rolledBackTo}` : '')
  );
}

/**
 * The live status of a run; `progress` says where each running Job is (the Job wait's
 * heartbeat: entries of the volumes finished so far, and what it does in the current one).
 */
export function renderStatus(
  s: MigrationStatus,
  workflowId: string,
  progress: Record<string, JobProgress> = {},
): string {
  const gates = s.gates.map((g) => `${g.gate}: ${g.state}${g.by ? ` by ${g.by}` : ''}`).join(', ') || '—';
  const jobs = new Table({ head: ['Job', 'state', 'attempts', 'scanned', 'changed', 'seconds', 'note'] });
  for (const j of s.jobs) {
    const p = j.summary ? undefined : progress[j.name];
    jobs.push([
      j.name,
      j.state,
      String(j.attempts),
      j.summary ? String(j.summary.scanned) : p ? `${p.scanned}…` : '',
      j.summary ? String(j.summary.changed) : p ? `${p.changed}…` : '',
      j.summary ? String(j.summary.seconds) : '',
      j.state === 'failed' ? (j.message ?? '') : p ? describeJobProgress(p) : (j.pod ?? ''),
    ]);
  }
  const windows = s.windows.map(
    (w, i) =>
      `#${i + 1} opened ${w.openedAt}${w.closedAt ? `, closed after ${since(w.openedAt, w.closedAt)} (${w.closedBecause})` : `, OPEN for ${since(w.openedAt)}`}` +
      (w.admission ? `; ${relaxedFor(w.admission)}` : ''),
  );
  return [
    `run ${workflowId} — namespace ${s.namespace ?? '?'} — phase ${s.phase}${s.phaseSince && !s.endState ? ` for ${since(s.phaseSince)}` : ''}`,
    `gates: ${gates}`,
    `policies: ${s.policies.state}${s.windowMode ? ` (window mode ${s.windowMode})` : ''}`,
    s.helm ? renderHelm(s.helm) : '',
    ...windows.map((w) => `window ${w}`),
    s.jobs.length ? jobs.toString() : '',
    s.compensations.length ? `compensations run: ${s.compensations.join(' → ')}` : '',
    ...s.rejectedSignals.map((r) => `ignored signal: ${r}`),
    s.error ? `error: ${s.error}` : '',
    s.endState ? `ended: ${s.endState}${s.recovery ? ` (recovery ${s.recovery})` : ''}` : '',
    ...(s.leftToDo ?? []).map((t) => `LEFT TO DO: ${t}`),
    ...(s.alarms ?? []).map((a) => `ALARM: ${a}`),
  ]
    .filter(Boolean)
    .join('\n');
}

/** Temporal's view of a run that may be stuck: why it looks stuck, and the steps that retry. */
export function renderProgress(p: RunProgress): string {
  return [
    ...p.stuck.map((s) => `STUCK: ${s}`),
    ...p.steps
      .filter((s) => s.attempt > 1 && s.attempt < 3)
      .map(
        (s) => `retrying: ${s.activity} attempt ${s.attempt}${s.lastFailure ? ` (${s.lastFailure})` : ''}`,
      ),
  ].join('\n');
}

/** The checks of every replica, one row each: what each check saw, in a word, and how long it took. */
export function renderDatabaseChecks(results: readonly CheckResult[]): string {
  const t = new Table({ head: ['replica', 'check', 'result', 'seen', 'ms'] });
  for (const r of results) {
    const seen = r.skipped ?? r.output.split('\n')[0] ?? '';
    t.push([
      r.pod,
      r.check,
      r.skipped ? 'skipped' : r.ok ? 'ok' : 'FAILED',
      seen.length > 60 ? `${seen.slice(0, 59)}…` : seen,
      String(r.ms),
    ]);
  }
  return t.toString();
}

/** Gatekeeper's audit of the namespace, in one line per constraint. */
export function renderAudit(a: NamespaceAudit): string {
  const lines = a.constraints.map((c) =>
    !c.auditTimestamp
      ? `  ${c.constraint}: no audit pass in time`
      : c.violations.length
        ? `  ${c.constraint}: ${c.violations.length} violation(s): ${c.violations.map((v) => `${v.kind} ${v.name}: ${v.message}`).join('; ')}`
        : `  ${c.constraint}: no violation (audit ${c.auditTimestamp})`,
  );
  return [
    `Gatekeeper audit of ${a.namespace}: ${a.state} (waited ${(a.waitedMs / 1000).toFixed(1)} s)`,
    ...lines,
  ].join('\n');
}

/** The report of a finished run, for a terminal. */
export function renderReport(r: MigrationReport): string {
  const guardrails = r.guardrails
    ? `guardrails: ${r.guardrails.source} (${r.guardrails.version})`
    : 'guardrails: none recorded (a run from before guardrails)';
  if (r.dryRun) return `dry run of ${r.namespace}: nothing was changed\n${renderPlan(r.plan)}\n${guardrails}`;
  if (r.nothingToDo) return `${r.nothingToDo}\n${guardrails}`;
  const volumes = new Table({ head: ['Job', 'volume', 'scanned', 'changed'] });
  for (const v of r.volumes)
    volumes.push([
      v.job,
      v.skipped ? `${v.path} (empty: skipped)` : v.path,
      String(v.scanned),
      String(v.changed),
    ]);
  return [
    `namespace ${r.namespace} now owned by ${r.uid}:${r.gid} (${r.startedAt} → ${r.finishedAt})`,
    volumes.toString(),
    ...(r.databaseChecks?.length ? [renderDatabaseChecks(r.databaseChecks)] : []),
    ...(r.gatekeeperAudit ? [renderAudit(r.gatekeeperAudit)] : []),
    ...(r.helm ? [renderHelm(r.helm)] : []),
    `policies relaxed for ${r.windowSeconds.toFixed(1)} s in ${r.windows.length} window(s)`,
    ...r.windows.flatMap((w, i) => (w.admission ? [`window #${i + 1}: ${relaxedFor(w.admission)}`] : [])),
    `approvals (who, as the approver named themselves): ${r.approvals.map((a) => `${a.gate}=${a.state}${a.by ? ` by ${a.by} at ${a.at}` : ''}`).join(', ')}`,
    guardrails,
  ].join('\n');
}

/** What a window relaxed for the Job pods, and what it left enforced. */
function relaxedFor(a: NonNullable<WindowStatus['admission']>): string {
  if (a.admittedAt === null) return 'the worker may not dry-run pods: every blocking constraint relaxed';
  return (
    `Job pods admitted after ${a.dryRuns} dry runs; relaxed ${a.relaxed.join(', ') || 'no constraint'}` +
    (a.leftEnforced.length ? `, left enforced ${a.leftEnforced.join(', ')}` : '')
  );
}

/**
 * What changed between two statuses of a run, one line per event, for a log or a pipe: phase,
 * gates, windows, Jobs (and roll-back Jobs), compensations, ignored signals, alarms, the error
 * and the end. `prev` undefined: the events that brought the run to `next`.
 */
export function statusEvents(prev: MigrationStatus | undefined, next: MigrationStatus): string[] {
  const events: string[] = [];
  const added = <T>(before: readonly T[] | undefined, after: readonly T[] | undefined) =>
    (after ?? []).slice((before ?? []).length);
  if (prev?.phase !== next.phase)
    events.push(`phase ${next.phase}${next.namespace ? ` (${next.namespace})` : ''}`);
  for (const g of next.gates) {
    const was = prev?.gates.find((x) => x.gate === g.gate);
    if (g.state !== 'not-required' && was?.state !== g.state)
      events.push(`gate ${g.gate}: ${g.state}${g.by ? ` by ${g.by}` : ''}`);
  }
  next.windows.forEach((w, i) => {
    const was = prev?.windows[i];
    if (!was) events.push(`window #${i + 1} opened ${w.openedAt}: policies relaxed`);
    if (w.admission && !was?.admission) events.push(`window #${i + 1}: ${relaxedFor(w.admission)}`);
    if (w.closedAt && !was?.closedAt)
      events.push(
        `window #${i + 1} closed after ${since(w.openedAt, w.closedAt)} (${w.closedBecause ?? 'closed'})`,
      );
  });
  for (const [kind, jobs, before] of [
    ['job', next.jobs, prev?.jobs],
    ['roll-back job', next.rollbackJobs, prev?.rollbackJobs],
  ] as const) {
    for (const j of jobs ?? []) {
      const was = before?.find((x) => x.name === j.name);
      if (was?.state === j.state && was.attempts === j.attempts) continue;
      const detail =
        j.state === 'succeeded' && j.summary
          ? `: ${j.summary.changed} of ${j.summary.scanned} entries changed in ${j.summary.seconds} s`
          : j.state === 'failed' || j.state === 'not-admitted'
            ? `: ${j.message ?? ''}`
            : j.pod
              ? ` (pod ${j.pod})`
              : '';
      events.push(
        `${kind} ${j.name}: ${j.state}${j.attempts > 1 ? ` (attempt ${j.attempts})` : ''}${detail}`,
      );
    }
  }
  for (const c of added(prev?.compensations, next.compensations)) events.push(`compensation done: ${c}`);
  for (const c of added(prev?.compensationFailures, next.compensationFailures))
    events.push(`compensation FAILED: ${c}`);
  for (const r of added(prev?.rejectedSignals, next.rejectedSignals)) events.push(`ignored signal: ${r}`);
  for (const a of added(prev?.alarms, next.alarms)) events.push(`ALARM: ${a}`);
  if (next.error && next.error !== prev?.error) events.push(`error: ${next.error}`);
  if (next.endState && !prev?.endState)
    events.push(`ended: ${next.endState}${next.recovery ? ` (recovery ${next.recovery})` : ''}`);
  for (const t of added(prev?.leftToDo, next.leftToDo)) events.push(`LEFT TO DO: ${t}`);
  return events;
}

/** The fleet view: where the fleet is, its gates, and one row per target. */
export function renderFleet(s: FleetStatus): string {
  const counts = new Map<string, number>();
  for (const t of s.targets) counts.set(t.state, (counts.get(t.state) ?? 0) + 1);
  const lines = [
    `fleet ${s.name} — ${s.phase}; wave ${s.wave + 1} of ${s.waves}${s.canary ? ' (wave 1 is the canary)' : ''}; ` +
      `${[...counts].map(([k, v]) => `${v} ${k}`).join(', ')}; failures ${s.failures} (budget ${s.failureBudget})` +
      (s.continuedAsNew ? `; continued as new ${s.continuedAsNew}×` : ''),
  ];
  if (s.reason) lines.push(`reason: ${s.reason}`);
  if (s.windowSlots) {
    const ids = (workflowIds: string[]) =>
      workflowIds.map((w) => s.targets.find((t) => t.workflowId === w)?.id ?? w).join(', ') || 'none';
    lines.push(
      `relaxed at once: at most ${s.windowSlots.max} (maxOpenWindows); turn held by ${ids(s.windowSlots.held)}; waiting for a turn: ${ids(s.windowSlots.waiting)}`,
    );
  }
  for (const g of s.gates.filter((x) => x.state === 'waiting'))
    lines.push(`waiting for: runas-migrate approve --fleet ${s.name} --gate ${g.gate}`);
  const table = new Table({ head: ['wave', 'target', 'state', 'ended', 'window', 'message'] });
  for (const t of s.targets)
    table.push([
      String(t.wave + 1),
      t.id,
      t.state,
      t.endState ?? '-',
      t.windowSeconds === null ? '-' : `${t.windowSeconds.toFixed(1)} s`,
      (t.message ?? '').slice(0, 80),
    ]);
  lines.push(table.toString());
  return lines.join('\n');
}
