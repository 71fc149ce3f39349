import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ALLOWED, checkWorkspace, importsOf } from './deps.js';

const ROOT = resolve(import.meta.dirname, '../..');
const temps: string[] = [];

/** A copy of the repository's package manifests and sources, to plant violations in. */
function copyOfRepo(): string {
  const dir = mkdtempSync(join(tmpdir(), 'day11-deps-'));
  temps.push(dir);
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  cpSync(join(ROOT, 'packages'), join(dir, 'packages'), {
    recursive: true,
    filter: (src) => !/(node_modules|dist)$/.test(src),
  });
  return dir;
}

afterEach(() => {
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('one-way package dependencies', () => {
  it('hold in this repository', () => {
    expect(checkWorkspace(ROOT)).toEqual([]);
  });

  it('fail on a planted import of a forbidden package', () => {
    const repo = copyOfRepo();
    writeFileSync(
      join(repo, 'packages/layer/src/planted.ts'),
      "import { Overlay } from '@day11/container';\n",
    );
    expect(checkWorkspace(repo)).toEqual([
      'packages/layer/src/planted.ts: imports @day11/container, but layer may not depend on @day11/container',
    ]);
  });

  it('fail on a dynamic import, a re-export and a deep relative import across packages', () => {
    const repo = copyOfRepo();
    writeFileSync(
      join(repo, 'packages/exec/src/planted.ts'),
      "export * from '@day11/layer';\nawait import('@day11/layer/dist/x.js');\nimport '../../layer/src/hash.js';\n",
    );
    const problems = checkWorkspace(repo);
    expect(problems).toHaveLength(3);
    expect(problems[2]).toMatch(/reaches outside packages\/exec/);
  });

  it('fail when package.json and tsconfig references disagree, or a dependency is not workspace:^', () => {
    const repo = copyOfRepo();
    const pkgPath = join(repo, 'packages/layer/package.json');
    const pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as {
      dependencies: Record<string, string>;
    };
    pkg.dependencies['@day11/exec'] = '^0.1.0';
    writeFileSync(pkgPath, JSON.stringify(pkg));
    writeFileSync(
      join(repo, 'packages/layer/tsconfig.build.json'),
      JSON.stringify({ references: [] }),
    );
    writeFileSync(
      join(repo, 'packages/layer/tsconfig.spec.json'),
      JSON.stringify({ references: [{ path: '../exec' }, { path: '../container' }] }),
    );
    expect(checkWorkspace(repo)).toEqual([
      'packages/layer/package.json: @day11/exec must be "workspace:^", not "^0.1.0"',
      'packages/layer/tsconfig.build.json: no project reference to ../exec, but package.json depends on it',
      'packages/layer/tsconfig.spec.json: references ../container, but package.json does not depend on @day11/container',
    ]);
  });

  it('fail when the root package.json lists a workspace package', () => {
    const repo = copyOfRepo();
    writeFileSync(
      join(repo, 'package.json'),
      JSON.stringify({ dependencies: { '@day11/layer': 'workspace:^' } }),
    );
    expect(checkWorkspace(repo)).toEqual([
      'package.json: the root lists @day11/layer; the root must list no workspace package',
    ]);
  });

  it('keep layer and container apart, and nothing depends on cli', () => {
    expect(ALLOWED['layer']).not.toContain('container');
    expect(ALLOWED['container']).not.toContain('layer');
    expect(ALLOWED['oci-export']).not.toContain('container');
    expect(ALLOWED['oci-export']).not.toContain('runner');
    for (const deps of Object.values(ALLOWED)) expect(deps).not.toContain('cli');
  });

  it('let registry use exec, layer and oci-export only (never container, runner or build)', () => {
    expect([...(ALLOWED['registry'] ?? [])].sort()).toEqual(['exec', 'layer', 'oci-export']);
    const repo = copyOfRepo();
    writeFileSync(
      join(repo, 'packages/registry/src/planted.ts'),
      "import { runInLayers } from '@day11/runner';\nimport type { Builder } from '@day11/build';\n",
    );
    expect(checkWorkspace(repo)).toEqual([
      'packages/registry/src/planted.ts: imports @day11/runner, but registry may not depend on @day11/runner',
      'packages/registry/src/planted.ts: imports @day11/build, but registry may not depend on @day11/build',
    ]);
  });

  it('find every kind of import specifier', () => {
    const text = `import a from '@day11/a';\nimport type { B } from "@day11/b";\nimport '@day11/c';\nexport * from '@day11/d';\nconst e = await import('@day11/e');\nrequire('@day11/f');\nexport { g } from '@day11/g';`;
    expect(importsOf(text)).toEqual([
      '@day11/a',
      '@day11/b',
      '@day11/c',
      '@day11/d',
      '@day11/e',
      '@day11/f',
      '@day11/g',
    ]);
  });
});
