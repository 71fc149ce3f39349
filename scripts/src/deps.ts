/**
 * The one-way dependency rules between the packages (the root README's
 * table), checked from the files themselves:
 * package.json `workspace:^` dependencies, tsconfig project references, and
 * the `@day11/*` imports of every source file must agree with each other and
 * with {@link ALLOWED}.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';

/** Which workspace packages each library may depend on (by directory name). */
export const ALLOWED: Readonly<Record<string, readonly string[]>> = {
  exec: [],
  layer: ['exec'],
  container: ['exec'],
  runner: ['layer', 'container', 'exec'],
  'oci-export': ['layer', 'exec'],
  registry: ['exec', 'layer', 'oci-export'],
  build: ['exec', 'layer', 'container', 'runner', 'oci-export'],
  cli: ['exec', 'layer', 'container', 'runner', 'oci-export', 'build', 'registry'],
};

const SCOPE = '@day11/';
/**
 * The range of every internal dependency: packed, it becomes `^<version>`, so
 * one copy of each package can serve all its dependents.
 */
const WORKSPACE_RANGE = 'workspace:^';
/**
 * `@day11/testing` (private: real services for tests) may be a
 * devDependency of any package, referenced by its `tsconfig.spec.json`
 * and imported by its tests and fixtures only: it is never published.
 */
const TEST_SUPPORT = 'testing';
const TEST_FILE = /(\.test\.ts|\/fixtures\/[^/]+\.ts)$/;
/** The tsconfigs whose project references mirror the package's dependencies. */
const TS_CONFIGS = ['tsconfig.build.json', 'tsconfig.spec.json'] as const;

interface PackageJson {
  name?: string;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

function workspaceDeps(pkg: PackageJson): Map<string, string> {
  const out = new Map<string, string>();
  for (const deps of [pkg.dependencies, pkg.devDependencies, pkg.peerDependencies]) {
    for (const [name, range] of Object.entries(deps ?? {})) {
      if (name.startsWith(SCOPE)) out.set(name.slice(SCOPE.length), range);
    }
  }
  // Test support is checked on its own (checkTestSupport).
  if (pkg.devDependencies?.[`${SCOPE}${TEST_SUPPORT}`] !== undefined) out.delete(TEST_SUPPORT);
  return out;
}

/** Where a package uses `@day11/testing`: a devDependency, in the spec build, in tests. */
function checkTestSupport(pkgDir: string, name: string, pkg: PackageJson): string[] {
  const declared = pkg.devDependencies?.[`${SCOPE}${TEST_SUPPORT}`] !== undefined;
  const problems: string[] = [];
  if (pkg.dependencies?.[`${SCOPE}${TEST_SUPPORT}`] !== undefined)
    problems.push(
      `packages/${name}/package.json: @day11/${TEST_SUPPORT} belongs in devDependencies`,
    );
  if (tsReferences(pkgDir, 'tsconfig.build.json').includes(TEST_SUPPORT))
    problems.push(
      `packages/${name}/tsconfig.build.json: references ../../${TEST_SUPPORT}, which only tests may use`,
    );
  if (declared !== tsReferences(pkgDir, 'tsconfig.spec.json').includes(TEST_SUPPORT))
    problems.push(
      `packages/${name}: @day11/${TEST_SUPPORT} must be both a devDependency and a tsconfig.spec.json reference, or neither`,
    );
  for (const file of sourceFiles(join(pkgDir, 'src'))) {
    const uses = importsOf(readFileSync(file, 'utf8')).some(
      (spec) => packageOfSpecifier(spec) === TEST_SUPPORT,
    );
    if (!uses) continue;
    if (!TEST_FILE.test(file))
      problems.push(
        `${relative(dirname(dirname(pkgDir)), file)}: only tests and fixtures may import @day11/${TEST_SUPPORT}`,
      );
    else if (!declared)
      problems.push(
        `packages/${name}/package.json: tests import @day11/${TEST_SUPPORT}; add it to devDependencies`,
      );
  }
  return problems;
}

/** The package directories a tsconfig references (`../exec/tsconfig.build.json` gives `exec`). */
function tsReferences(pkgDir: string, config: string): string[] {
  const tsconfig = readJson<{ references?: { path: string }[] }>(join(pkgDir, config));
  return (tsconfig.references ?? []).map((r) => {
    const target = resolve(pkgDir, r.path);
    return basename(target.endsWith('.json') ? dirname(target) : target);
  });
}

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return /\.(ts|mts|cts|js|mjs)$/.test(name) ? [path] : [];
  });
}

