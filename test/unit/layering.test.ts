/**
 * The dependency rule, as upstream's crates: common → storage → rafs /
 * vhost-user → virtiofs (FUSE server, VFS, filesystems, transports) → service
 * (the nydusd daemon) → api (HTTP server, client) → bin (the CLIs). No file
 * imports from a layer above its own, siblings (rafs, vhost-user) do not
 * import each other, and no two folders import each other, directly or
 * through others. Every top-level folder of src/ must have a layer here.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from '../support/cli';

const SRC = path.join(ROOT, 'src');

/** Layer rank of each top-level folder of src/. */
export const LAYERS: Record<string, number> = {
  common: 0,
  storage: 1,
  rafs: 2,
  'vhost-user': 2,
  /** OCI distribution client (registry pulls/pushes; shares the registry backend's auth) */
  remote: 2,
  virtiofs: 3,
  /** nydusify's conversion pipeline (builder + distribution client) */
  converter: 3,
  service: 4,
  api: 5,
  /** containerd-nydus-grpc, ctr-remote's containerd client, nydus-overlayfs */
  snapshotter: 6,
  bin: 7,
};

interface Edge { from: string; to: string; file: string; spec: string }

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Relative imports of every source file, as folder → folder edges (paths relative to src/). */
function edges(): Edge[] {
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm;
  const out: Edge[] = [];
  for (const file of sources(SRC)) {
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(re)) {
      const target = path.resolve(path.dirname(file), m[1]);
      out.push({ from: path.relative(SRC, path.dirname(file)), to: path.relative(SRC, path.dirname(target)), file: path.relative(ROOT, file), spec: m[1] });
    }
  }
  return out;
}

const top = (folder: string): string => folder.split(path.sep)[0];

/** Violations of the rule in `es` (empty when clean). */
export function violations(es: Edge[], layers: Record<string, number>): string[] {
  const bad: string[] = [];
  for (const e of es) {
    const a = top(e.from);
    const b = top(e.to);
    if (e.to.startsWith('..')) { bad.push(`${e.file}: imports outside src/ (${e.spec})`); continue; }
    if (!(a in layers)) { bad.push(`${e.file}: folder src/${a} has no layer`); continue; }
    if (!(b in layers)) { bad.push(`${e.file}: imports src/${b}, which has no layer`); continue; }
    if (a === b) continue;
    if (layers[b] > layers[a]) bad.push(`${e.file}: ${a} (layer ${layers[a]}) imports ${b} (layer ${layers[b]}) above it: ${e.spec}`);
    else if (layers[b] === layers[a]) bad.push(`${e.file}: sibling layers ${a} and ${b} import each other: ${e.spec}`);
  }
  // folder cycles (any depth of folders)
  const g = new Map<string, Set<string>>();
  for (const e of es) if (e.from !== e.to) (g.get(e.from) ?? g.set(e.from, new Set()).get(e.from)!).add(e.to);
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 1);
    stack.push(n);
    for (const m of g.get(n) ?? []) {
      if (state.get(m) === 1) bad.push(`folder cycle: ${[...stack.slice(stack.indexOf(m)), m].join(' -> ')}`);
      else if (!state.has(m)) visit(m);
    }
    stack.pop();
    state.set(n, 2);
  };
  for (const n of g.keys()) if (!state.has(n)) visit(n);
  return bad;
}

test('every top-level folder of src/ has a layer', () => {
  const folders = fs.readdirSync(SRC, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  assert.equal(folders.filter((f) => !(f in LAYERS)), []);
});

test('no upward import, no sibling import, no folder cycle in src/', () => {
  const es = edges();
  assert.ok(es.length > 100, `found ${es.length} imports`);
  assert.equal(violations(es, LAYERS), []);
});

test('the check catches an upward import, a sibling import and a cycle', () => {
  const e = (from: string, to: string): Edge => ({ from, to, file: `src/${from}/x.ts`, spec: `../${to}` });
  assert.equal(violations([e('storage', 'common'), e('rafs', 'storage')], LAYERS), []);
  assert.match(violations([e('storage', 'rafs')], LAYERS).join('\n'), /above it/);
  assert.match(violations([e('rafs', 'vhost-user')], LAYERS).join('\n'), /sibling/);
  assert.match(violations([e('rafs/format', 'rafs/metadata'), e('rafs/metadata', 'rafs/format')], LAYERS).join('\n'), /folder cycle/);
  assert.match(violations([e('newthing', 'common')], LAYERS).join('\n'), /no layer/);
});

test.run();
