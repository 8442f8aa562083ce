// `npm run kube:build [-- --force]`: builds (or confirms) the cached Kubernetes test binaries.
import { ensureKubeBinaries } from './binaries.ts';

await ensureKubeBinaries({ strict: true, force: process.argv.includes('--force') });
