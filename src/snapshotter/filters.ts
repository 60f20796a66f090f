/**
 * containerd's filter syntax for List (`ListSnapshotsRequest.filters`), as
 * the snapshot adaptor uses it: fields `kind` (active|view|committed),
 * `name`, `parent`, `labels.<key>` (the rest of the path joined with dots, or
 * one quoted component: `labels."containerd.io/snapshot.ref"`). A filter is
 * comma-separated selectors, all of which must hold; a snapshot is listed if
 * any filter holds. Operators `==`, `!=`, `~=` (regexp) or none (present).
 * Values are bare words or quoted ("…", '…' or /…/).
 *
 * Differences from containerd: a regexp longer than 1 KiB, a filter longer
 * than 8 KiB and more than 64 selectors are InvalidArgument (bounds against
 * hostile clients); Go escapes in quoted strings are the JSON subset.
 */
import { invalidArgument } from './errors';

export const MAX_FILTER_LENGTH = 8192;
export const MAX_SELECTORS = 64;
const MAX_REGEXP = 1024;

export interface Selector {
  path: string[];
  op?: '==' | '!=' | '~=';
  value?: string;
  re?: RegExp;
}
export type Filter = Selector[];

/** The fields a snapshot exposes to filters. */
export interface Filterable {
  name: string;
  parent: string;
  kind: string;
  labels: Record<string, string>;
}

class Scanner {
  i = 0;
  constructor(readonly s: string) {}
  eof(): boolean { return this.i >= this.s.length; }
  peek(): string { return this.s[this.i] ?? ''; }
  skipWs(): void { while (!this.eof() && /\s/.test(this.peek())) this.i++; }
  fail(msg: string): never { throw invalidArgument(`filter ${JSON.stringify(this.s.slice(0, 200))}: ${msg} at ${this.i}`); }

  quoted(): string {
    const q = this.peek();
    const start = this.i;
    this.i++;
    let out = '';
    while (!this.eof() && this.peek() !== q) {
      const c = this.s[this.i++];
      if (c === '\\' && !this.eof()) {
        const n = this.s[this.i++];
        if (q === '/' && n === '/') { out += '/'; continue; }
        if (q === '/') { out += '\\' + n; continue; }
        const map: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', '"': '"', "'": "'" };
        if (!(n in map)) this.fail(`unknown escape \\${n}`);
        out += map[n];
      } else out += c;
    }
    if (this.eof()) { this.i = start; this.fail('unterminated quoted string'); }
    this.i++;
    return out;
  }

  field(): string {
    const c = this.peek();
    if (c === '"' || c === "'") return this.quoted();
    const m = /^[A-Za-z0-9_\-/:@+]+/.exec(this.s.slice(this.i));
    if (!m) this.fail('expected a field name');
    this.i += m[0].length;
    return m[0];
  }

  value(): string {
    const c = this.peek();
    if (c === '"' || c === "'" || c === '/') return this.quoted();
    const m = /^[^,\s]+/.exec(this.s.slice(this.i));
    if (!m) this.fail('expected a value');
    this.i += m[0].length;
    return m[0];
  }
}

/** Parse one filter string; an empty string matches everything. */
export function parseFilter(text: string): Filter {
  if (text.length > MAX_FILTER_LENGTH) throw invalidArgument(`filter longer than ${MAX_FILTER_LENGTH} bytes`);
  const sc = new Scanner(text);
  const out: Filter = [];
  sc.skipWs();
  if (sc.eof()) return out;
  for (;;) {
    sc.skipWs();
    const path = [sc.field()];
    while (sc.peek() === '.') {
      sc.i++;
      path.push(sc.field());
    }
    sc.skipWs();
    const sel: Selector = { path };
    const two = sc.s.slice(sc.i, sc.i + 2);
    if (two === '==' || two === '!=' || two === '~=') {
      sc.i += 2;
      sc.skipWs();
      sel.op = two;
      sel.value = sc.value();
      if (two === '~=') {
        if (sel.value.length > MAX_REGEXP) sc.fail('regexp too long');
        try {
          sel.re = new RegExp(sel.value);
        } catch (e) {
          sc.fail(`bad regexp: ${(e as Error).message}`);
        }
      }
    }
    out.push(sel);
    if (out.length > MAX_SELECTORS) sc.fail(`more than ${MAX_SELECTORS} selectors`);
    sc.skipWs();
    if (sc.eof()) return out;
    if (sc.peek() !== ',') sc.fail('expected "," or the end');
    sc.i++;
  }
}

function fieldValue(path: string[], x: Filterable): string | undefined {
  switch (path[0]) {
    case 'kind': return path.length === 1 ? x.kind : undefined;
    case 'name': return path.length === 1 ? x.name : undefined;
    case 'parent': return path.length === 1 ? x.parent : undefined;
    case 'labels': {
      if (path.length < 2) return undefined;
      const k = path.slice(1).join('.');
      return Object.prototype.hasOwnProperty.call(x.labels, k) ? x.labels[k] : undefined;
    }
    default: return undefined;
  }
}

export function matchFilter(f: Filter, x: Filterable): boolean {
  for (const sel of f) {
    const v = fieldValue(sel.path, x);
    switch (sel.op) {
      case undefined: if (v === undefined) return false; break;
      case '==': if (v !== sel.value) return false; break;
      case '!=': if (v === sel.value) return false; break;
      case '~=': if (v === undefined || !sel.re!.test(v)) return false; break;
    }
  }
  return true;
}

/** containerd's ParseAll: any of the filters (none = all). */
export function compileFilters(texts: string[]): (x: Filterable) => boolean {
  const fs = texts.map(parseFilter);
  if (fs.length === 0) return () => true;
  return (x) => fs.some((f) => matchFilter(f, x));
}
