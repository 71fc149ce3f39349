/**
 * The packages as a stranger gets them from npm: packs every package under
 * `packages/` (its `prepack` builds it), checks what each tarball holds,
 * installs the tarballs with npm into a fresh project outside the workspace,
 * then imports and requires each package, runs every installed bin with
 * `--help`, dry-runs `npm publish` of each tarball, type-checks the README
 * examples against the installed types, and runs the runner README's
 * program there (as root, with busybox-static; skipped otherwise, saying so).
 *
 * Usage: `pnpm pack-check [--keep]` (after `pnpm build`); `--keep` leaves the
 * temporary project in place and prints its path.
 */
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { readmeExamples } from './readme-examples.js';
import { runReadmeProgram } from './readme-program.js';
import { tarballProblems } from './tarball.js';
import { binNames, workspacePackages, type WorkspacePackage } from './workspace.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CONSUMER_FILES = join(ROOT, 'scripts/consumer');
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');

/** Runs a command; rejects with its output when it fails. */
function run(cmd: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile(cmd, args, { cwd, maxBuffer: 64 * 2 ** 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(
          new Error(
            `${cmd} ${args.join(' ')} (in ${cwd}) failed: ${err.message}\n${stdout}${stderr}`,
          ),
        );
      } else {
        resolvePromise(stdout + stderr);
      }
    });
  });
}

function step(message: string): void {
  console.log(`pack-check: ${message}`);
}

/** Every file under `dir`, relative to it. */
function filesUnder(dir: string, prefix = ''): string[] {
  return readdirSync(join(dir, prefix), { withFileTypes: true }).flatMap((entry) => {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    return entry.isDirectory() ? filesUnder(dir, rel) : [rel];
  });
}

/** The file name `pnpm pack` gives a package's tarball. */
function tarballName(pkg: WorkspacePackage): string {
  return `${pkg.manifest.name.replace(/^@/, '').replace('/', '-')}-${pkg.manifest.version}.tgz`;
}

interface Packed {
  pkg: WorkspacePackage;
  tarball: string;
  unpacked: string;
  files: string[];
}

async function pack(pkg: WorkspacePackage, work: string): Promise<Packed> {
  const destination = join(work, 'tarballs');
  await run('pnpm', ['pack', '--pack-destination', destination], pkg.path);
  const tarball = join(destination, tarballName(pkg));
  const unpacked = join(work, 'unpacked', pkg.dir);
  mkdirSync(unpacked, { recursive: true });
  await run('tar', ['-xzf', tarball, '-C', unpacked, '--strip-components=1'], work);
  return { pkg, tarball, unpacked, files: filesUnder(unpacked).sort() };
}

/** Each @day11 package in the consumer's lockfile must be one copy, from its tarball. */
function lockProblems(consumer: string, names: string[]): string[] {
  const lock = JSON.parse(readFileSync(join(consumer, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { resolved?: string }>;
  };
  const problems: string[] = [];
  for (const [path, entry] of Object.entries(lock.packages)) {
    const name = names.find((n) => path.endsWith(`node_modules/${n}`));
    if (name === undefined) continue;
    if (path !== `node_modules/${name}`)
      problems.push(`npm installed a second copy of ${name} at ${path}: its range does not match`);
    else if (!entry.resolved?.startsWith('file:'))
      problems.push(`npm installed ${name} from ${entry.resolved}, not from its tarball`);
  }
  for (const name of names) {
    if (!(`node_modules/${name}` in lock.packages)) problems.push(`npm did not install ${name}`);
  }
  return problems;
}

/** Writes every README's ```ts blocks into `consumer/examples`; returns how to map errors back. */
function writeExamples(
  consumer: string,
  packages: WorkspacePackage[],
): { problems: string[]; origin: Map<string, { readme: string; line: number; preamble: number }> } {
  const readmes = [
    { label: 'root', path: join(ROOT, 'README.md') },
    ...packages.map((pkg) => ({ label: pkg.dir, path: join(pkg.path, 'README.md') })),
  ];
  const dir = join(consumer, 'examples');
  mkdirSync(dir, { recursive: true });
  const problems: string[] = [];
  const origin = new Map<string, { readme: string; line: number; preamble: number }>();
  for (const { label, path } of readmes) {
    const readme = relative(ROOT, path);
    const found = readmeExamples(readFileSync(path, 'utf8'), readme);
    problems.push(...found.problems);
    found.examples.forEach((example, i) => {
      const file = `examples/${label}-${i + 1}.ts`;
      writeFileSync(join(consumer, file), example.source);
      origin.set(file, { readme, line: example.line, preamble: example.preambleLines });
    });
  }
  return { problems, origin };
}

/** Type-checks the examples against the installed packages; tsc's errors point at README lines. */
async function typecheckExamples(
  consumer: string,
  packages: WorkspacePackage[],
): Promise<string[]> {
  const { problems, origin } = writeExamples(consumer, packages);
  step(`type-checking ${origin.size} README examples against the installed types`);
  writeFileSync(
    join(consumer, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'es2023',
        lib: ['es2023'],
        module: 'nodenext',
        moduleResolution: 'nodenext',
        types: ['node'],
        strict: true,
        noEmit: true,
        skipLibCheck: false,
      },
      include: ['examples'],
    }),
  );
  try {
    await run(process.execPath, [TSC, '-p', 'tsconfig.json', '--pretty', 'false'], consumer);
  } catch (err) {
    const out = (err as Error).message;
    const errors = out.split('\n').filter((line) => /\): error TS\d+/.test(line));
    for (const line of errors.length ? errors : [out]) {
      const m = /^(examples\/[^(]+)\((\d+),(\d+)\): (.*)$/.exec(line);
      const at = m && origin.get(m[1]!);
      if (m && at) {
        const inBlock = Number(m[2]) - at.preamble;
        const where = inBlock > 0 ? `${at.line + inBlock - 1}` : `${at.line} (its preamble)`;
        problems.push(`${at.readme}:${where}:${m[3]}: ${m[4]}`);
      } else {
        problems.push(line);
      }
    }
  }
  return problems;
}

