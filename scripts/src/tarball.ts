/** What a packed package may contain: the rules the pack check applies to each tarball. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Manifest } from './workspace.js';

/** Paths (inside the package) that only tests use; none may be published. */
const TEST_ONLY = [
  /(^|\/)[^/]*\.test\.[^/]*$/,
  /(^|\/)[^/]*\.test-utils\.[^/]*$/,
  /(^|\/)fixtures\//,
  /^dist-spec\//,
  /\.tsbuildinfo$/,
];

/** Files every package must ship. */
const REQUIRED = ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts'];

/**
 * The problems of one unpacked tarball: `files` are its paths relative to the
 * package root, `dir` is where it was unpacked. Empty when it may be published.
 */
export function tarballProblems(options: { name: string; dir: string; files: string[] }): string[] {
  const { name, dir, files } = options;
  const problems: string[] = [];
  for (const file of files) {
    if (TEST_ONLY.some((re) => re.test(file)))
      problems.push(`${name}: ${file} is a test, fixture or test utility and must not be packed`);
    if (file.endsWith('.map') && !mapHasSources(dir, file))
      problems.push(`${name}: ${file} points at sources the package does not ship`);
  }
  if (files.some((file) => file.startsWith('dist/') && TEST_ONLY.some((re) => re.test(file))))
    problems.push(
      `${name}: tsconfig.build.json leaves tests out of dist, so these are left from an older build: rm -rf packages/*/dist && pnpm build`,
    );
  for (const file of REQUIRED) {
    if (!files.includes(file)) problems.push(`${name}: ${file} is missing from the tarball`);
  }
  const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Manifest;
  for (const [dep, range] of Object.entries(manifest.dependencies ?? {})) {
    if (range.startsWith('workspace:'))
      problems.push(`${name}: dependency ${dep} is still "${range}": pack with pnpm, not npm`);
  }
  const access = (manifest['publishConfig'] as { access?: string } | undefined)?.access;
  if (access !== 'public') problems.push(`${name}: publishConfig.access is not "public"`);
  return problems;
}

/** Whether every source a map names is embedded in it or shipped beside it. */
function mapHasSources(dir: string, file: string): boolean {
  const map = JSON.parse(readFileSync(join(dir, file), 'utf8')) as {
    sourceRoot?: string;
    sources?: string[];
    sourcesContent?: (string | null)[];
  };
  return (map.sources ?? []).every(
    (source, i) =>
      typeof map.sourcesContent?.[i] === 'string' ||
      existsSync(join(dir, dirname(file), map.sourceRoot ?? '', source)),
  );
}
