import { TarThread } from '../packages/oci-export/dist/tar-thread.js';
import { tarChunks } from '../packages/oci-export/dist/layer-tar.js';
import { BufferPool } from '../packages/oci-export/dist/buffer-pool.js';
import { execSync } from 'node:child_process';
const root = execSync('ls -d /tmp/pe/cache/build-*/fs').toString().trim().split('\n')[0];
for (let r = 0; r < 3; r++) {
  let t = performance.now();
  let c = process.cpuUsage();
  const tar = TarThread.start(root, { chunkSize: 1 << 20, credits: 5 });
  let n = 0;
  for await (const { data } of tar) {
    n += data.length;
    tar.recycle(data);
  }
  await tar.summary;
  let cu = process.cpuUsage(c);
  console.log(
    'thread',
    n,
    (performance.now() - t).toFixed(0),
    'ms cpu',
    ((cu.user + cu.system) / 1000).toFixed(0),
  );
  t = performance.now();
  c = process.cpuUsage();
  const pool = new BufferPool(1 << 20, 4);
  n = 0;
  for await (const ch of tarChunks(root, { pool })) {
    n += ch.data.length;
    pool.give(ch.data);
  }
  cu = process.cpuUsage(c);
  console.log(
    'inline',
    n,
    (performance.now() - t).toFixed(0),
    'ms cpu',
    ((cu.user + cu.system) / 1000).toFixed(0),
  );
  t = performance.now();
  execSync(`tar -c --numeric-owner -f - -C ${root} . | cat > /dev/null`, { shell: '/bin/bash' });
  console.log('tar', (performance.now() - t).toFixed(0));
}
