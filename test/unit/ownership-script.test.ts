/**
 * The ownership script run for real (bash, coreutils and findutils, as root, from `/`; and with
 * BusyBox's find, chown and the rest, as on an Alpine image) on small trees, for each number of
 * CPUs `nproc` may answer and each shape a database volume may have: every entry of every
 * volume, its root included, ends up owned by uid:gid, the summary counts exactly what was
 * scanned and what was changed, and nothing outside the volumes is changed or even walked.
 */
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  linkSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobProgressPrefix, parseJobProgress, parseJobSummary, type JobSummary } from '../../src/core/job.js';
import { OwnershipScript } from '../../src/services/ownership-script.js';

const uid = 5000;
const gid = 5000;
const cpus = [1, 2, 3, 8, 64];
// The path a Job's container leaves its summary at; a run on this host must not create it.
const hostTerminationLog = '/dev/termination-log';
const roots: string[] = [];
const real = (command: string) =>
  execFileSync('bash', ['-c', 'command -v "$1"', 'which', command], { encoding: 'utf8' }).trim();
const realFind = real('find');
const realChown = real('chown');
let hadTerminationLog = false;

beforeAll(() => {
  hadTerminationLog = existsSync(hostTerminationLog);
});
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
  const created = !hadTerminationLog && existsSync(hostTerminationLog);
  if (created) rmSync(hostTerminationLog);
  expect(created, `the script wrote ${hostTerminationLog} on this host`).toBe(false);
});

/** A fresh folder for one case: the volumes, a sentinel tree beside them and the fake commands. */
interface Bed {
  root: string;
  /** The main volume's mount path. */
  vol: string;
  /** Outside every volume: symlinks point here, and its owners must not change. */
  outside: string;
  bin: string;
  calls: string;
}

/** What a shape puts in place: the script's arguments and the real folders behind them. */
interface Volumes {
  /** The mount paths given to the script, in order. */
  paths: string[];
  /** Bind mounts made before the script starts, in a mount namespace of its own. */
  mounts?: { source: string; target: string }[];
  /** Where each path's entries are once the mounts are gone (the mount source, else the path). */
  real?: string[];
}

/** Everything under `dir` old-owned (1000:1000), symlinks themselves, not their targets. */
const oldOwned = (dir: string) => walk(dir).forEach((p) => lchownSync(p, 1000, 1000));
/** These paths already migrated (by an interrupted earlier run). */
const migrated = (...paths: string[]) => paths.forEach((p) => lchownSync(p, uid, gid));

function files(dir: string, names: string[]) {
  mkdirSync(dir, { recursive: true });
  for (const n of names) writeFileSync(join(dir, n), n);
}

