/** Per-phase timing of a run, as `[phase, seconds]` pairs (the `timing` of `layer.json`). */

/**
 * The phases of `runInLayers`, in the order they run.
 *
 * @example
 * ```ts
 * const seconds = Object.fromEntries(timing); // timing from runInLayers
 * for (const phase of PHASES) console.log(phase, seconds[phase]);
 * ```
 */
export const PHASES = [
  'mkdirs',
  'touch',
  'plan',
  'merge',
  'prep_upper',
  'overlay_mount',
  'slot_wait',
  'runc_run',
  'overlay_umount',
  'cleanup',
  'total',
] as const;

/**
 * One phase of `runInLayers`.
 *
 * @example
 * ```ts
 * const slow: Phase = 'merge';
 * ```
 */
export type Phase = (typeof PHASES)[number];

/**
 * `[phase, seconds]` for every phase, in {@link PHASES} order; a skipped
 * phase has 0. It is a `Timing` of `@day11/layer`, for `layer.json`.
 *
 * @example
 * ```ts
 * await Commit.commit({ osDir, hash, upper, meta: { ...meta, timing } });
 * ```
 */
export type PhaseTiming = Array<[Phase, number]>;

/**
 * Accumulates the time spent in each phase.
 *
 * @example
 * ```ts
 * const clock = new PhaseClock();
 * await clock.time('mkdirs', () => mkdir(dir));
 * clock.timing(); // [['mkdirs', 0.0003], ['touch', 0], ..., ['total', 0.0004]]
 * ```
 */
export class PhaseClock {
  private readonly started = performance.now();
  private readonly seconds = new Map<Phase, number>();

  /** Runs `fn`, adding its duration (also when it throws) to `phase`. */
  async time<T>(phase: Phase, fn: () => Promise<T> | T): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.add(phase, (performance.now() - t0) / 1000);
    }
  }

  /** Adds `seconds` to `phase`. */
  add(phase: Phase, seconds: number): void {
    this.seconds.set(phase, (this.seconds.get(phase) ?? 0) + seconds);
  }

  /** Every phase in order, `total` being the time since the clock was made. */
  timing(): PhaseTiming {
    const total = (performance.now() - this.started) / 1000;
    return PHASES.map((p) => [p, p === 'total' ? total : (this.seconds.get(p) ?? 0)]);
  }
}
