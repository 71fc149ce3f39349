/**
 * The packaging recipe every package under `packages/` follows, checked from
 * its files: the manifest fields npm shows and needs, a LICENSE, and the
 * build/spec tsconfig pair that keeps tests out of `dist`. A new package that
 * misses a step gets a message naming the file and what to add.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { workspacePackages, type Manifest, type WorkspacePackage } from './workspace.js';

/** What `tsconfig.build.json` leaves out of `dist`. */
export const BUILD_EXCLUDES = ['src/**/*.test.ts', 'src/**/*.test-utils.ts', 'src/fixtures'];
/** The one list of published files; tests never reach `dist`, so nothing is filtered out. */
export const FILES = ['dist', 'README.md', 'LICENSE'];
export const PREPACK = 'tsc -b tsconfig.build.json';
/** A package shipping a bundled command (into `dist/bin/`) bundles it after compiling. */
export const BUNDLE = 'bundle.mjs';

interface TsConfig {
  files?: string[];
  include?: string[];
  exclude?: string[];
  compilerOptions?: { outDir?: string; rootDir?: string };
  references?: { path: string }[];
}

function readJson<T>(path: string): T | undefined {
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as T) : undefined;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function manifestProblems(pkg: WorkspacePackage): string[] {
  const m: Manifest = pkg.manifest;
  const at = `packages/${pkg.dir}/package.json`;
  const problems: string[] = [];
  const need = (ok: boolean, what: string): void => {
    if (!ok) problems.push(`${at}: ${what}`);
  };
  const str = (field: string): boolean => typeof m[field] === 'string' && m[field] !== '';
  need(m.name.startsWith('@day11/'), 'name must be @day11/<name>');
  need(m['license'] === 'MIT', 'needs "license": "MIT" (and a LICENSE file beside it)');
  need(
    str('description') && str('author') && str('homepage'),
    'needs description, author, homepage',
  );
  need(Array.isArray(m['keywords']) && (m['keywords'] as unknown[]).length > 0, 'needs keywords');
  need(typeof (m['bugs'] as { url?: unknown } | undefined)?.url === 'string', 'needs bugs.url');
  const repo = m['repository'] as { type?: string; url?: string; directory?: string } | undefined;
  need(
    repo?.type === 'git' &&
      typeof repo.url === 'string' &&
      repo.directory === `packages/${pkg.dir}`,
    `needs repository { type: "git", url, directory: "packages/${pkg.dir}" }`,
  );
  need(m['type'] === 'module', 'needs "type": "module"');
  need(same(m['os'], ['linux']), 'needs "os": ["linux"]');
  need(
    typeof (m['engines'] as { node?: unknown } | undefined)?.node === 'string',
    'needs engines.node',
  );
  need(
    same((m['publishConfig'] as { access?: string } | undefined)?.access, 'public'),
    'needs "publishConfig": { "access": "public" } (a scoped package is private by default)',
  );
  const exports = m.exports as Record<string, unknown> | undefined;
  const main = exports?.['.'] as Record<string, unknown> | undefined;
  need(
    typeof main?.['types'] === 'string' &&
      typeof main['default'] === 'string' &&
      Object.keys(main).indexOf('types') === 0,
    'exports["."] needs "types" first and a "default" condition (so require() works too)',
  );
  need(exports?.['./package.json'] === './package.json', 'needs "./package.json" in exports');
  need(
    m['main'] === main?.['default'] && m['types'] === main?.['types'],
    'needs "main" and "types" equal to exports["."] (for tools that do not read exports)',
  );
  need(
    same(m.files, FILES),
    `"files" must be ${JSON.stringify(FILES)}: tests stay out of dist, nothing is filtered`,
  );
  const bins = typeof m.bin === 'string' ? [m.bin] : Object.values(m.bin ?? {});
  need(
    bins.every((bin) => !bin.startsWith('./')),
    'bin paths are written without "./" (npm publish drops such an entry)',
  );
  const prepack = existsSync(join(pkg.path, BUNDLE)) ? `${PREPACK} && node ${BUNDLE}` : PREPACK;
  need(m.scripts?.['prepack'] === prepack, `needs "scripts": { "prepack": "${prepack}" }`);
  return problems;
}

