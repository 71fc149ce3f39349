import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findCredentials } from './credentials.js';
import { RegistryCodes } from './errors.js';
import { cleanup, tempDir } from './fixtures/layers.js';

afterAll(cleanup);

const b64 = (s: string) => Buffer.from(s).toString('base64');

async function home(config: unknown): Promise<string> {
  const dir = await tempDir('home');
  await mkdir(join(dir, '.docker'));
  await writeFile(
    join(dir, '.docker/config.json'),
    typeof config === 'string' ? config : JSON.stringify(config),
  );
  return dir;
}

describe('credentials', () => {
  it('come from DAY11_REGISTRY_USERNAME/PASSWORD first', async () => {
    const env = { DAY11_REGISTRY_USERNAME: 'ci', DAY11_REGISTRY_PASSWORD: 's3cret' };
    expect(await findCredentials('ghcr.io', { env, home: '/nonexistent' })).toEqual({
      username: 'ci',
      password: 's3cret',
    });
  });

  it('come from ~/.docker/config.json under any key docker login uses', async () => {
    const dir = await home({
      auths: {
        'https://ghcr.io': { auth: b64('me:pa:ss') },
        '127.0.0.1:5000': { username: 'u', password: 'p' },
        'https://index.docker.io/v1/': { identitytoken: 'refresh-me' },
      },
    });
    const from = (registry: string) => findCredentials(registry, { env: {}, home: dir });
    expect(await from('ghcr.io')).toEqual({ username: 'me', password: 'pa:ss' });
    expect(await from('127.0.0.1:5000')).toEqual({ username: 'u', password: 'p' });
    expect(await from('docker.io')).toEqual({ identityToken: 'refresh-me' });
    expect(await from('quay.io')).toBeUndefined();
  });

  it('come from REGISTRY_AUTH_FILE before the Docker config', async () => {
    const dir = await home({ auths: { 'h.io': { auth: b64('docker:x') } } });
    const file = join(dir, 'auth.json');
    await writeFile(file, JSON.stringify({ auths: { 'h.io': { auth: b64('podman:y') } } }));
    expect(await findCredentials('h.io', { env: { REGISTRY_AUTH_FILE: file }, home: dir })).toEqual(
      {
        username: 'podman',
        password: 'y',
      },
    );
  });

  it('ask a credential helper', async () => {
    const dir = await home({ credHelpers: { 'h.io': 'day11test' } });
    const bin = join(dir, 'bin');
    await mkdir(bin);
    const helper = join(bin, 'docker-credential-day11test');
    await writeFile(
      helper,
      '#!/bin/sh\nread host\necho "{\\"Username\\":\\"from-$host\\",\\"Secret\\":\\"tok\\"}"\n',
    );
    await chmod(helper, 0o755);
    const path = process.env['PATH'];
    process.env['PATH'] = `${bin}:${path}`;
    try {
      expect(await findCredentials('h.io', { env: {}, home: dir })).toEqual({
        username: 'from-h.io',
        password: 'tok',
      });
    } finally {
      process.env['PATH'] = path;
    }
  });

  it('refuse a malformed file, naming it', async () => {
    for (const bad of [
      '{not json',
      '{"auths": []}',
      JSON.stringify({ auths: { 'h.io': { auth: b64('nocolon') } } }),
    ]) {
      const dir = await home(bad);
      const err = await findCredentials('h.io', { env: {}, home: dir }).catch((e: unknown) => e);
      expect(err).toMatchObject({
        code: RegistryCodes.AUTH_CONFIG,
        path: join(dir, '.docker/config.json'),
      });
    }
  });

  it('are anonymous when there is no file', async () => {
    expect(await findCredentials('h.io', { env: {}, home: '/nonexistent' })).toBeUndefined();
  });
});
