/**
 * Upstream Nydus fixtures (images, blobs and tars from dragonflyoss/nydus),
 * shared between clones at ../shared/fixtures/nydus-upstream. A fresh clone
 * may not have them: a test that needs them calls `needFixtures(name)` first
 * and returns when it answers false (it printed `SKIP <name>: <why>`).
 * Under CI=true missing fixtures are an error, never a skip.
 *
 * NYDUS_FIXTURES overrides the directory (e.g. NYDUS_FIXTURES=/nonexistent
 * simulates a clone without ../shared).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Root of the upstream checkout (holds tests/texture and history-df31803d-parent). */
export const FIXTURES_DIR = path.resolve(process.env.NYDUS_FIXTURES || path.join(__dirname, '../../../shared/fixtures/nydus-upstream'));
/** tests/texture of the current upstream fixtures. */
export const TEXTURE = path.join(FIXTURES_DIR, 'tests/texture');
/** tests/texture of the history-df31803d-parent fixtures (older v5 images). */
export const HISTORY_TEXTURE = path.join(FIXTURES_DIR, 'history-df31803d-parent/tests/texture');

const isCI = (): boolean => /^(true|1)$/i.test(process.env.CI ?? '');

/** True when the fixtures are present (the directory holds tests/texture). */
export function fixturesPresent(): boolean {
  return fs.existsSync(TEXTURE);
}

/**
 * True when the fixtures are present. Otherwise: under CI=true throws (the
 * test fails with a clear message); else prints `SKIP <test>: <why>` and
 * returns false, and the caller returns.
 */
export function needFixtures(test: string): boolean {
  if (fixturesPresent()) return true;
  const why = `upstream fixtures not found at ${FIXTURES_DIR} (check out ../shared/fixtures or set NYDUS_FIXTURES)`;
  if (isCI()) throw new Error(`${test}: ${why}; CI=true requires them`);
  console.log(`SKIP ${test}: ${why}`);
  return false;
}
