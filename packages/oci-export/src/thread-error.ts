/**
 * Errors across worker threads: a worker sends what the error says, the
 * parent rebuilds it as this package's error (the class does not survive
 * `postMessage`).
 */
import { Day11Error, messageOf } from '@day11/exec/errors';
import { OciExportCodes, OciExportError } from './errors.js';

/** An error as a worker sends it. */
export interface ThreadError {
  message: string;
  code: string | undefined;
  path: string | undefined;
  hint: string | undefined;
}

/**
 * What a worker sends for `err`.
 *
 * @example
 * ```ts
 * port.postMessage({ type: 'error', ...serializeError(err) });
 * ```
 */
export function serializeError(err: unknown): ThreadError {
  const known: Day11Error<string> | undefined = err instanceof Day11Error ? err : undefined;
  return { message: messageOf(err), code: known?.code, path: known?.path, hint: known?.hint };
}

/**
 * The error a worker sent, as an {@link OciExportError} (`OCI_READ_FAILED`
 * when it was not one of this package's).
 *
 * @example
 * ```ts
 * worker.on('message', (m) => m.type === 'error' && fail(rebuildError(m)));
 * ```
 */
export function rebuildError(m: ThreadError): OciExportError {
  const code = m.code?.startsWith('OCI_')
    ? (m.code as OciExportError['code'])
    : OciExportCodes.READ_FAILED;
  return new OciExportError(code, m.message, {
    path: m.path,
    hint: m.hint ?? 'Check that the layer is readable',
  });
}
