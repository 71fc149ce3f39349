import { Worker } from 'node:worker_threads';
const c = process.cpuUsage();
const t = performance.now();
for (let i = 0; i < 5; i++) {
  await new Promise((res) => {
    const w = new Worker(
      `import '${new URL('../packages/oci-export/dist/walk.js', import.meta.url)}'; import '${new URL('../packages/oci-export/dist/layer-tar.js', import.meta.url)}';`,
      { eval: true },
    );
    w.on('exit', res);
  });
}
const cu = process.cpuUsage(c);
console.log(
  'per worker',
  ((performance.now() - t) / 5).toFixed(0),
  'ms wall',
  ((cu.user + cu.system) / 5000).toFixed(0),
  'ms cpu',
);
