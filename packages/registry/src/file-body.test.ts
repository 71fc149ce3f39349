import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBody } from './file-body.js';
import { bodyOf, StreamSender } from './stream-request.js';

let dir: string;
let server: Server | undefined;
const senders: StreamSender[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-file-body-'));
});
afterEach(async () => {
  for (const s of senders.splice(0)) s.close();
  if (server) await new Promise((r) => server!.close(r));
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

/** A server that hashes each request body, reading slowly when asked (backpressure). */
async function hashingServer(o: { slowMs?: number; answerEarly?: boolean } = {}): Promise<URL> {
  server = createServer((req, res) => {
    if (o.answerEarly) {
      res.writeHead(413).end();
      setTimeout(() => req.destroy(), 20);
      return;
    }
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      if (o.slowMs) {
        req.pause();
        setTimeout(() => req.resume(), o.slowMs);
      }
    });
    req.on('end', () => res.end(JSON.stringify({ bytes, sha256: hash.digest('hex') })));
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return new URL(`http://127.0.0.1:${port}/upload`);
}

async function upload(url: URL, body: FileBody) {
  const sender = new StreamSender({ keepFreedMemory: false });
  senders.push(sender);
  let counted = 0;
  const res = await sender.send(url, {
    method: 'PUT',
    headers: { 'content-length': String(body.end - body.start) },
    body,
    signal: new AbortController().signal,
    onBytes: (n) => (counted += n),
  });
  return { res, counted };
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function json(res: Response): Promise<unknown> {
  const parts: Buffer[] = [];
  for await (const p of bodyOf(res) ?? []) parts.push(Buffer.from(p));
  return JSON.parse(Buffer.concat(parts).toString());
}

describe('FileBody through StreamSender', () => {
  it('sends a file of several pieces byte for byte, through reused buffers, with backpressure', async () => {
    const bytes = randomBytes(5 * 1024 * 1024 + 12345);
    await writeFile(join(dir, 'blob'), bytes);
    const url = await hashingServer({ slowMs: 1 });
    const { res, counted } = await upload(url, new FileBody(join(dir, 'blob'), 0, bytes.length));
    expect(res.status).toBe(200);
    expect(await json(res)).toEqual({ bytes: bytes.length, sha256: sha256(bytes) });
    expect(counted).toBe(bytes.length);
  });

  it('sends a range (a chunked upload piece), and an empty one', async () => {
    const bytes = randomBytes(3 * 1024 * 1024);
    await writeFile(join(dir, 'blob'), bytes);
    const url = await hashingServer();
    const start = 1024 * 1024 - 7;
    const end = 2 * 1024 * 1024 + 999;
    const { res } = await upload(url, new FileBody(join(dir, 'blob'), start, end));
    expect(await json(res)).toEqual({
      bytes: end - start,
      sha256: sha256(bytes.subarray(start, end)),
    });
    const empty = await upload(url, new FileBody(join(dir, 'blob'), 5, 5));
    expect(await json(empty.res)).toEqual({ bytes: 0, sha256: sha256(Buffer.alloc(0)) });
  });

  it('many uploads at once share the pool without mixing bytes', async () => {
    const files = await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const bytes = randomBytes(2 * 1024 * 1024 + i * 4099);
        await writeFile(join(dir, `blob-${i}`), bytes);
        return { path: join(dir, `blob-${i}`), bytes };
      }),
    );
    const url = await hashingServer({ slowMs: 2 });
    const sender = new StreamSender({ keepFreedMemory: false });
    senders.push(sender);
    const answers = await Promise.all(
      files.map(async (f) => {
        const res = await sender.send(url, {
          method: 'PUT',
          headers: { 'content-length': String(f.bytes.length) },
          body: new FileBody(f.path, 0, f.bytes.length),
          signal: new AbortController().signal,
        });
        return json(res);
      }),
    );
    expect(answers).toEqual(files.map((f) => ({ bytes: f.bytes.length, sha256: sha256(f.bytes) })));
  });

  it('an answer before the body is read (413) is the result, and nothing hangs', async () => {
    const bytes = randomBytes(8 * 1024 * 1024);
    await writeFile(join(dir, 'blob'), bytes);
    const url = await hashingServer({ answerEarly: true });
    const { res } = await upload(url, new FileBody(join(dir, 'blob'), 0, bytes.length));
    expect(res.status).toBe(413);
    await sleep(50);
  });

  it('a file shorter than promised fails the request, naming the file', async () => {
    await writeFile(join(dir, 'blob'), randomBytes(1024 * 1024));
    await truncate(join(dir, 'blob'), 1000);
    const url = await hashingServer();
    await expect(upload(url, new FileBody(join(dir, 'blob'), 0, 1024 * 1024))).rejects.toThrow(
      /blob ended at byte 1000, before byte 1048576/,
    );
  });

  it('is also a plain async iterable of the same bytes', async () => {
    const bytes = randomBytes(2 * 1024 * 1024 + 3);
    await writeFile(join(dir, 'blob'), bytes);
    const parts: Buffer[] = [];
    for await (const p of new FileBody(join(dir, 'blob'), 3, bytes.length))
      parts.push(Buffer.from(p));
    expect(Buffer.concat(parts).equals(bytes.subarray(3))).toBe(true);
  });
});
