/**
 * Bundles the compiled `day11` command (dist/, from `tsc -b`) into dist/bin/:
 * one entry per command's lazily loaded chunk instead of ~250 modules from
 * eight packages and zod, which Node 20 resolves, reads and compiles one by
 * one (a cached `day11 build` spent a third of its time loading them).
 *
 * The libraries' worker-thread scripts are entries too, written beside the
 * chunks that start them (`workerFile` of @day11/exec finds them there).
 * Native addons stay external: they are dependencies of @day11/cli.
 *
 * Usage: `node bundle.mjs` in packages/cli (the root `pnpm build` runs it).
 */
import { rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rolldown } from 'rolldown';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, 'dist/bin');
/** Loaded with `createRequire` at run time: compiled code, never bundled. */
const NATIVE = ['koffi', '@napi-rs/xattr'];

const input = {
  day11: join(here, 'dist/main.js'),
  // Worker scripts, by the names their modules ask `workerFile` for.
  'survey-worker': join(here, 'node_modules/@day11/layer/dist/survey-worker.js'),
  'tar-worker': join(here, 'node_modules/@day11/oci-export/dist/tar-worker.js'),
  'file-writer-worker': join(here, 'node_modules/@day11/layer/dist/file-writer-worker.js'),
};

const bundle = await rolldown({
  input,
  platform: 'node',
  external: (id) => NATIVE.some((name) => id === name || id.startsWith(`${name}/`)),
  logLevel: 'warn',
});
try {
  await rm(out, { recursive: true, force: true });
  await bundle.write({
    dir: out,
    format: 'cjs',
    entryFileNames: '[name].js',
    chunkFileNames: '[name]-[hash].js',
  });
  // CommonJS, though the package is a module: Node 20 loads a graph of
  // CommonJS files ~50 ms faster than the same as ES modules (no async
  // linking), which is a tenth of a cached build's whole command.
  await writeFile(join(out, 'package.json'), '{ "type": "commonjs" }\n');
} finally {
  await bundle.close();
}
