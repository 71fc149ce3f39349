/**
 * Unit tests of the overlay module: option strings, escaping, de-duplication,
 * common parents, the page budget and strategy planning (mountinfo parsing is
 * `Mountinfo` of `@day11/exec`).
 * Nothing here mounts.
 */
import fc from 'fast-check';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ContainerCodes } from './errors.js';
import * as Overlay from './overlay.js';
import {
  DEFAULT_FEATURES,
  absolutePath,
  byteLength,
  classicMaxLowers,
  classicOptions,
  commonParent,
  dedupeLowers,
  escapeClassic,
  escapeFsconfigUpper,
  featureOptions,
  fitsPage,
  relativeTo,
  type ClassicParts,
} from './overlay-options.js';

const DEFAULTS = ',redirect_dir=off,metacopy=off,index=off';

describe('escaping', () => {
  it('escapes \\ : and , for classic option values', () => {
    expect(escapeClassic('/a,b:c\\d e')).toBe('/a\\,b\\:c\\\\d e');
    expect(escapeClassic('/plain/path')).toBe('/plain/path');
  });

  it('escapes only \\ for fsconfig upperdir/workdir', () => {
    expect(escapeFsconfigUpper('/a,b:c\\d')).toBe('/a,b:c\\\\d');
  });

  it('counts bytes, not UTF-16 units', () => {
    expect(byteLength('/ü')).toBe(3);
  });
});

describe('featureOptions', () => {
  it('defaults to redirect_dir=off, metacopy=off, index=off', () => {
    expect(featureOptions()).toEqual([
      ['redirect_dir', 'off'],
      ['metacopy', 'off'],
      ['index', 'off'],
    ]);
    expect(DEFAULT_FEATURES).toEqual({ redirect_dir: 'off', metacopy: 'off', index: 'off' });
  });

  it('overrides a default, drops one with false, and adds flags', () => {
    expect(featureOptions({ metacopy: 'on', index: false, userxattr: true })).toEqual([
      ['redirect_dir', 'off'],
      ['metacopy', 'on'],
      ['userxattr', true],
    ]);
  });

  it('refuses layer keys and values that would break the option string', () => {
    const bads: Array<Record<string, string>> = [
      { lowerdir: '/x' },
      { upperdir: '/x' },
      { 'a,b': 'on' },
      { xino: 'on,index=on' },
    ];
    for (const bad of bads) {
      expect(() => featureOptions(bad)).toThrow(
        expect.objectContaining({ code: ContainerCodes.BAD_ARGUMENT }),
      );
    }
  });
});

describe('classicOptions', () => {
  it('builds lowerdir (topmost first), upperdir, workdir and features', () => {
    const options = classicOptions({
      lowers: ['/l/top', '/l/a,b'],
      upper: '/u:1',
      work: '/w',
      features: featureOptions({ userxattr: true }),
    });
    expect(options).toBe(
      'lowerdir=/l/top:/l/a\\,b,upperdir=/u\\:1,workdir=/w,redirect_dir=off,metacopy=off,index=off,userxattr',
    );
  });

  it('appends a data-only lower after ::', () => {
    expect(classicOptions({ lowers: ['a'], dataLower: '/tmp/d', features: [] })).toBe(
      'lowerdir=a::/tmp/d',
    );
  });
});

describe('dedupeLowers', () => {
  it('keeps the first occurrence of each directory, comparing normalized absolute paths', () => {
    const { lowers, removed } = dedupeLowers(['/a', '/b/', '/a', '/c/../b', '/d//e', '/d/e']);
    expect(lowers).toEqual(['/a', '/b', '/d/e']);
    expect(removed).toEqual(['/a', '/c/../b', '/d/e']);
  });

  it('resolves relative lowers against the working directory', () => {
    expect(dedupeLowers(['x']).lowers).toEqual([join(process.cwd(), 'x')]);
  });
});

