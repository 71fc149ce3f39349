import { LayerBlob } from '@day11/oci-export';
import { Hash, LayerDir, LayerMeta } from '@day11/layer';
import { execSync } from 'node:child_process';
import { rmSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
const osDir = '/tmp/pe/cache';
const tree = process.argv[2] ?? '/usr/share/man';
const hash = Hash.baseHash({ image: tree });
const dir = LayerDir.path({ osDir, hash });
if (!existsSync(dir)) {
  mkdirSync(join(dir, 'fs'), { recursive: true });
  execSync(`cp -a ${tree}/. ${dir}/fs`);
  await LayerMeta.save(dir, {
    exit_status: 0,
    parent_hashes: [],
    uid: 0,
    gid: 0,
    base_hash: hash,
    disk_usage: 0,
    timing: [],
    failed_dep: null,
  });
}
const level = Number(process.env.LEVEL ?? 6);
for (let i = 0; i < Number(process.env.ROUNDS ?? 3); i++) {
  rmSync(join(dir, 'layer.tar.gz'), { force: true });
  rmSync(join(dir, 'layer.tar.gz.digests'), { force: true });
  let t = performance.now();
  const cpu0 = process.cpuUsage();
  const b = await LayerBlob.ensure(dir, { concurrency: 2, gzipLevel: level });
  const cpu = process.cpuUsage(cpu0);
  const ours = performance.now() - t;
  t = performance.now();
  const times = execSync(
    `tar -c --numeric-owner -f - -C ${dir}/fs . | pigz -${level} -p 2 > /tmp/pe/p.tgz; times`,
    { shell: '/bin/bash' },
  )
    .toString()
    .trim()
    .split('\n')[1];
  const pigz = performance.now() - t;
  console.log(
    `ours ${ours.toFixed(0)} ms (cpu user ${(cpu.user / 1000).toFixed(0)} sys ${(cpu.system / 1000).toFixed(0)}) pigz ${pigz.toFixed(0)} ms (${times}) ratio ${(ours / pigz).toFixed(2)} size ${b.size} pigzsize ${execSync('stat -c %s /tmp/pe/p.tgz').toString().trim()}`,
  );
}