/** The shapes of a volume, each built from scratch under `bed.vol`. */
const shapes: { name: string; build: (bed: Bed) => Volumes }[] = [
  {
    name: 'empty (fresh install)',
    build: ({ vol }) => {
      mkdirSync(vol);
      oldOwned(vol);
      return { paths: [vol] };
    },
  },
  {
    name: 'one entry',
    build: ({ vol }) => {
      files(join(vol, 'data', 'base', '1'), ['1', '2']);
      files(join(vol, 'data'), ['PG_VERSION']);
      oldOwned(vol);
      migrated(join(vol, 'data', 'base', '1', '2'));
      return { paths: [vol] };
    },
  },
  {
    name: 'data and lost+found',
    build: ({ vol }) => {
      files(join(vol, 'data', 'base', '1'), ['1', '2', '3']);
      files(join(vol, 'data', 'global'), ['pg_control']);
      mkdirSync(join(vol, 'lost+found'));
      oldOwned(vol);
      migrated(...walk(join(vol, 'data', 'global')));
      lchownSync(join(vol, 'data', 'base', '1', '3'), uid, 1000);
      return { paths: [vol] };
    },
  },
  {
    name: '50 top-level entries',
    build: ({ vol }) => {
      for (let i = 0; i < 25; i++) {
        files(vol, [`f${i}`]);
        files(join(vol, `d${i}`), ['a', 'b']);
      }
      oldOwned(vol);
      migrated(join(vol, 'f3'), join(vol, 'd7'), join(vol, 'd7', 'a'));
      return { paths: [vol] };
    },
  },
  {
    name: '30 levels deep',
    build: ({ vol }) => {
      for (const top of ['a', 'b']) files(join(vol, top, ...Array<string>(30).fill('d')), ['leaf']);
      oldOwned(vol);
      migrated(join(vol, 'b', 'd', 'd'));
      return { paths: [vol] };
    },
  },
  {
    name: 'names with spaces, newlines, quotes and leading dashes',
    build: ({ vol }) => {
      files(join(vol, 'with space'), ['x y', 'new\nline']);
      files(join(vol, 'new\nline'), ['trailing\n', '*']);
      files(vol, ['-dash', '*', '"quote\'', 'back\\slash', ' lead', '(', '!']);
      oldOwned(vol);
      return { paths: [vol] };
    },
  },
  {
    name: 'symlinks pointing out of the volume',
    build: ({ vol, outside }) => {
      files(join(vol, 'data'), ['PG_VERSION']);
      // top level (a chown operand) and deeper, to a folder, to a file, upwards and nowhere
      symlinkSync(join(outside, 'dir'), join(vol, 'out-dir'));
      symlinkSync(join(outside, 'dir', 'file'), join(vol, 'data', 'out-file'));
      symlinkSync('../..', join(vol, 'data', 'up'));
      symlinkSync('/nonexistent/runas-migrate', join(vol, 'data', 'dangling'));
      oldOwned(vol);
      return { paths: [vol] };
    },
  },
  {
    name: 'hard links',
    build: ({ vol }) => {
      files(join(vol, 'a'), ['file']);
      mkdirSync(join(vol, 'b'));
      linkSync(join(vol, 'a', 'file'), join(vol, 'b', 'same'));
      linkSync(join(vol, 'a', 'file'), join(vol, 'a', 'same'));
      files(join(vol, 'c'), ['x']);
      oldOwned(vol);
      return { paths: [vol] };
    },
  },
  {
    name: 'a volume mounted inside it (bind mount)',
    build: ({ root, vol }) => {
      files(join(vol, 'data', 'base'), ['1', '2']);
      files(join(vol, 'conf'), ['pg_hba.conf']);
      mkdirSync(join(vol, 'lost+found'));
      // the parent's mount point, hidden under the mount while the script runs
      files(join(vol, 'wal'), ['hidden']);
      const wal = join(root, 'wal');
      files(join(wal, 'pg_wal'), ['1', '2', '3']);
      mkdirSync(join(wal, 'lost+found'));
      oldOwned(vol);
      oldOwned(wal);
      migrated(join(wal, 'pg_wal', '1'));
      const inner = join(vol, 'wal');
      return { paths: [vol, inner], mounts: [{ source: wal, target: inner }], real: [vol, wal] };
    },
  },
  {
    name: 'a volume path inside it (plain folder)',
    build: ({ vol }) => {
      files(join(vol, 'data', 'base'), ['1', '2']);
      mkdirSync(join(vol, 'lost+found'));
      files(join(vol, 'wal', 'pg_wal'), ['1', '2']);
      oldOwned(vol);
      return { paths: [join(vol, 'wal'), vol] };
    },
  },
];

/** `dir` and everything under it, without following symlinks and leaving out `skip` subtrees. */
function walk(dir: string, skip: string[] = []): string[] {
  const out = [dir];
  if (!lstatSync(dir).isDirectory()) return out;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (!skip.includes(p)) out.push(...walk(p, skip));
  }
  return out;
}

const owner = (p: string) => {
  const s = lstatSync(p);
  return `${s.uid}:${s.gid}`;
};

/**
 * BusyBox, as Alpine-based database images have it (timescale/timescaledb, postgres:*-alpine):
 * its find knows no -printf, -uid or -gid, its date no %N.
 */
function busybox(): string {
  try {
    return real('busybox');
  } catch {
    throw new Error("no busybox on this machine: install Debian's busybox-static (.ci/run does)");
  }
}
/** The commands besides bash the script may use, given as BusyBox applets on a BusyBox image. */
const BusyBoxApplets = ['wc', 'tr', 'sort', 'date', 'cat', 'head', 'mkdir', 'rm', 'sleep', 'printf'];

/** The tools the script runs with: the host's GNU ones, or BusyBox's as on an Alpine image. */
type Tools = 'gnu' | 'busybox';

