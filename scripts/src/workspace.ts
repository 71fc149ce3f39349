/** The workspace's publishable packages, found the same way by every repository check. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The fields of a package.json the repository checks read. */
export interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  bin?: string | Record<string, string>;
  exports?: unknown;
  files?: string[];
  scripts?: Record<string, string>;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  [field: string]: unknown;
}

/** One directory under `packages/` with a package.json. */
export interface WorkspacePackage {
  /** Directory name, e.g. `oci-export`. */
  dir: string;
  /** Absolute path of the directory. */
  path: string;
  manifest: Manifest;
}

/** Every package under `{root}/packages`, sorted by directory name. */
export function workspacePackages(root: string): WorkspacePackage[] {
  const packagesDir = join(root, 'packages');
  return readdirSync(packagesDir)
    .filter((dir) => existsSync(join(packagesDir, dir, 'package.json')))
    .sort()
    .map((dir) => {
      const path = join(packagesDir, dir);
      const manifest = JSON.parse(readFileSync(join(path, 'package.json'), 'utf8')) as Manifest;
      return { dir, path, manifest };
    });
}

/** The command names a manifest's `bin` installs. */
export function binNames(manifest: Manifest): string[] {
  if (manifest.bin === undefined) return [];
  if (typeof manifest.bin === 'string') return [manifest.name.replace(/^@[^/]+\//, '')];
  return Object.keys(manifest.bin);
}
