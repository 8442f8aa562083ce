#!/usr/bin/env node
// One executable, three programs; each lives in its own folder and exports main(argv).
import { ConfigError } from '../common/config-error.ts';

const PROGRAMS: Record<string, () => Promise<{ main(argv: string[]): Promise<void> }>> = {
  mirror: () => import('../mirror/main.ts'),
  operator: () => import('../operator/main.ts'),
  'node-agent': () => import('../node-agent/main.ts'),
};

const USAGE = `usage: regmirror <program> [flags]

programs:
  mirror      OCI pull-through cache       (regmirror mirror [--config FILE])
  operator    RegistryMirror reconciler    (regmirror operator --help)
  node-agent  runtime configuration writer (regmirror node-agent --help)
`;

const [program, ...argv] = process.argv.slice(2);
const load = program ? PROGRAMS[program] : undefined;
if (!load) {
  process.stderr.write(program && program !== '--help' && program !== '-h' ? `unknown program: ${program}\n\n${USAGE}` : USAGE);
  process.exit(program === '--help' || program === '-h' ? 0 : 2);
}

try {
  const module = await load();
  await module.main(argv);
} catch (error) {
  if (error instanceof ConfigError) {
    process.stderr.write(`regmirror ${program}: configuration error: ${error.message}\n`);
    process.exit(2);
  }
  throw error;
}