const IMPORT_RE =
  /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|\brequire\s*\(\s*|\bexport\s+\*\s+from\s*)['"]([^'"]+)['"]/g;

/** Every module specifier a source text imports, re-exports or requires. */
export function importsOf(text: string): string[] {
  return [...text.matchAll(IMPORT_RE)].map((m) => m[1]!);
}

function packageOfSpecifier(spec: string): string | undefined {
  if (!spec.startsWith(SCOPE)) return undefined;
  return spec.slice(SCOPE.length).split('/')[0];
}

/** Checks one library package; returns human-readable violations. */
function checkPackage(root: string, name: string): string[] {
  const pkgDir = join(root, 'packages', name);
  const allowed = new Set(ALLOWED[name]);
  const problems: string[] = [];
  if (!(name in ALLOWED)) {
    return [
      `packages/${name}: not in the dependency rules (scripts/src/deps.ts ALLOWED); add it there first`,
    ];
  }
  const pkg = readJson<PackageJson>(join(pkgDir, 'package.json'));
  const deps = workspaceDeps(pkg);
  problems.push(...checkTestSupport(pkgDir, name, pkg));
  for (const [dep, range] of deps) {
    if (!allowed.has(dep))
      problems.push(
        `packages/${name}/package.json: depends on @day11/${dep}, which ${name} may not use`,
      );
    if (range !== WORKSPACE_RANGE)
      problems.push(
        `packages/${name}/package.json: @day11/${dep} must be "${WORKSPACE_RANGE}", not "${range}"`,
      );
  }
  for (const config of TS_CONFIGS) problems.push(...checkReferences(pkgDir, name, config, deps));
  for (const file of sourceFiles(join(pkgDir, 'src'))) {
    problems.push(...checkImports(root, name, file, deps));
  }
  return problems;
}

function checkReferences(
  pkgDir: string,
  name: string,
  config: string,
  deps: Map<string, string>,
): string[] {
  const problems: string[] = [];
  if (!existsSync(join(pkgDir, config))) return [`packages/${name}/${config}: missing`];
  const refs = new Set(tsReferences(pkgDir, config).filter((r) => r !== TEST_SUPPORT));
  for (const dep of deps.keys()) {
    if (!refs.has(dep))
      problems.push(
        `packages/${name}/${config}: no project reference to ../${dep}, but package.json depends on it`,
      );
  }
  for (const ref of refs) {
    if (!deps.has(ref))
      problems.push(
        `packages/${name}/${config}: references ../${ref}, but package.json does not depend on @day11/${ref}`,
      );
  }
  return problems;
}

function checkImports(
  root: string,
  name: string,
  file: string,
  deps: Map<string, string>,
): string[] {
  const rel = relative(root, file);
  const problems: string[] = [];
  for (const spec of importsOf(readFileSync(file, 'utf8'))) {
    const target = packageOfSpecifier(spec);
    if (target !== undefined && target !== name && target !== TEST_SUPPORT) {
      if (!ALLOWED[name]!.includes(target))
        problems.push(`${rel}: imports ${spec}, but ${name} may not depend on @day11/${target}`);
      else if (!deps.has(target))
        problems.push(
          `${rel}: imports ${spec}, which packages/${name}/package.json does not declare`,
        );
    }
    if (
      spec.startsWith('.') &&
      !resolve(file, '..', spec).startsWith(join(root, 'packages', name) + '/')
    ) {
      problems.push(
        `${rel}: relative import ${spec} reaches outside packages/${name}; import the package instead`,
      );
    }
  }
  return problems;
}

/**
 * Checks the whole workspace at `root`; returns every violation (empty when
 * the rules hold).
 */
export function checkWorkspace(root: string): string[] {
  const problems: string[] = [];
  const rootPkg = readJson<PackageJson>(join(root, 'package.json'));
  for (const dep of workspaceDeps(rootPkg).keys()) {
    problems.push(
      `package.json: the root lists @day11/${dep}; the root must list no workspace package`,
    );
  }
  const names = readdirSync(join(root, 'packages')).filter((n) =>
    existsSync(join(root, 'packages', n, 'package.json')),
  );
  for (const name of names.sort()) problems.push(...checkPackage(root, name));
  return problems;
}
