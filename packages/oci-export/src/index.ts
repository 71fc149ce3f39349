/**
 * `@day11/oci-export`: deterministic multi-layer OCI image layouts from day11
 * layers, one blob per layer, shared between the images of a layout.
 *
 * @example
 * ```ts
 * import { exportImage, Layout } from '@day11/oci-export';
 * const { manifestDigest } = await exportImage({ layout: '/tmp/oci', tag: 'hello.1.0', base, layers });
 * console.log(await Layout.tags('/tmp/oci'), await Layout.verify('/tmp/oci'));
 * ```
 */
export {
  exportImage,
  imageConfig,
  type ConfigOptions,
  type ExportOptions,
  type ExportProgress,
  type ExportResult,
  type ExportedLayer,
} from './export.js';
export * as Layout from './layout.js';
export * as SquashPlan from './squash-plan.js';
export * as SquashLayer from './squash-layer.js';
export * as SquashValue from './squash-value.js';
export { DOCKER_MAX_LAYERS } from './squash-plan.js';
export { LAYERS_ANNOTATION } from './squash-value.js';
export type { SquashOptions, SquashProgress } from './squash.js';
export * as LayerBlob from './layer-blob.js';
export * as Tar from './tar.js';
export {
  MediaTypes,
  REF_NAME,
  assertTag,
  defaultArchitecture,
  type Descriptor,
  type ImageConfigInput,
  type OciIndex,
  type OciManifest,
} from './oci.js';
export { Semaphore, mapLimit } from './pool.js';
export type { WalkWarning } from './walk.js';
export type { GcResult, Problem, RecoverResult, TagInfo } from './layout.js';
export { OciExportCodes, OciExportError, type OciExportCode } from './errors.js';