describe('absolutePath', () => {
  it('equals path.resolve on normal, odd and relative spellings', () => {
    const paths = [
      '/',
      '/a',
      '/a/b',
      '/a/.b',
      '/a/...',
      '/a/b.',
      '/a/./b',
      '/a/../b',
      '/a//b',
      '/a/',
      '/a/.',
      '/a/..',
      '//a',
      'x',
      './x',
      '../x',
      'x/../../y',
      '/a b/c:d,e\\f',
    ];
    for (const p of paths) expect([p, absolutePath(p)]).toEqual([p, resolve(p)]);
  });
});

describe('relativeTo', () => {
  it('equals path.relative for descendants and for anything else', () => {
    const cases: Array<[string, string]> = [
      ['/a', '/a/b/c'],
      ['/', '/x'],
      ['/a', '/ab/c'],
      ['/a/b', '/a/b'],
      ['/a/b', '/a'],
      ['/a', '/a/./b//c/'],
    ];
    for (const [parent, p] of cases) expect(relativeTo(parent, [p])).toEqual([relative(parent, p)]);
  });
});

describe('commonParent', () => {
  it('is the deepest directory containing every path strictly', () => {
    expect(commonParent(['/a/x/l1', '/a/y/l2'])).toBe('/a');
    expect(commonParent(['/a/b/l1', '/a/b/l2', '/a/b/l3'])).toBe('/a/b');
    expect(commonParent(['/a/b'])).toBe('/a');
    expect(commonParent(['/a', '/b'])).toBe('/');
  });

  it('keeps every relative path non-empty when one lower contains another', () => {
    const parent = commonParent(['/a/b', '/a/b/c']);
    expect(parent).toBe('/a');
    expect(relativeTo(parent, ['/a/b', '/a/b/c'])).toEqual(['b', 'b/c']);
  });

  it('compares whole components, not string prefixes', () => {
    expect(commonParent(['/data/abc/l', '/data/abd/l'])).toBe('/data');
  });

  it('refuses an empty list', () => {
    expect(() => commonParent([])).toThrow(RangeError);
  });
});

describe('page budget', () => {
  /** Lowers that make the option string exactly `total` bytes long. */
  function partsOfLength(total: number): ClassicParts {
    const base: ClassicParts = { lowers: [], upper: '/u', work: '/w', features: featureOptions() };
    const fixed = classicOptions({ ...base, lowers: [''] }).length;
    const lowers = Array.from({ length: 40 }, (_, i) => `/layers/l${String(i).padStart(4, '0')}`);
    const used = lowers.reduce((n, l) => n + l.length + 1, fixed);
    lowers.push('/z'.padEnd(total - used, 'z'));
    return { ...base, lowers };
  }

  it('fits an option string of 4095 bytes in a 4096-byte page, not one of 4096', () => {
    const exact = partsOfLength(4095);
    expect(classicOptions(exact)).toHaveLength(4095);
    expect(fitsPage(classicOptions(exact), 4096)).toBe(true);
    expect(classicMaxLowers(exact, { pageBytes: 4096 })).toBe(41);
    const over = partsOfLength(4096);
    expect(fitsPage(classicOptions(over), 4096)).toBe(false);
    expect(classicMaxLowers(over, { pageBytes: 4096 })).toBe(40);
  });

  it('counts escapes and multi-byte characters', () => {
    const parts = { lowers: ['/a,b', '/ü'], features: [] };
    // 'lowerdir=' 9 + '/a\,b' 5 + ':' 1 + '/ü' 3 + NUL 1 = 19
    expect(classicMaxLowers(parts, { pageBytes: 19 })).toBe(2);
    expect(classicMaxLowers(parts, { pageBytes: 18 })).toBe(1);
    expect(classicMaxLowers(parts, { pageBytes: 14 })).toBe(0);
  });

  it('charges the data lower and caps at the kernel limit', () => {
    const parts = { lowers: ['/a'], dataLower: '/dd', features: [] };
    // 'lowerdir=/a::/dd' is 16 bytes + NUL
    expect(classicMaxLowers(parts, { pageBytes: 17 })).toBe(1);
    expect(classicMaxLowers(parts, { pageBytes: 16 })).toBe(0);
    const many = { lowers: Array.from({ length: 600 }, (_, i) => String(i)), features: [] };
    expect(classicMaxLowers(many, { pageBytes: 1 << 20 })).toBe(500);
    expect(classicMaxLowers(many, { pageBytes: 1 << 20, limit: 7 })).toBe(7);
  });

  it('is the largest prefix whose option string fits (property)', () => {
    const segment = fc.stringMatching(/^[a-z,:\\ü]{1,12}$/);
    fc.assert(
      fc.property(
        fc.array(segment, { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 10, max: 300 }),
        (names, pageBytes) => {
          const parts = {
            lowers: names.map((n) => `/${n}`),
            upper: '/u',
            work: '/w',
            features: [],
          };
          const k = classicMaxLowers(parts, { pageBytes });
          const fits = (n: number): boolean =>
            fitsPage(classicOptions({ ...parts, lowers: parts.lowers.slice(0, n) }), pageBytes);
          if (k > 0) expect(fits(k)).toBe(true);
          if (k < parts.lowers.length) expect(fits(k + 1)).toBe(false);
        },
      ),
    );
  });
});

