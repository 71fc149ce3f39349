/**
 * README examples against the packages' public surfaces: every name a
 * ```ts example imports from `@day11/<pkg>` must be exported by that
 * package's `index.ts`, and every `Namespace.member` it uses must exist.
 * Reads the built `dist/` of each package (run `pnpm build` first).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** One example's import of `@day11/<pkg>`. */
interface ExampleImport {
  pkg: string;
  names: string[];
  /** The example's code, to find `Name.member` in. */
  code: string;
}

/** The ```ts blocks of a Markdown text. */
export function codeBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => m[1]!);
}

/** The `@day11/*` imports of an example; `type` imports keep their name. */
export function importsOf(code: string): ExampleImport[] {
  return [...code.matchAll(/import\s*\{([^}]*)\}\s*from\s*'@day11\/([\w-]+)'/g)].map((m) => ({
    pkg: m[2]!,
    names: m[1]!
      .split(',')
      .map((n) => n.trim().replace(/^type\s+/, ''))
      .filter(Boolean)
      .map((n) => n.split(/\s+as\s+/)[0]!),
    code,
  }));
}

/** What a built package exports: values at run time, and the text of its declarations. */
interface Surface {
  values: Record<string, unknown>;
  /** `index.d.ts`, and each namespace module's `.d.ts` by namespace name. */
  declarations: string;
  namespaces: Map<string, string>;
}

async function surfaceOf(root: string, pkg: string): Promise<Surface | undefined> {
  const dist = join(root, 'packages', pkg, 'dist');
  if (!existsSync(join(dist, 'index.js'))) return undefined;
  const values = (await import(pathToFileURL(join(dist, 'index.js')).href)) as Record<
    string,
    unknown
  >;
  const declarations = readFileSync(join(dist, 'index.d.ts'), 'utf8');
  const namespaces = new Map<string, string>();
  for (const m of declarations.matchAll(/export \* as (\w+) from '\.\/([\w-]+)\.js'/g)) {
    namespaces.set(m[1]!, readFileSync(join(dist, `${m[2]!}.d.ts`), 'utf8'));
  }
  return { values, declarations, namespaces };
}

/** Whether declaration text (comments aside) names `name`. */
function declares(text: string, name: string): boolean {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  return new RegExp(`\\b${name}\\b`).test(code);
}

/**
 * The problems of the README examples below `root` (the repository), one line each.
 *
 * @example
 * ```ts
 * expect(await checkReadmes('/work/day11-ts')).toEqual([]);
 * ```
 */
export async function checkReadmes(root: string): Promise<string[]> {
  const files = [
    'README.md',
    ...readdirSync(join(root, 'packages')).map((p) => join('packages', p, 'README.md')),
  ].filter((f) => existsSync(join(root, f)));
  const surfaces = new Map<string, Surface | undefined>();
  const problems: string[] = [];
  for (const file of files) {
    for (const block of codeBlocks(readFileSync(join(root, file), 'utf8'))) {
      for (const { pkg, names, code } of importsOf(block)) {
        if (!surfaces.has(pkg)) surfaces.set(pkg, await surfaceOf(root, pkg));
        const surface = surfaces.get(pkg);
        if (!surface) {
          problems.push(`${file}: imports @day11/${pkg}, which is not a built package`);
          continue;
        }
        for (const name of names) {
          if (!(name in surface.values) && !declares(surface.declarations, name)) {
            problems.push(`${file}: @day11/${pkg} does not export ${name}`);
            continue;
          }
          const ns = surface.namespaces.get(name);
          if (ns === undefined) continue;
          const members = surface.values[name] as Record<string, unknown>;
          for (const [, member] of code.matchAll(new RegExp(`\\b${name}\\.(\\w+)`, 'g'))) {
            if (!(member! in members) && !declares(ns, member!)) {
              problems.push(`${file}: ${name}.${member} is not in @day11/${pkg}`);
            }
          }
        }
      }
    }
  }
  return [...new Set(problems)];
}
