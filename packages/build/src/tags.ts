/**
 * Image tags of a plan's steps. A step id may be any package name
 * (`libstdc++6`, `ocaml-base-compiler.5.2.0~rc1`, `pkg+dfsg`); the tag of
 * its exported image must satisfy both OCI grammars — the image layout's
 * `org.opencontainers.image.ref.name` and the distribution spec's tags — so
 * it is `tag` when the step gives one, else derived from the id by
 * {@link deriveTag}. Every tag is checked, and collisions refused, when the
 * plan is read: never after the build.
 */
import type { StepInput } from './plan.js';

/** Most characters in a tag (the distribution spec's limit). */
export const MAX_TAG_LENGTH = 128;

/**
 * Components of letters and digits joined by one `.`, `_`, `-` or `--`: what
 * both OCI grammars accept (no `/`, `:`, `@` or `+`, which the distribution
 * spec refuses in tags).
 */
const TAG_RE = /^[A-Za-z0-9]+(?:(?:[._-]|--)[A-Za-z0-9]+)*$/;

/**
 * Whether `tag` is a valid image tag for a step.
 *
 * @example
 * ```ts
 * isValidTag('ocaml-base-compiler.5.2.0-rc1'); // true
 * isValidTag('a__b'); // false
 * ```
 */
export function isValidTag(tag: string): boolean {
  return tag.length <= MAX_TAG_LENGTH && TAG_RE.test(tag);
}

/**
 * The tag of a step that gives none, by one rule: `+` becomes `p` (`g++` →
 * `gpp`, `libstdc++6` → `libstdcpp6`); `~` and every other character that
 * is not a letter, digit, `.`, `_` or `-` becomes `-`; a run of those
 * separators becomes its first character; separators at either end are
 * dropped; the result is cut to 128 characters (and trimmed again). The
 * result may be empty (an id of only punctuation): such a step needs a `tag`.
 *
 * @example
 * ```ts
 * deriveTag('ocaml-base-compiler.5.2.0~rc1'); // 'ocaml-base-compiler.5.2.0-rc1'
 * deriveTag('pkg+dfsg'); // 'pkgpdfsg'
 * deriveTag('a__b'); // 'a_b'
 * ```
 */
export function deriveTag(id: string): string {
  const mapped = id.replace(/\+/g, 'p').replace(/[^A-Za-z0-9._-]/g, '-');
  const collapsed = mapped.replace(/([._-])[._-]+/g, '$1');
  return trimSeparators(trimSeparators(collapsed).slice(0, MAX_TAG_LENGTH));
}

function trimSeparators(s: string): string {
  return s.replace(/^[._-]+|[._-]+$/g, '');
}

/**
 * Each step's tag, in plan order: its `tag` (checked) or {@link deriveTag}
 * of its id. Calls `fail` for an invalid tag or two steps with one tag.
 *
 * @example
 * ```ts
 * assignTags([{ id: 'g++' }, { id: 'gcc', tag: 'gcc-12' }], fail); // ['gpp', 'gcc-12']
 * ```
 */
export function assignTags(
  steps: readonly Pick<StepInput, 'id' | 'tag'>[],
  fail: (why: string, hint?: string) => never,
): string[] {
  const owner = new Map<string, string>();
  return steps.map((step) => {
    const tag = step.tag ?? deriveTag(step.id);
    if (!isValidTag(tag)) {
      if (step.tag !== undefined) {
        fail(
          `step ${JSON.stringify(step.id)}: tag ${JSON.stringify(step.tag)} is not a valid image tag`,
          'A tag is at most 128 letters and digits in groups joined by one ".", "_", "-" or "--", e.g. "libstdcpp6" or "ocaml.5.2.0"',
        );
      }
      fail(
        `step ${JSON.stringify(step.id)}: its id gives no usable image tag`,
        'Give the step a "tag" (letters and digits joined by ".", "_" or "-")',
      );
    }
    const other = owner.get(tag);
    if (other !== undefined) {
      fail(
        `steps ${JSON.stringify(other)} and ${JSON.stringify(step.id)} would both be exported as the tag ${JSON.stringify(tag)}`,
        'Give one of them its own "tag" in the plan (tags are derived from ids by one rule: see `day11 build --help`)',
      );
    }
    owner.set(tag, step.id);
    return tag;
  });
}