function setUp(cpuCount: number, tools: Tools = 'gnu'): Bed {
  const root = mkdtempSync(join(tmpdir(), 'ownership-script-'));
  roots.push(root);
  const bed = {
    root,
    vol: join(root, 'vol'),
    outside: join(root, 'outside'),
    bin: join(root, 'bin'),
    calls: join(root, 'calls'),
  };
  files(join(bed.outside, 'dir'), ['file']);
  files(bed.outside, ['other']);
  oldOwned(bed.outside);
  lchownSync(join(bed.outside, 'other'), 1234, 4321);
  mkdirSync(bed.calls);
  const command = (name: string, body: string) => {
    writeFileSync(join(bed.bin, name), `#!/bin/bash\n${body}\n`);
    chmodSync(join(bed.bin, name), 0o755);
  };
  mkdirSync(bed.bin);
  // What the script sizes its workers by.
  command('nproc', `echo ${cpuCount}`);
  const [findCommand, chownCommand] =
    tools === 'busybox' ? [`${busybox()} find`, `${busybox()} chown`] : [realFind, realChown];
  if (tools === 'busybox') for (const applet of BusyBoxApplets) symlinkSync(busybox(), join(bed.bin, applet));
  // find and chown as they are, each call recorded (NUL-separated arguments). A find without a
  // start point would walk the current directory, / here: refused, so a wrong script fails fast.
  command(
    'find',
    `printf '%s\\0' "$@" >"${bed.calls}/find.$$.$EPOCHREALTIME"
i=1
while [ "$i" -le $# ] && [[ \${!i} == -[PHL] ]]; do i=$((i + 1)); done
if [ "$i" -gt $# ] || [[ \${!i} == -* || \${!i} == '(' || \${!i} == '!' ]]; then
  echo "find: refused: no start point (it would walk $PWD)" >&2; exit 1
fi
exec ${findCommand} "$@"`,
  );
  command('chown', `printf '%s\\0' "$@" >"${bed.calls}/chown.$$.$EPOCHREALTIME"\nexec ${chownCommand} "$@"`);
  return bed;
}

/** The paths each recorded find and chown call started from or changed. */
function calledOn(bed: Bed): string[] {
  const paths: string[] = [];
  for (const f of readdirSync(bed.calls)) {
    const args = readFileSync(join(bed.calls, f), 'utf8').split('\0').slice(0, -1);
    if (f.startsWith('find.')) {
      const from = args.findIndex((a) => !/^-[PHL]$/.test(a));
      const to = args.findIndex((a, i) => i >= from && (a.startsWith('-') || a === '(' || a === '!'));
      paths.push(...args.slice(from, to < 0 ? undefined : to));
    } else {
      const dashes = args.indexOf('--');
      paths.push(...(dashes >= 0 ? args.slice(dashes + 1) : args.filter((a) => !a.startsWith('-')).slice(1)));
    }
  }
  return paths;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  summary: JobSummary | undefined;
  terminationLog: string;
}

