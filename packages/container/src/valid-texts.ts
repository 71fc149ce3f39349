/**
 * JSON texts already validated against a schema, remembered so the same
 * value is not validated again: a builder makes and instantiates the same
 * few specs step after step, and zod costs far more than the
 * `JSON.stringify` that recognises them. A text, not an object, is the key,
 * so a value changed after it was validated is validated again.
 */
export class ValidTexts {
  private readonly texts = new Set<string>();

  constructor(private readonly max = 64) {}

  has(text: string | undefined): text is string {
    return text !== undefined && this.texts.has(text);
  }

  add(text: string | undefined): void {
    if (text === undefined) return;
    if (this.texts.size >= this.max) this.texts.clear();
    this.texts.add(text);
  }
}

/** The JSON text of `value`, or undefined when it cannot have one (a cycle, a BigInt). */
export function jsonOf(value: unknown): string | undefined {
  try {
    return JSON.stringify(value);
  } catch {
    return undefined; // validation will say what is wrong
  }
}

/**
 * The JSON text of `value` when JSON says all of it: plain objects, arrays,
 * strings, finite numbers, booleans, null and absent (undefined) members.
 * Undefined for anything JSON would drop or change (a function, a symbol,
 * a class instance, `toJSON`, NaN): such a value is not the same as the
 * text, so a remembered verdict on the text must not stand for it.
 */
export function plainJsonOf(value: unknown): string | undefined {
  try {
    return JSON.stringify(value, function (this: Record<string, unknown>, key, v: unknown) {
      const raw = this[key];
      if (raw === undefined || raw === null) return v;
      switch (typeof raw) {
        case 'string':
        case 'boolean':
          return v;
        case 'number':
          if (Number.isFinite(raw)) return v;
          break;
        case 'object': {
          // A plain object's own `toJSON` would put its result in the text, not the object.
          const proto: unknown = Object.getPrototypeOf(raw);
          const plain = proto === Object.prototype || proto === null;
          if (Array.isArray(raw) || (plain && !('toJSON' in raw))) return v;
        }
      }
      throw new TypeError('not plain JSON');
    });
  } catch {
    return undefined;
  }
}
