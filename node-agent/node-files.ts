// The one layer that touches the node's disk: reads that treat "absent" as a value, and writes
// that are atomic (temp file in the same directory, fsync, rename) and keep mode and owner.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chown, mkdir, open, readFile, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';

function isNotFound(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export async function readFileOrNull(file: string): Promise<Buffer | null> {
  try {
    return await readFile(file);
  } catch (error) {
    if (isNotFound(error)) return null;
    throw error;
  }
}

export async function readTextOrNull(file: string): Promise<string | null> {
  const bytes = await readFileOrNull(file);
  return bytes === null ? null : bytes.toString('utf8');
}

export async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

export async function isDirectory(dir: string): Promise<boolean> {
  try {
    return (await stat(dir)).isDirectory();
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

/** Names of the entries in `dir`; none when it is absent or not a directory. */
export async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (error) {
    if (isNotFound(error)) return [];
    throw error;
  }
}

/**
 * Replaces `file` with `data` so that a reader sees the old or the new content, never a part.
 * With keepMode, an existing file keeps its permissions and owner; otherwise, and for a new file,
 * the file gets `mode`.
 */
export async function writeFileAtomic(file: string, data: string | Buffer, opts: { mode?: number; keepMode?: boolean } = {}): Promise<void> {
  const dir = path.dirname(file);
  await mkdir(dir, { recursive: true });
  let mode = opts.mode ?? 0o644;
  let owner: { uid: number; gid: number } | undefined;
  try {
    const before = await stat(file);
    owner = { uid: before.uid, gid: before.gid };
    if (opts.keepMode !== false) mode = before.mode & 0o7777;
  } catch (error) {
    if (!isNotFound(error)) throw error;
  }
  // A leading dot and a unique suffix: no runtime reads it as config, and two writers never collide.
  const temp = path.join(dir, `.${path.basename(file)}.regmirror-${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await handle.writeFile(data);
    await handle.chmod(mode); // open() applies the umask; the file's mode must not depend on it
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    if (owner && process.getuid?.() === 0) await chown(temp, owner.uid, owner.gid);
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

export async function removeFile(file: string): Promise<boolean> {
  try {
    await rm(file);
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

/** Removes an empty directory; leaves one with anything else in it. */
export async function removeDirIfEmpty(dir: string): Promise<void> {
  try {
    await rmdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
  }
}

/** Moves `from` over `to` atomically (same directory): restores a backup byte for byte. */
export async function moveFile(from: string, to: string): Promise<void> {
  await rename(from, to);
}
