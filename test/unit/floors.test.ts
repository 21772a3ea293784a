/**
 * The floors of the product (docs/architecture.md), read from its imports: no arrow climbs from a
 * lower floor to a higher one, no product file imports the test bed, and the README's layout
 * names every folder there is.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Floors from the ground up; a file may import its own floor and those below it. */
const Floors = ['core', 'cluster', 'services', 'activities', 'workflows', 'app'] as const;
type Floor = (typeof Floors)[number];

/**
 * Workflows run in Temporal's sandbox: of the floors below them they take values only from the
 * core, and types of the activities and services they call.
 */
const WorkflowValues: Floor[] = ['core', 'workflows'];
const WorkflowTypes: Floor[] = ['services', 'activities'];

/** Whether a file on `from` may import `to`. */
function allowed(from: Floor, to: Floor, typeOnly: boolean): boolean {
  if (from === 'workflows') return WorkflowValues.includes(to) || (typeOnly && WorkflowTypes.includes(to));
  return Floors.indexOf(to) <= Floors.indexOf(from);
}

interface Edge {
  from: string;
  to: string;
  typeOnly: boolean;
}

function sources(dir: string): string[] {
  return readdirSync(join(root, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => relative(root, join(e.parentPath, e.name)));
}

/** Relative imports (and re-exports) of a file, with whether they bring only types. */
function importsOf(file: string): Edge[] {
  const text = readFileSync(join(root, file), 'utf8');
  const edges: Edge[] = [];
  const re = /^(import|export)\s+(type\s+)?([^'";]*?)\s*from\s+'([^']+)'/gms;
  for (const m of text.matchAll(re)) {
    const spec = m[4]!;
    if (!spec.startsWith('.')) continue;
    const names = m[3] ?? '';
    const typeOnly =
      Boolean(m[2]) ||
      (/^\{[^}]*\}$/s.test(names.trim()) &&
        names
          .replace(/[{}]/g, '')
          .split(',')
          .map((n) => n.trim())
          .filter(Boolean)
          .every((n) => n.startsWith('type ')));
    edges.push({ from: file, to: normalize(join(dirname(file), spec)), typeOnly });
  }
  return edges;
}

const floorOf = (file: string): Floor | null => {
  const [top, floor] = file.split('/');
  return top === 'src' && (Floors as readonly string[]).includes(floor!) ? (floor as Floor) : null;
};

describe('the floors of the product', () => {
  const files = sources('src');
  const edges = files.flatMap(importsOf);

  it('puts every product file on a floor', () => {
    expect(files.filter((f) => floorOf(f) === null)).toEqual([]);
  });

  it('has no arrow climbing from a lower floor to a higher one, and workflows take only types of steps', () => {
    const climbing = edges.filter((e) => {
      const to = floorOf(e.to);
      return to !== null && !allowed(floorOf(e.from)!, to, e.typeOnly);
    });
    expect(climbing.map((e) => `${e.from} -> ${e.to}${e.typeOnly ? ' (types)' : ''}`)).toEqual([]);
  });

  it('never imports the test bed, the tests or the benchmarks', () => {
    const out = edges.filter((e) => !e.to.startsWith('src/'));
    expect(out.map((e) => `${e.from} -> ${e.to}`)).toEqual([]);
  });

  it('keeps the core pure: no Node built-in, no Kubernetes or Temporal client at run time', () => {
    const impure = sources('src/core').flatMap((file) => {
      const text = readFileSync(join(root, file), 'utf8');
      return [...text.matchAll(/^import\s+(?!type\s)[^;]*?from\s+'([^']+)'/gms)]
        .map((m) => m[1]!)
        .filter((spec) => /^(node:|@kubernetes\/|@temporalio\/(client|worker|activity))/.test(spec))
        .map((spec) => `${file}: ${spec}`);
    });
    expect(impure).toEqual([]);
  });

  it('is drawn in the README layout, folder by folder', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const layout = /## Layout\n[\s\S]*?```text\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
    // Top-level folders at the margin, their subfolders indented under them.
    let parent = '';
    const listed = [...layout.matchAll(/^( *)([a-z][\w.-]*)\/\s/gm)].map(([, indent, name]) => {
      if (!indent) parent = name!;
      return indent ? `${parent}/${name}` : name!;
    });
    const folders = [
      ...Floors.map((f) => `src/${f}`),
      ...readdirSync(root, { withFileTypes: true })
        .filter(
          (e) =>
            e.isDirectory() &&
            !e.name.startsWith('.') &&
            !['node_modules', 'dist', 'coverage', 'test-artifacts'].includes(e.name),
        )
        .map((e) => e.name),
    ];
    expect(folders.filter((f) => !listed.includes(f))).toEqual([]);
    expect(listed.filter((f) => !folders.includes(f) && !f.includes('/'))).toEqual([]);
  });
});