function tsconfigProblems(pkg: WorkspacePackage): string[] {
  const at = (file: string): string => `packages/${pkg.dir}/${file}`;
  const problems: string[] = [];
  const solution = readJson<TsConfig>(join(pkg.path, 'tsconfig.json'));
  const refs = (solution?.references ?? []).map((r) => r.path.replace(/^\.\//, ''));
  if (
    !solution ||
    !same(solution.files, []) ||
    !same(refs, ['tsconfig.build.json', 'tsconfig.spec.json'])
  )
    problems.push(
      `${at('tsconfig.json')}: must be { "files": [], "references": [./tsconfig.build.json, ./tsconfig.spec.json] }`,
    );
  const build = readJson<TsConfig>(join(pkg.path, 'tsconfig.build.json'));
  if (
    build?.compilerOptions?.outDir !== 'dist' ||
    build.compilerOptions.rootDir !== 'src' ||
    !BUILD_EXCLUDES.every((pattern) => build.exclude?.includes(pattern))
  )
    problems.push(
      `${at('tsconfig.build.json')}: must compile src to dist (rootDir "src", outDir "dist") and exclude ${BUILD_EXCLUDES.join(', ')}`,
    );
  const spec = readJson<TsConfig>(join(pkg.path, 'tsconfig.spec.json'));
  if (spec?.compilerOptions?.outDir !== 'dist-spec' || !same(spec.include, ['src']))
    problems.push(
      `${at('tsconfig.spec.json')}: must type-check all of src into dist-spec (include ["src"], outDir "dist-spec")`,
    );
  return problems;
}

/** Every external dependency has one range across the packages (one zod, one tar-stream). */
function rangeProblems(packages: WorkspacePackage[]): string[] {
  const ranges = new Map<string, Map<string, string[]>>();
  for (const pkg of packages) {
    for (const deps of [pkg.manifest.dependencies, pkg.manifest.devDependencies]) {
      for (const [name, range] of Object.entries(deps ?? {})) {
        if (range.startsWith('workspace:')) continue;
        const byRange = ranges.get(name) ?? new Map<string, string[]>();
        byRange.set(range, [...(byRange.get(range) ?? []), pkg.dir]);
        ranges.set(name, byRange);
      }
    }
  }
  return [...ranges]
    .filter(([, byRange]) => byRange.size > 1)
    .map(
      ([name, byRange]) =>
        `${name} has more than one range across packages: ${[...byRange]
          .map(([range, dirs]) => `${range} (${dirs.join(', ')})`)
          .join(', ')}; use one`,
    );
}

/** Checks the packaging of every package of the workspace at `root`; empty when it holds. */
export function packagingProblems(root: string): string[] {
  const packages = workspacePackages(root);
  const license = readFileSync(join(root, 'LICENSE'), 'utf8');
  const rootRefs = (readJson<TsConfig>(join(root, 'tsconfig.json'))?.references ?? []).map(
    (r) => r.path,
  );
  const problems: string[] = [];
  for (const pkg of packages) {
    if (pkg.manifest.private === true) continue;
    const licensePath = join(pkg.path, 'LICENSE');
    if (!existsSync(licensePath) || readFileSync(licensePath, 'utf8') !== license)
      problems.push(`packages/${pkg.dir}/LICENSE: missing or not a copy of the root LICENSE`);
    if (!existsSync(join(pkg.path, 'README.md')))
      problems.push(`packages/${pkg.dir}/README.md: missing`);
    if (!rootRefs.includes(`packages/${pkg.dir}`))
      problems.push(
        `tsconfig.json: no reference to packages/${pkg.dir}, so tsc -b does not build it`,
      );
    problems.push(...manifestProblems(pkg), ...tsconfigProblems(pkg));
  }
  problems.push(...rangeProblems(packages.filter((pkg) => pkg.manifest.private !== true)));
  return problems;
}
