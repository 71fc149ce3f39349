/**
 * `@day11/testing`: what the workspace's tests and benchmarks share to stand
 * up real services (never published; a devDependency only).
 */
export { DockerRegistry, DOCKER_REGISTRY, haveDockerRegistry } from './docker-registry.js';
