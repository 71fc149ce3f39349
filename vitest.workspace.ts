// Vitest 4 ignores workspace files: this is the root config, and every script
// passes it explicitly with `--config vitest.workspace.ts`.
import { readdirSync } from 'node:fs';
import { configDefaults, defineConfig } from 'vitest/config';

// Integration tests need root, overlayfs and the OCI tools; they run only when
// asked for, and the README's test command and .ci/run always ask.
const integration = process.env['DAY11_INTEGRATION'] === 'true';
const exclude = integration
  ? configDefaults.exclude
  : [...configDefaults.exclude, 'src/**/*.integration.test.ts'];

const projects = [
  ...readdirSync('packages').map((name) => ({ name, root: `packages/${name}` })),
  { name: 'repo', root: 'scripts' },
  { name: 'reliability', root: 'reliability' },
];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: projects.map(({ name, root }) => ({
      extends: true,
      test: { name, root, include: ['src/**/*.test.ts'], exclude },
    })),
  },
});