/** Runs `command`, collecting its exit code and output. */
function exec(command: string, args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    // stdin not a pipe: Debian's bash reads ~/.bashrc when it is one.
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs the script as the Job does (`bash -c SCRIPT fix-ownership PATH…`), from `/`. */
async function run(bed: Bed, v: Volumes): Promise<Run> {
  const terminationLog = join(bed.root, 'termination-log');
  rmSync(terminationLog, { force: true });
  const env = {
    PATH: `${bed.bin}:${process.env.PATH}`,
    TARGET_UID: String(uid),
    TARGET_GID: String(gid),
    TERMINATION_LOG: terminationLog,
  };
  const mounts = v.mounts ?? [];
  const r = mounts.length
    ? await exec(
        'unshare',
        [
          ...['--mount', '--propagation', 'private', '--', 'bash', '-c'],
          'script=$1 n=$2; shift 2; for ((i = 0; i < n; i++)); do mount --bind "$1" "$2" || exit 97; shift 2; done; exec bash -c "$script" fix-ownership "$@"',
          'with-mounts',
          OwnershipScript,
          String(mounts.length),
          ...mounts.flatMap((m) => [m.source, m.target]),
          ...v.paths,
        ],
        { cwd: '/', env },
      )
    : await exec('bash', ['-c', OwnershipScript, 'fix-ownership', ...v.paths], { cwd: '/', env });
  const last = r.stdout.trimEnd().split('\n').at(-1) ?? '';
  return {
    ...r,
    summary: parseJobSummary(last),
    terminationLog: existsSync(terminationLog) ? readFileSync(terminationLog, 'utf8') : '',
  };
}

// Concurrent: each case is a few dozen short processes, and the cases share nothing. With
// BusyBox's tools (an Alpine image) on one CPU and on three (shares).
const toolings: { cpuCount: number; tools: Tools }[] = [
  ...cpus.map((n) => ({ cpuCount: n, tools: 'gnu' as const })),
  ...[1, 3].map((n) => ({ cpuCount: n, tools: 'busybox' as const })),
];
describe.concurrent.each(toolings)(
  'the ownership script with $cpuCount CPUs and $tools tools',
  ({ cpuCount, tools }) => {
    it.each(shapes)('$name', async ({ build }) => {
      const bed = setUp(cpuCount, tools);
      const v = build(bed);
      const real = v.real ?? v.paths;
      // Each volume's own entries: a volume inside another is its parent's mount point, not its entry.
      const entries = real.map((r, i) =>
        walk(
          r,
          v.paths.filter((p) => p !== v.paths[i] && p.startsWith(`${v.paths[i]}/`)),
        ),
      );
      const wrong = entries.map((es) => es.filter((e) => owner(e) !== `${uid}:${gid}`).length);
      const around = [bed.root, ...walk(bed.outside), ...walk(bed.bin)];
      const before = new Map(around.map((p) => [p, owner(p)]));

      const r = await run(bed, v);
      const explain = `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
      expect(r.code, explain).toBe(0);
      expect(r.summary, explain).toMatchObject({
        ok: true,
        uid,
        gid,
        scanned: entries.flat().length,
        changed: wrong.reduce((a, b) => a + b, 0),
        paths: v.paths.map((path, i) => ({
          path,
          skipped: entries[i]!.length === 1,
          scanned: entries[i]!.length,
          changed: wrong[i],
        })),
      });
      expect(r.terminationLog.trim()).toBe(r.stdout.trimEnd().split('\n').at(-1));
      // The progress lines: each volume counted, changed and finished in turn; the last one
      // carries the summary's totals.
      const stages = r.stdout
        .split('\n')
        .filter((l) => l.startsWith(JobProgressPrefix))
        .map((l) => parseJobProgress(l)!);
      expect(stages.map((p) => `${p.volume}/${p.volumes} ${p.stage}`)).toEqual(
        v.paths.flatMap((_, i) =>
          ['counting', 'changing', 'finished'].map((st) => `${i + 1}/${v.paths.length} ${st}`),
        ),
      );
      expect(parseJobProgress(r.stdout)).toMatchObject({
        stage: 'finished',
        scanned: r.summary!.scanned,
        changed: r.summary!.changed,
      });
      expect(entries.flat().filter((e) => owner(e) !== `${uid}:${gid}`)).toEqual([]);
      expect(new Map(around.map((p) => [p, owner(p)]))).toEqual(before);
      const volumes = v.paths.map((p) => [p, `${p}/`] as const);
      expect(
        calledOn(bed).filter((p) => !volumes.some(([v, under]) => p === v || p.startsWith(under))),
      ).toEqual([]);

      // Done already: a re-run changes nothing and proves the same entries (with shares: 3 CPUs).
      if (cpuCount !== 3) return;
      const again = await run(bed, v);
      expect(again.code, `stdout:\n${again.stdout}\nstderr:\n${again.stderr}`).toBe(0);
      expect(again.summary).toMatchObject({ ok: true, scanned: entries.flat().length, changed: 0 });
    });
  },
);

describe('the ownership script refuses', () => {
  it('a path that is not a directory, still migrating the others', async () => {
    const bed = setUp(3);
    files(join(bed.vol, 'data'), ['PG_VERSION']);
    mkdirSync(join(bed.vol, 'lost+found'));
    oldOwned(bed.vol);
    const file = join(bed.outside, 'other');
    const missing = join(bed.root, 'missing');
    const r = await run(bed, { paths: [bed.vol, file, missing] });
    expect(r.code).not.toBe(0);
    expect(r.summary).toMatchObject({ ok: false, scanned: 4, changed: 4, paths: [{ path: bed.vol }] });
    expect(r.stderr).toContain(`${file} is not a mounted directory`);
    expect(r.stderr).toContain(`${missing} is not a mounted directory`);
    expect(owner(file)).toBe('1234:4321');
    expect(walk(bed.vol).map(owner)).toEqual(Array<string>(4).fill(`${uid}:${gid}`));
  });

  it('a relative path, which would depend on the current directory', async () => {
    const bed = setUp(3);
    const relative = bed.outside.replace(/^\/+/, '');
    const before = walk(bed.outside).map(owner);
    const r = await run(bed, { paths: [relative] });
    expect(r.code).not.toBe(0);
    expect(r.summary).toMatchObject({ ok: false, scanned: 0, changed: 0, paths: [] });
    expect(r.stderr).toContain(`${relative} is not an absolute path`);
    expect(walk(bed.outside).map(owner)).toEqual(before);
    expect(calledOn(bed)).toEqual([]);
  });
});
