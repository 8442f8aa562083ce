// `npm run containerd2:build [-- --force]`: builds (or confirms) the cached containerd 2.x test binaries.
import { ensureContainerd2Binaries } from './binaries.ts';

await ensureContainerd2Binaries({ strict: true, force: process.argv.includes('--force') });
