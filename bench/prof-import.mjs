import { mkdtemp, rm } from 'node:fs/promises';
import { Import } from '@day11/layer';
const tarball = process.argv[2];
const osDir = await mkdtemp(process.env.CACHE_PREFIX ?? '/var/tmp/imp/cache-');
const s = performance.now();
await Import.fromTarball({ osDir, tarball, image: 'bench' });
console.log('import ms', (performance.now() - s).toFixed(0));
await rm(osDir, { recursive: true });
