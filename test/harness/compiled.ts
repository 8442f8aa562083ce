// regmirror as its image runs it: the programs compiled with tsconfig.build.json into a temporary
// directory, with package.json, node_modules and the launcher (bin/regmirror.sh) beside them, the
// same layout as /app in the image. The benchmark measures this, not the TypeScript sources.
import { copyFile, symlink } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, runCommand } from './process.ts';

const REPO_ROOT = path.resolve(import.meta.dirname, '../..');

/** The environment to run the launcher in: it runs `node` from PATH, so this Node comes first, as in npm scripts. */
export function launcherEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` };
}

/** Builds the tree and returns the path of its launcher, `<dir>/bin/regmirror.sh`. */
export async function buildCompiled(): Promise<string> {
  const dir = await makeTempDir('compiled');
  const tsc = path.join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
  const built = await runCommand(process.execPath, [tsc, '-p', path.join(REPO_ROOT, 'tsconfig.build.json'), '--outDir', dir], { timeoutMs: 120_000 });
  if (built.code !== 0) throw new Error(`tsc -p tsconfig.build.json failed (${built.code}):\n${built.stdout}${built.stderr}`);
  await copyFile(path.join(REPO_ROOT, 'package.json'), path.join(dir, 'package.json'));
  await symlink(path.join(REPO_ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  const launcher = path.join(dir, 'bin/regmirror.sh');
  await copyFile(path.join(REPO_ROOT, 'bin/regmirror.sh'), launcher);
  return launcher;
}
