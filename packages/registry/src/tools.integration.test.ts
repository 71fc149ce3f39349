/**
 * A published cache image is an ordinary image every OCI tool takes:
 * `skopeo copy docker://…:build-<hash> oci:…`, `oci-image-tool validate`,
 * `umoci unpack`, and `runc run` of what the build saw.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildTag } from './cache-image.js';
import { RegistryCache } from './cache.js';
import { DockerRegistry, haveDockerRegistry } from '@day11/testing';
import { cleanup, isRoot, tempDir } from './fixtures/layers.js';
import { makeStack, type TestStack } from './fixtures/stack.js';

const REPO = 'ns/day11-cache';
const tools = ['skopeo', 'umoci', 'runc', 'oci-image-tool'].every((t) =>
  ['/usr/bin', '/usr/sbin', '/bin', '/sbin'].some((d) => existsSync(join(d, t))),
);

let registry: DockerRegistry;
let work: string;
let stack: TestStack;
let cache: RegistryCache;

describe.skipIf(!isRoot || !haveDockerRegistry || !tools)('OCI tools read the cache images', () => {
  beforeAll(async () => {
    registry = await DockerRegistry.start();
    work = await tempDir('tools');
    stack = await makeStack(join(work, 'cache'));
    cache = new RegistryCache({ ref: `${registry.host}/${REPO}` });
    await cache.publish({ hash: stack.app.hash, osDir: join(work, 'cache') }, {});
  });

  afterAll(async () => {
    await cache?.close();
    await registry?.stop();
    await cleanup();
  });

  it('skopeo copies build-<hash> to a layout that oci-image-tool validates', () => {
    const layout = join(work, 'layout');
    const src = `docker://${registry.host}/${REPO}:${buildTag(stack.app.hash)}`;
    execFileSync('skopeo', ['copy', '--src-tls-verify=false', src, `oci:${layout}:app`], {
      stdio: 'pipe',
    });
    const out = execFileSync(
      'oci-image-tool',
      ['validate', '--type', 'image', '--ref', 'name=app', layout],
      { stdio: 'pipe' },
    ).toString();
    expect(out).toContain('Validation succeeded');
    const info = JSON.parse(
      execFileSync('skopeo', ['inspect', '--tls-verify=false', src]).toString(),
    ) as { Layers: string[]; Labels: unknown };
    expect(info.Layers).toHaveLength(3); // base, libs, app
  });

  it('umoci unpacks what the build saw, and runc runs it', async () => {
    const bundle = join(work, 'bundle');
    execFileSync('umoci', ['unpack', '--image', `${join(work, 'layout')}:app`, bundle], {
      stdio: 'pipe',
    });
    const rootfs = join(bundle, 'rootfs');
    expect(await readdir(join(rootfs, 'var/cache/old'))).toEqual(['z']); // opaque: x, y gone
    expect(existsSync(join(rootfs, 'usr/lib/libs/a.so.hard'))).toBe(false); // whiteout
    expect(existsSync(join(rootfs, 'etc/issue'))).toBe(false); // a base file deleted
    expect(await readFile(join(rootfs, 'usr/lib/libs/b.so'), 'utf8')).toBe('changed\n');

    const configPath = join(bundle, 'config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8')) as {
      process: { args: string[]; terminal: boolean };
    };
    config.process.args = ['/opt/app/main'];
    config.process.terminal = false;
    await writeFile(configPath, JSON.stringify(config));
    const id = `day11-registry-${process.pid}`;
    const out = execFileSync('runc', ['run', '--bundle', bundle, id], { stdio: 'pipe' }).toString();
    expect(out).toBe('hello from app\n');
    const left = execFileSync('runc', ['list', '--quiet']).toString().split('\n');
    expect(left).not.toContain(id);
  });
});
