import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { EarlyEnd, zeroCopyGet } from './zero-copy-get.js';

/** A raw TCP server that answers each connection with `script` (parts written with pauses). */
async function serve(script: (socket: Socket, request: string) => Promise<void>): Promise<Server> {
  const server = createServer((socket) => {
    let request = '';
    socket.on('data', (d) => {
      request += d.toString('latin1');
      if (request.includes('\r\n\r\n')) void script(socket, request).catch(() => socket.destroy());
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  servers.push(server);
  return server;
}

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

function urlOf(server: Server, path = '/v2/x/blobs/y'): URL {
  const address = server.address() as { port: number };
  return new URL(`http://127.0.0.1:${address.port}${path}`);
}

/** Every piece, copied (a piece is only valid during the call). */
async function readAll(url: URL, signal = new AbortController().signal) {
  const res = await zeroCopyGet(url, { headers: { accept: '*/*' }, signal });
  const parts: Buffer[] = [];
  const bytes = await res.body.pipeTo((piece) => parts.push(Buffer.from(piece)));
  return { res, bytes, body: Buffer.concat(parts) };
}

describe('zeroCopyGet', () => {
  it('reads a Content-Length body larger than its read buffer, head split across writes', async () => {
    const payload = randomBytes(3 * 1024 * 1024 + 17);
    let seen = '';
    const server = await serve(async (socket, request) => {
      seen = request;
      socket.write('HTTP/1.1 200 OK\r\nContent-Le');
      await sleep(20);
      socket.write(`ngth: ${payload.length}\r\nX-Two: a\r\nX-Two: b\r\n\r\n`);
      socket.end(payload);
    });
    const { res, bytes, body } = await readAll(urlOf(server, '/v2/x/blobs/y?digest=1'));
    expect(res.status).toBe(200);
    expect(res.headers.get('x-two')).toBe('a, b');
    expect(bytes).toBe(payload.length);
    expect(body.equals(payload)).toBe(true);
    expect(seen).toMatch(/^GET \/v2\/x\/blobs\/y\?digest=1 HTTP\/1\.1\r\n/);
    expect(seen).toContain('connection: close');
    expect(seen).toContain('accept: */*');
  });

  it('decodes chunked bodies, extensions and trailers included, whatever the write boundaries', async () => {
    const server = await serve(async (socket) => {
      const wire =
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' +
        '5;ext=1\r\nhello\r\n1\r\n \r\nb\r\nzero-copied\r\n0\r\nX-Trailer: t\r\n\r\n';
      for (let at = 0; at < wire.length; at += 3) {
        socket.write(wire.slice(at, at + 3));
        await sleep(1);
      }
      // Stays open: the end of the chunked body, not the close, ends the read.
    });
    const { body } = await readAll(urlOf(server));
    expect(body.toString()).toBe('hello zero-copied');
  });

  it('keeps what arrived before the body was piped, and reads to the close without a length', async () => {
    const server = await serve(async (socket) => {
      socket.end('HTTP/1.1 200 OK\r\n\r\nall of it, then the close');
    });
    const res = await zeroCopyGet(urlOf(server), {
      headers: {},
      signal: new AbortController().signal,
    });
    await sleep(50); // the whole answer is in before anyone reads it
    const parts: Buffer[] = [];
    await res.body.pipeTo((p) => parts.push(Buffer.from(p)));
    expect(Buffer.concat(parts).toString()).toBe('all of it, then the close');
  });

  it('skips an interim 100 Continue', async () => {
    const server = await serve(async (socket) => {
      socket.end(
        'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno',
      );
    });
    const { res, body } = await readAll(urlOf(server));
    expect(res.status).toBe(404);
    expect(body.toString()).toBe('no');
  });

  it('fails a body cut short with the bytes that came', async () => {
    const server = await serve(async (socket) => {
      socket.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten!!');
    });
    const err = await readAll(urlOf(server)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EarlyEnd);
    expect((err as EarlyEnd).bytes).toBe(10);
  });

  it('refuses what is not HTTP, a bad chunk size, and a connection refused', async () => {
    const junk = await serve(async (socket) => {
      socket.end('SSH-2.0-OpenSSH\r\n\r\n');
    });
    await expect(readAll(urlOf(junk))).rejects.toThrow(/not an HTTP\/1\.1 response/);
    const badChunk = await serve(async (socket) => {
      socket.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n');
    });
    await expect(readAll(urlOf(badChunk))).rejects.toThrow(/bad chunk size/);
    const closed = await serve(async () => undefined);
    const url = urlOf(closed);
    await new Promise((r) => closed.close(r));
    await expect(readAll(url)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('stops on abort and on what the sink throws, closing the connection', async () => {
    const closedByPeer: Promise<void>[] = [];
    const server = await serve(async (socket) => {
      closedByPeer.push(new Promise((r) => socket.once('close', () => r())));
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n');
      const block = Buffer.alloc(64 * 1024);
      while (!socket.destroyed && socket.write(block)) await sleep(1);
    });
    const controller = new AbortController();
    const res = await zeroCopyGet(urlOf(server), { headers: {}, signal: controller.signal });
    const reading = res.body.pipeTo(() => controller.abort(new Error('stop')));
    await expect(reading).rejects.toThrow('stop');
    const res2 = await zeroCopyGet(urlOf(server), {
      headers: {},
      signal: new AbortController().signal,
    });
    await expect(
      res2.body.pipeTo(() => {
        throw new Error('disk full');
      }),
    ).rejects.toThrow('disk full');
    await Promise.all(closedByPeer);
  });
});
