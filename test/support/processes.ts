import { readdirSync, readFileSync } from 'node:fs';

/** Host processes whose command line is exactly `argv`. */
export function processesRunning(argv: readonly string[]): number[] {
  const wanted = argv.join('\0') + '\0';
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8') === wanted;
      } catch {
        return false;
      }
    })
    .map(Number);
}
