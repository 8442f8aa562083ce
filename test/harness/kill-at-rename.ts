// Preloaded with `node --import`: the process SIGKILLs itself instead of making its Nth rename()
// onto a path that ends with $REGMIRROR_TEST_KILL_AT_RENAME ($REGMIRROR_TEST_KILL_NTH, default 1),
// as an agent killed at that moment (OOM, eviction, node shutdown) would be. The file the rename
// would have put in place stays behind as the temp file it was. Without the variable it does nothing.
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

const suffix = process.env.REGMIRROR_TEST_KILL_AT_RENAME;
if (suffix) {
  const nth = Number(process.env.REGMIRROR_TEST_KILL_NTH ?? '1');
  const rename = fs.promises.rename;
  let seen = 0;
  fs.promises.rename = async (from, to) => {
    if (String(to).endsWith(suffix) && ++seen === nth) process.kill(process.pid, 'SIGKILL');
    return rename(from, to);
  };
  // `import { rename } from 'node:fs/promises'` in the program sees the replacement too
  syncBuiltinESMExports();
}

/** The `node` arguments that load this file. */
export const KILL_AT_RENAME_IMPORT = ['--import', new URL(import.meta.url).pathname];
