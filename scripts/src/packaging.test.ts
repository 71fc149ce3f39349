import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { packagingProblems } from './packaging.js';
import { tarballProblems } from './tarball.js';

const ROOT = resolve(import.meta.dirname, '../..');
const temps: string[] = [];

function temp(): string {
  const dir = mkdtempSync(join(tmpdir(), 'day11-packaging-'));
  temps.push(dir);
  return dir;
}

/** A copy of the repository's manifests, tsconfigs and licenses, to plant mistakes in. */
function copyOfRepo(): string {
  const dir = temp();
  for (const file of ['package.json', 'tsconfig.json', 'LICENSE'])
    cpSync(join(ROOT, file), join(dir, file));
  cpSync(join(ROOT, 'packages'), join(dir, 'packages'), {
    recursive: true,
    filter: (src) => !/(node_modules|dist|dist-spec|src)$/.test(src),
  });
  return dir;
}

function editJson(path: string, edit: (json: Record<string, unknown>) => void): void {
  const json = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  edit(json);
  writeFileSync(path, JSON.stringify(json));
}

afterEach(() => {
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('packaging recipe of every package', () => {
  it('holds in this repository', () => {
    expect(packagingProblems(ROOT)).toEqual([]);
  });

  it('names each missing piece of a package', () => {
    const repo = copyOfRepo();
    rmSync(join(repo, 'packages/layer/LICENSE'));
    editJson(join(repo, 'packages/layer/package.json'), (pkg) => {
      delete pkg['publishConfig'];
      pkg['exports'] = { '.': { types: './dist/index.d.ts', import: './dist/index.js' } };
      pkg['files'] = ['dist', '!dist/**/*.test.*'];
      (pkg['dependencies'] as Record<string, string>)['zod'] = '^4.1.0';
    });
    writeFileSync(
      join(repo, 'packages/layer/tsconfig.build.json'),
      JSON.stringify({ compilerOptions: { rootDir: 'src', outDir: 'dist' }, include: ['src'] }),
    );
    const problems = packagingProblems(repo);
    expect(problems.filter((p) => !p.startsWith('zod'))).toEqual([
      'packages/layer/LICENSE: missing or not a copy of the root LICENSE',
      'packages/layer/package.json: needs "publishConfig": { "access": "public" } (a scoped package is private by default)',
      'packages/layer/package.json: exports["."] needs "types" first and a "default" condition (so require() works too)',
      'packages/layer/package.json: needs "./package.json" in exports',
      'packages/layer/package.json: needs "main" and "types" equal to exports["."] (for tools that do not read exports)',
      'packages/layer/package.json: "files" must be ["dist","README.md","LICENSE"]: tests stay out of dist, nothing is filtered',
      'packages/layer/tsconfig.build.json: must compile src to dist (rootDir "src", outDir "dist") and exclude src/**/*.test.ts, src/**/*.test-utils.ts, src/fixtures',
    ]);
    expect(problems.find((p) => p.startsWith('zod'))).toMatch(
      /^zod has more than one range across packages: .*\^4\.1\.0 \(layer\)/,
    );
  });

  it('asks for a new package to be built by tsc -b and to have both tsconfigs', () => {
    const repo = copyOfRepo();
    cpSync(join(repo, 'packages/exec'), join(repo, 'packages/newpkg'), { recursive: true });
    editJson(join(repo, 'packages/newpkg/package.json'), (pkg) => {
      pkg['name'] = '@day11/newpkg';
      (pkg['repository'] as Record<string, string>)['directory'] = 'packages/newpkg';
    });
    writeFileSync(
      join(repo, 'packages/newpkg/tsconfig.json'),
      JSON.stringify({ include: ['src'] }),
    );
    rmSync(join(repo, 'packages/newpkg/tsconfig.spec.json'));
    expect(packagingProblems(repo)).toEqual([
      'tsconfig.json: no reference to packages/newpkg, so tsc -b does not build it',
      'packages/newpkg/tsconfig.json: must be { "files": [], "references": [./tsconfig.build.json, ./tsconfig.spec.json] }',
      'packages/newpkg/tsconfig.spec.json: must type-check all of src into dist-spec (include ["src"], outDir "dist-spec")',
    ]);
  });
});

describe('tarball contents', () => {
  function unpacked(files: Record<string, string>): { dir: string; files: string[] } {
    const dir = temp();
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(dirname(join(dir, path)), { recursive: true });
      writeFileSync(join(dir, path), text);
    }
    return { dir, files: Object.keys(files).sort() };
  }
  const manifest = JSON.stringify({
    name: '@day11/x',
    dependencies: { '@day11/exec': '^0.1.0' },
    publishConfig: { access: 'public' },
  });
  const good = {
    'package.json': manifest,
    'README.md': '',
    LICENSE: '',
    'dist/index.js': '',
    'dist/index.d.ts': '',
    'dist/index.js.map': JSON.stringify({ sources: ['../src/index.ts'], sourcesContent: ['x'] }),
  };

  it('accepts a package with its maps carrying their sources', () => {
    expect(tarballProblems({ name: '@day11/x', ...unpacked(good) })).toEqual([]);
  });

  it('refuses tests, fixtures, test utilities, maps without sources and workspace ranges', () => {
    const bad = unpacked({
      ...good,
      'package.json': JSON.stringify({
        name: '@day11/x',
        dependencies: { '@day11/exec': 'workspace:^' },
      }),
      'dist/import.test-utils.js': '',
      'dist/hash.test.js': '',
      'dist/fixtures/cache.js': '',
      'dist/index.js.map': JSON.stringify({ sources: ['../src/index.ts'] }),
    });
    expect(tarballProblems({ name: '@day11/x', ...bad })).toEqual([
      '@day11/x: dist/fixtures/cache.js is a test, fixture or test utility and must not be packed',
      '@day11/x: dist/hash.test.js is a test, fixture or test utility and must not be packed',
      '@day11/x: dist/import.test-utils.js is a test, fixture or test utility and must not be packed',
      '@day11/x: dist/index.js.map points at sources the package does not ship',
      '@day11/x: tsconfig.build.json leaves tests out of dist, so these are left from an older build: rm -rf packages/*/dist && pnpm build',
      '@day11/x: dependency @day11/exec is still "workspace:^": pack with pnpm, not npm',
      '@day11/x: publishConfig.access is not "public"',
    ]);
  });
});
