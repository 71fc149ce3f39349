import { Sys } from '@day11/exec';
import { lstatSync, openSync, readSync, closeSync } from 'node:fs';
import { execSync } from 'node:child_process';
const root = execSync('ls -d /tmp/pe/cache/build-*/fs').toString().trim().split('\n')[0];
const paths = execSync(`find ${root} -type f`, { maxBuffer: 1e8 }).toString().trim().split('\n');
const buf = Buffer.allocUnsafe(1 << 20);
for (let r = 0; r < 2; r++) {
  const m = (name, f) => {
    const c = process.cpuUsage();
    const t = performance.now();
    for (const p of paths) f(p);
    const cu = process.cpuUsage(c);
    console.log(
      name,
      paths.length,
      (performance.now() - t).toFixed(0),
      'ms cpu',
      ((cu.user + cu.system) / 1000).toFixed(0),
    );
  };
  m('lstat', (p) => lstatSync(p));
  m('lstat bigint-free throwIfNoEntry', (p) => lstatSync(p, { throwIfNoEntry: false }));
  m('listxattr', (p) => Sys.listXattrsSync(p));
  m('open/read/close', (p) => {
    const fd = openSync(p, 'r');
    readSync(fd, buf, 0, 1 << 20, 0);
    closeSync(fd);
  });
}