async function main(): Promise<number> {
  const keep = process.argv.includes('--keep');
  const packages = workspacePackages(ROOT).filter((pkg) => pkg.manifest.private !== true);
  const names = packages.map((pkg) => pkg.manifest.name);
  const work = mkdtempSync(join(tmpdir(), 'day11-pack-check-'));
  const problems: string[] = [];
  try {
    step(`packing ${names.join(', ')} into ${work}`);
    const packed: Packed[] = [];
    for (const pkg of packages) packed.push(await pack(pkg, work));
    for (const p of packed) {
      console.log(`\n${p.pkg.manifest.name} (${p.files.length} files):\n  ${p.files.join('\n  ')}`);
      problems.push(
        ...tarballProblems({ name: p.pkg.manifest.name, dir: p.unpacked, files: p.files }),
      );
    }

    step('npm publish --dry-run of every tarball');
    for (const p of packed) {
      const out = await run('npm', ['publish', '--dry-run', '--ignore-scripts'], p.unpacked);
      if (!/public access/.test(out))
        problems.push(`${p.pkg.manifest.name}: npm publish --dry-run does not say "public access"`);
      // npm rewrites what it finds wrong as it publishes (a "./" bin path is dropped, for one).
      const corrected = out
        .split('\n')
        .filter((line) => /npm warn publish .*(corrected|invalid|removed)/.test(line));
      if (corrected.length)
        problems.push(
          `${p.pkg.manifest.name}: npm publish changes package.json:\n${corrected.join('\n')}`,
        );
    }

    const consumer = join(work, 'consumer');
    mkdirSync(consumer);
    writeFileSync(
      join(consumer, 'package.json'),
      JSON.stringify({ name: 'day11-consumer', private: true, type: 'module' }),
    );
    const rootManifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      devDependencies: Record<string, string>;
    };
    const typesNode = `@types/node@${rootManifest.devDependencies['@types/node']}`;
    step(`npm install of the ${packed.length} tarballs and ${typesNode} into ${consumer}`);
    await run(
      'npm',
      ['install', '--no-audit', '--no-fund', ...packed.map((p) => p.tarball), typesNode],
      consumer,
    );
    problems.push(...lockProblems(consumer, names));

    for (const file of readdirSync(CONSUMER_FILES))
      cpSync(join(CONSUMER_FILES, file), join(consumer, file));
    step('import and require of every package');
    console.log(await run(process.execPath, ['load-all.mjs', ...names], consumer));
    console.log(await run(process.execPath, ['load-all.cjs', ...names], consumer));

    for (const bin of packages.flatMap((pkg) => binNames(pkg.manifest))) {
      step(`${bin} --help from the installed bin`);
      const out = await run(join(consumer, 'node_modules/.bin', bin), ['--help'], consumer);
      if (!out.includes(bin)) problems.push(`${bin} --help does not mention ${bin}:\n${out}`);
    }

    problems.push(...(await typecheckExamples(consumer, packages)));

    const readme = join(ROOT, 'packages/runner/README.md');
    step(`running the program of ${relative(ROOT, readme)} in ${consumer}`);
    const program = await runReadmeProgram({ readme, consumer, tsc: TSC });
    if (program.skipped) step(`skipped the runner README's program: ${program.skipped}`);
    else if (program.output !== undefined) console.log(program.output);
    problems.push(...program.problems);
  } catch (err) {
    problems.push(err instanceof Error ? err.message : String(err));
  } finally {
    if (keep) step(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
  if (problems.length) {
    console.error(`\npack-check: ${problems.length} problem(s):\n${problems.join('\n')}`);
    return 1;
  }
  step(`${names.length} packages pack, install, load and type-check their README examples`);
  return 0;
}

process.exitCode = await main();
