import { walk } from '../packages/oci-export/dist/walk.js';
import { tarChunks } from '../packages/oci-export/dist/layer-tar.js';
import { BufferPool } from '../packages/oci-export/dist/pool.js';
import { lstatSync, readdirSync } from 'node:fs';
import { execSync } from 'node:child_process';
const root = execSync('ls -d /tmp/pe/cache/build-*/fs').toString().trim().split('\n')[0];
for (let r = 0; r < 3; r++) {
  let t = performance.now();
  let c = process.cpuUsage();
  let n = 0;
  for (const e of walk(root)) n++;
  let cu = process.cpuUsage(c);
  console.log(
    'walk',
    n,
    (performance.now() - t).toFixed(0),
    'ms cpu',
    ((cu.user + cu.system) / 1000).toFixed(0),
  );
  t = performance.now();
  c = process.cpuUsage();
  const pool = new BufferPool(1 << 20, 4);
  let bytes = 0;
  for await (const ch of tarChunks(root, { pool })) {
    bytes += ch.data.length;
    pool.give(ch.data);
  }
  cu = process.cpuUsage(c);
  console.log(
    'tarChunks',
    bytes,
    (performance.now() - t).toFixed(0),
    'ms cpu',
    ((cu.user + cu.system) / 1000).toFixed(0),
  );
  t = performance.now();
  execSync(`tar -c --numeric-owner -f - -C ${root} . | cat > /dev/null`, { shell: '/bin/bash' });
  console.log('tar', (performance.now() - t).toFixed(0));
  t = performance.now();
  execSync(`tar -c --xattrs --numeric-owner -f - -C ${root} . | cat > /dev/null`, {
    shell: '/bin/bash',
  });
  console.log('tar --xattrs', (performance.now() - t).toFixed(0));
}
