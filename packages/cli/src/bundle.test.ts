/**
 * The bundled command (`dist/bin/`, made by `bundle.mjs` after `tsc -b`):
 * every worker-thread script a chunk asks `workerFile` for is an entry
 * beside it, the chunks are CommonJS, and the bin is what the package
 * publishes.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const PACKAGE = resolve(import.meta.dirname, '..');
const BIN_DIR = join(PACKAGE, 'dist/bin');

describe('the bundled day11 command', () => {
  it('has each worker script its chunks start, beside them', () => {
    expect(existsSync(BIN_DIR), `${BIN_DIR} is missing: run pnpm build`).toBe(true);
    const asked = new Set<string>();
    for (const name of readdirSync(BIN_DIR).filter((n) => n.endsWith('.js'))) {
      const code = readFileSync(join(BIN_DIR, name), 'utf8');
      for (const m of code.matchAll(/workerFile\(\s*["']([\w.-]+\.js)["']\s*,/g)) asked.add(m[1]!);
    }
    // The survey of `layers gc`/`du` and the export's tar thread, at least.
    expect([...asked].sort()).toEqual(
      expect.arrayContaining(['survey-worker.js', 'tar-worker.js', 'file-writer-worker.js']),
    );
    for (const name of asked) expect(existsSync(join(BIN_DIR, name)), name).toBe(true);
  });

  it('is CommonJS, though the package is a module (Node 20 loads it faster)', () => {
    const marker = JSON.parse(readFileSync(join(BIN_DIR, 'package.json'), 'utf8')) as unknown;
    expect(marker).toEqual({ type: 'commonjs' });
    const main = readFileSync(join(BIN_DIR, 'day11.js'), 'utf8');
    expect(main).toMatch(/\brequire\(/);
    expect(main).not.toMatch(/^\s*(import|export)\s/m);
  });

  it('is the published bin', () => {
    const manifest = JSON.parse(readFileSync(join(PACKAGE, 'package.json'), 'utf8')) as {
      bin: Record<string, string>;
    };
    expect(manifest.bin).toEqual({ day11: 'dist/bin/day11.js' });
    expect(readFileSync(join(PACKAGE, manifest.bin['day11']!), 'utf8')).toMatch(
      /^#!\/usr\/bin\/env node\n/,
    );
  });
});
