/** Types shared across `@day11/layer`. */

/**
 * The base layer at the bottom of every overlay stack: a root filesystem
 * imported by `Import`.
 * `dir` is the layer directory; its root filesystem is `dir/fs`.
 */
export interface Base {
  /** Hash of the base, from `Hash.baseHash({ image })`. */
  hash: string;
  /** The layer directory, `{osDir}/build-{hash[:12]}`. */
  dir: string;
  /** The image the base came from (a tarball path, a directory, a Docker image name). */
  image: string;
}
