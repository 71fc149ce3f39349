/**
 * The runner README's program, run for real in the consumer project that
 * installed the packed packages: it must build its layers and show that a
 * run on a layer gets that layer's whole stack (`deps`), and that a hand-made
 * `buildDirs` lacking a layer is refused with a clear error. Needs root and
 * busybox-static (a base to run on); without them it says why it was skipped.
 */
import { execFile } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { readmeExamples } from './readme-examples.js';

/** The paths the README's program names, and the directory of the scratch area that stands in for each. */
const PATHS: Readonly<Record<string, string>> = {
  '/var/cache/day11': 'cache',
  '/var/log/day11': 'logs',
  '/srv/rootfs': 'rootfs',
};

/** What the program must print: the files of both layers, and the refusal. */
const EXPECTED: readonly [string, RegExp][] = [
  ['the files of app and of lib, which app was built on', /^lib\napp$/m],
  ['the stack deps expanded to', /^2 layers above the base$/m],
  [
    'the refusal of buildDirs: [app], naming the layer it lacks',
    /^Invalid runInLayers option buildDirs: Not a stack its layers were built on: build-[0-9a-f]{12} was built on build-[0-9a-f]{12}, which is not in the list$/m,
  ],
];

/** Options of {@link runReadmeProgram}. */
export interface ReadmeProgramOptions {
  /** The runner's README. */
  readme: string;
  /** The consumer project, with the packages installed. */
  consumer: string;
  /** The TypeScript compiler (`typescript/bin/tsc`). */
  tsc: string;
}

/** What came of it: problems, or why it did not run, and what it printed. */
export interface ReadmeProgramResult {
  problems: string[];
  skipped?: string;
  output?: string;
}

/**
 * Extracts the README's first example, points its paths at a scratch
 * directory of the consumer, compiles it against the installed types and
 * runs it.
 */
export async function runReadmeProgram(o: ReadmeProgramOptions): Promise<ReadmeProgramResult> {
  if (process.getuid?.() !== 0) return { problems: [], skipped: 'it needs root' };
  if (!existsSync('/bin/busybox')) return { problems: [], skipped: 'it needs busybox-static' };
  const [program] = readmeExamples(readFileSync(o.readme, 'utf8'), o.readme).examples;
  if (program === undefined) return { problems: [`${o.readme} has no ts example`] };
  const scratch = join(o.consumer, 'readme-program');
  let source = program.source;
  const problems: string[] = [];
  for (const [path, stand] of Object.entries(PATHS)) {
    const literal = `'${path}'`;
    if (!source.includes(literal))
      problems.push(`${o.readme}: its program no longer names ${literal}`);
    source = source.replaceAll(literal, `'${join(scratch, stand)}'`);
  }
  if (problems.length) return { problems };
  makeBusyboxRootfs(join(scratch, 'rootfs'));
  writeFileSync(join(scratch, 'program.ts'), source);
  await exec(process.execPath, [o.tsc, ...TSC_OPTIONS, '--outDir', scratch, 'program.ts'], scratch);
  const output = await exec(process.execPath, ['program.js'], scratch, 300_000);
  for (const [what, pattern] of EXPECTED) {
    if (!pattern.test(output)) problems.push(`the runner README's program did not print ${what}`);
  }
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter((line) => line.includes(scratch));
  if (mounts.length)
    problems.push(`the runner README's program left mounts:\n${mounts.join('\n')}`);
  if (problems.length) problems.push(`it printed:\n${output}`);
  return { problems, output };
}

const TSC_OPTIONS = [
  // A tsconfig.json of the consumer project is not this program's.
  '--ignoreConfig',
  '--target',
  'es2023',
  '--lib',
  'es2023',
  '--module',
  'nodenext',
  '--moduleResolution',
  'nodenext',
  '--types',
  'node',
  '--strict',
  '--skipLibCheck',
];

/** busybox-static and a few applets: enough for `sh -c`, `mkdir`, `cat`. */
function makeBusyboxRootfs(dir: string): void {
  for (const d of ['bin', 'etc', 'proc', 'dev', 'sys', 'tmp'])
    mkdirSync(join(dir, d), { recursive: true });
  copyFileSync('/bin/busybox', join(dir, 'bin/busybox'));
  chmodSync(join(dir, 'bin/busybox'), 0o755);
  for (const applet of ['sh', 'cat', 'mkdir', 'echo', 'ls'])
    symlinkSync('busybox', join(dir, 'bin', applet));
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
}

function exec(cmd: string, args: string[], cwd: string, timeout = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, timeout, maxBuffer: 16 * 2 ** 20 }, (err, stdout, stderr) => {
      if (err)
        reject(
          new Error(
            `${cmd} ${args.join(' ')} (in ${cwd}) failed: ${err.message}\n${stdout}${stderr}`,
          ),
        );
      else resolve(stdout + stderr);
    });
  });
}
