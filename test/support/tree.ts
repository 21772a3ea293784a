/**
 * Test trees for the ownership script: many files with mixed owners, symlinks (one a pg_wal
 * link to another volume) and a folder an interrupted earlier run already migrated.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A tree of `dirs` × `files` entries with mixed owners, symlinks and a half-done earlier run. */
export function makeTree(root: string, dirs: number, files: number): number {
  mkdirSync(root, { recursive: true });
  execFileSync(
    'bash',
    [
      '-c',
      `cd "$1" && mkdir -p data/base && cd data/base && for i in $(seq 0 ${dirs - 1}); do mkdir $i && (cd $i && touch $(seq 0 ${files - 1})); done`,
      'tree',
      root,
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  symlinkSync('/var/lib/postgresql/wal/pg_wal', join(root, 'data', 'pg_wal'));
  symlinkSync('../base/0', join(root, 'data', 'base', 'link-to-0'));
  writeFileSync(join(root, 'data', 'PG_VERSION'), '15\n');
  execFileSync('chown', ['-R', '-h', '1000:1000', root]);
  // an interrupted earlier run already did the first folder; someone else owns one file
  execFileSync('chown', ['-R', '-h', '5000:5000', join(root, 'data', 'base', '0')]);
  execFileSync('chown', ['1234:1234', join(root, 'data', 'base', '1', '7')]);
  return dirs * files + dirs + 6; // files, folders, root, data, base, pg_wal, link, PG_VERSION
}