/** A strategy available here, with the kernel's limits unless told otherwise. */
const available = (
  extra: Partial<Overlay.StrategyCapability> = {},
): Overlay.StrategyCapability => ({
  available: true,
  maxLowers: 500,
  pageBytes: 4096,
  ...extra,
});

/** A machine where every strategy is available, unless told otherwise. */
const caps = (over: Partial<Overlay.Capabilities> = {}): Overlay.Capabilities => ({
  root: true,
  strategies: ['fsconfig', 'classic', 'relative'],
  fsconfig: available({ longPaths: true }),
  classic: available(),
  relative: available(),
  ...over,
});

describe('Overlay.plan', () => {
  const noFsconfig = { fsconfig: { available: false, maxLowers: 0, reason: 'old kernel' } };
  /** `n` lowers under a long common directory: classic fits few, relative fits many. */
  const deep = (n: number): string[] =>
    Array.from({ length: n }, (_, i) => `/srv/${'long-directory-name/'.repeat(4)}l${i}`);

  it('prefers fsconfig, then classic, then relative', async () => {
    const stack = { lowers: deep(3), upper: '/u', work: '/w', target: '/m' };
    expect((await Overlay.plan(stack, caps())).strategy).toBe('fsconfig');
    expect((await Overlay.plan(stack, caps(noFsconfig))).strategy).toBe('classic');
    const many = { ...stack, lowers: deep(200) };
    const plan = await Overlay.plan(many, caps(noFsconfig));
    expect(plan.strategy).toBe('relative');
    expect(plan.fits.map((f) => [f.strategy, f.maxLowers])).toEqual([
      ['fsconfig', 0],
      ['classic', 45],
      ['relative', 200],
    ]);
  });

  it('reports how many fit when nothing fits everything', async () => {
    const plan = await Overlay.plan({ lowers: deep(501), target: '/m' }, caps());
    expect(plan.strategy).toBeUndefined();
    expect(plan.fits.map((f) => [f.strategy, f.maxLowers, f.problem?.kind])).toEqual([
      ['fsconfig', 500, 'too-many-lowers'],
      ['classic', 45, 'too-many-lowers'],
      ['relative', 500, 'too-many-lowers'],
    ]);
  });

  it('strategyFor names the strategy plan picks, or none', async () => {
    const old = caps({ fsconfig: available({ longPaths: false }) });
    const long = `/srv/${'x'.repeat(300)}`;
    const cases: Array<[Overlay.MountOptions, Overlay.Capabilities]> = [
      [{ lowers: deep(3), upper: '/u', work: '/w', target: '/m' }, caps()],
      [{ lowers: deep(3), target: '/m' }, caps(noFsconfig)],
      [{ lowers: deep(200), target: '/m' }, caps(noFsconfig)],
      [{ lowers: deep(501), target: '/m' }, caps()],
      [{ lowers: ['/a', long], target: '/m' }, old],
      [{ lowers: ['/a"b', '/c'], target: '/m' }, caps({ ...noFsconfig, root: false })],
      [{ lowers: ['/only'], target: '/m' }, caps(noFsconfig)],
    ];
    const picked = [];
    for (const [stack, c] of cases) {
      const strategy = await Overlay.strategyFor(stack, c);
      expect(strategy).toBe((await Overlay.plan(stack, c)).strategy);
      picked.push(strategy);
    }
    expect(picked).toEqual([
      'fsconfig',
      'classic',
      'relative',
      undefined,
      'classic',
      undefined,
      'classic',
    ]);
  });

  it('de-duplicates before counting', async () => {
    const lowers = [...deep(2), ...deep(2)];
    expect((await Overlay.plan({ lowers, target: '/m' }, caps())).lowers).toEqual(deep(2));
  });

  it('needs fds for paths over 255 bytes with fsconfig', async () => {
    const long = `/srv/${'x'.repeat(300)}`;
    const stack = { lowers: ['/a', long], target: '/m' };
    expect((await Overlay.plan(stack, caps())).strategy).toBe('fsconfig');
    const old = caps({ fsconfig: available({ longPaths: false }) });
    const plan = await Overlay.plan(stack, old);
    expect(plan.fits[0]?.problem).toMatchObject({ kind: 'bad-path', path: long });
    expect(plan.strategy).toBe('classic');
  });

  it('keeps paths with a double quote away from mount(8)', async () => {
    const stack = { lowers: ['/a"b', '/c'], target: '/m' };
    const plan = await Overlay.plan(stack, caps(noFsconfig));
    expect(plan.strategy).toBe('classic'); // a direct mount(2) as root
    expect(plan.fits[2]?.problem).toMatchObject({ kind: 'bad-path', path: '/a"b' });
    const user = await Overlay.plan(stack, caps({ ...noFsconfig, root: false }));
    expect(user.strategy).toBeUndefined();
  });

  it('keeps paths ending in a comma away from mount(8)', async () => {
    // libmount mangles `upperdir=/u\,,workdir=...`; fsconfig and mount(2) do not.
    const stack = { lowers: ['/a', '/c'], upper: '/u,', work: '/w', target: '/m' };
    const plan = await Overlay.plan(stack, caps(noFsconfig));
    expect(plan.strategy).toBe('classic');
    expect(plan.fits[2]?.problem).toMatchObject({ kind: 'bad-path', path: '/u,' });
    expect(plan.fits[2]?.problem?.message).toMatch(/trailing ','/);
    const user = await Overlay.plan(stack, caps({ ...noFsconfig, root: false }));
    expect(user.strategy).toBeUndefined();
    // Inside a path a comma is escaped and passes.
    const inside = await Overlay.plan({ ...stack, upper: '/u,v' }, caps(noFsconfig));
    expect(inside.fits[2]?.problem).toBeUndefined();
  });

  it('plans a data-only lower for a single read-only lower', async () => {
    const plan = await Overlay.plan({ lowers: ['/only'], target: '/m' }, caps(noFsconfig));
    expect(plan.strategy).toBe('classic');
    // lowerdir=/only::{tmpdir}/day11-ovl-data-XXXXXX plus the defaults, and the NUL
    const cost = `lowerdir=/only::${join(tmpdir(), 'day11-ovl-data-XXXXXX')}${DEFAULTS}`.length + 1;
    const tight = caps({ ...noFsconfig, classic: available({ pageBytes: cost }) });
    expect(
      (await Overlay.plan({ lowers: ['/only'], target: '/m' }, tight)).fits[1]?.maxLowers,
    ).toBe(1);
    const tighter = caps({ ...noFsconfig, classic: available({ pageBytes: cost - 1 }) });
    expect(
      (await Overlay.plan({ lowers: ['/only'], target: '/m' }, tighter)).fits[1]?.maxLowers,
    ).toBe(0);
  });

  it('validates requests', async () => {
    const reject = (opts: unknown): Promise<unknown> =>
      Overlay.plan(opts as Overlay.MountOptions, caps()).catch((e: unknown) => e);
    expect(await reject({ lowers: [], target: '/m' })).toMatchObject({
      code: ContainerCodes.BAD_ARGUMENT,
    });
    expect(await reject({ lowers: ['/a'], upper: '/u', target: '/m' })).toMatchObject({
      code: ContainerCodes.BAD_ARGUMENT,
    });
    expect(await reject({ lowers: ['/a\0b'], target: '/m' })).toMatchObject({
      code: ContainerCodes.BAD_PATH,
      path: '/a\0b',
    });
    expect(
      await reject({ lowers: ['/a'], target: '/m', options: { workdir: '/x' } }),
    ).toMatchObject({ code: ContainerCodes.BAD_ARGUMENT });
  });
});

