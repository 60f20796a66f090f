/** `--prefetch-files`: a file listing image paths to prefetch, one per line. */
import * as fs from 'node:fs';

export function readPrefetchList(file: string | undefined): string[] | undefined {
  if (!file) return undefined;
  return fs.readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
}