describe('TooManyLowersError', () => {
  it('carries maxLowers (the best strategy) and says what to merge', () => {
    const err = new Overlay.TooManyLowersError({
      target: '/m',
      requested: 501,
      fits: [
        { strategy: 'fsconfig', maxLowers: 500, problem: undefined },
        { strategy: 'classic', maxLowers: 45, problem: undefined },
      ],
    });
    expect(err).toMatchObject({
      code: ContainerCodes.TOO_MANY_LOWERS,
      maxLowers: 500,
      requested: 501,
    });
    expect(err.message).toMatch(
      /501 lower layers on \/m: at most 500 fit \(fsconfig: 500, classic: 45\)/,
    );
    expect(err.hint).toMatch(/Merge the deepest 2 lowers .* below the other 499 \(Overlay\.fit/);
    expect(`${err.message} ${err.hint}`).not.toMatch(/Stack\.|@day11\/layer/);
  });
});

describe('Overlay.fit', () => {
  const off = { available: false, maxLowers: 0, reason: 'not here' };
  const none = { fsconfig: off, classic: off, relative: off, strategies: [] };
  const fsconfig5 = caps({
    ...none,
    strategies: ['fsconfig'],
    fsconfig: available({ maxLowers: 5, longPaths: true }),
  });
  const run = { upper: '/r/upper', work: '/r/work', target: '/r/merged', mergedLower: '/r/lower' };
  const layers = (n: number, dir = '/c'): string[] =>
    Array.from({ length: n }, (_, i) => `${dir}/build-${String(i).padStart(12, '0')}/fs`);

  it('keeps every lower separate when the stack fits', async () => {
    expect(await Overlay.fit({ ...run, lowers: layers(5) }, fsconfig5)).toBe(5);
  });

  it('past the limit, keeps as many as fit beside the merged lower', async () => {
    expect(await Overlay.fit({ ...run, lowers: layers(8) }, fsconfig5)).toBe(4);
    expect(await Overlay.fit({ ...run, lowers: layers(500) }, fsconfig5)).toBe(4);
  });

  it("counts the merged lower's own bytes on a page-limited strategy", async () => {
    const classic = caps({ ...none, strategies: ['classic'], classic: available() });
    const lowers = layers(200, `/c/${'x'.repeat(40)}`);
    const mergedLower = `/${'m'.repeat(300)}/lower`;
    const keep = await Overlay.fit({ ...run, mergedLower, lowers }, classic);
    expect(keep).toBeGreaterThan(0);
    expect(keep).toBeLessThan(lowers.length);
    const mounted = (n: number) => [...lowers.slice(0, n), mergedLower];
    const planOf = (n: number) => Overlay.plan({ ...run, lowers: mounted(n) }, classic);
    expect((await planOf(keep)).strategy).toBe('classic');
    expect((await planOf(keep + 1)).strategy).toBeUndefined();
  });

  it('leaves the stack alone when merging cannot help: the mount says why', async () => {
    expect(await Overlay.fit({ ...run, lowers: layers(3) }, caps(none))).toBe(3);
  });

  it('validates like mount', async () => {
    await expect(Overlay.fit({ ...run, lowers: [] }, fsconfig5)).rejects.toMatchObject({
      code: ContainerCodes.BAD_ARGUMENT,
    });
  });
});
