// The one layer that touches the node's disk: reads that treat "absent" as a value, and writes
// that are atomic (temp file in the same directory, fsync, rename) and keep mode and owner.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chown, lstat, mkdir, open, readFile, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { processExists } from '../common/process-exists.ts';
// for the symbolic-link helpers
import { readlink, realpath } from 'node:fs/promises';

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

/** Runs `op` on a path: true when it did, false when the path is not there. */
async function unlessAbsent(op: () => Promise<unknown>): Promise<boolean> {
  try {
    await op();
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

export async function exists(file: string): Promise<boolean> {
  return unlessAbsent(() => stat(file));
}

export async function isDirectory(dir: string): Promise<boolean> {
  try {
    return (await stat(dir)).isDirectory();
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

/** Is `file` a symbolic link (whether or not what it names is there)? */
export async function isSymbolicLink(file: string): Promise<boolean> {
  const info = await lstat(file).catch((error: unknown) => {
    if (isNotFound(error)) return undefined;
    throw error;
  });
  return info?.isSymbolicLink() ?? false;
}

/**
 * Where reads and writes of `file` go so that a symbolic link stays one (configuration
 * management often keeps the real file elsewhere): the file the link resolves to, through any
 * chain of links, or `file` itself when it is no link or does not exist. A link to nothing is an
 * error: a write would replace the link, or make a file nothing reads.
 */
export async function linkTarget(file: string): Promise<string> {
  if (!(await isSymbolicLink(file))) return file;
  try {
    return await realpath(file);
  } catch (error) {
    if (!isNotFound(error)) throw error;
    throw new Error(`${file} is a symbolic link to ${await readlink(file)}, which is not there as the agent sees it; left untouched, since writing would replace the link (if it is there on the node, mount its directory into the agent's pod at the path the link names)`);
  }
}

/**
 * `dev:ino` of what `file` names (links followed), to tell whether two paths are one file; undefined
 * when it cannot be looked at, for whatever reason (absent, or another process's root closed to us).
 */
export async function fileIdentity(file: string): Promise<string | undefined> {
  return stat(file).then((info) => `${info.dev}:${info.ino}`, () => undefined);
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

/** The directories in `dir`, a symlink to a directory among them; none when `dir` is absent. */
export async function subdirectories(dir: string): Promise<string[]> {
  const names: string[] = [];
  for (const name of await listDir(dir)) {
    if (await isDirectory(path.join(dir, name))) names.push(name);
  }
  return names;
}

// A temp file (or directory, see ensureDir) is `.<name>.regmirror-<pid>-<8 hex>` beside `<name>`:
// the leading dot keeps every runtime from reading it as configuration, the suffix keeps two
// writers apart and names the process that wrote it.
const TEMP_NAME = /^\..+\.regmirror-(\d+)-[0-9a-f]{8}$/;

function tempPath(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.regmirror-${process.pid}-${randomBytes(4).toString('hex')}`);
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
  for (let attempt = 1; ; attempt++) {
    const temp = tempPath(file);
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
      return;
    } catch (error) {
      await rm(temp, { force: true });
      // the temp file went before the rename: another agent took it for a killed write's (see
      // removeStaleTempFiles, which cannot see a writer in another pod); write it again
      if (isNotFound(error) && attempt < 3 && (await isDirectory(dir))) continue;
      throw error;
    }
  }
}

/** In every directory the agent makes: says it made it, so removal takes that directory, and no other. */
export const CREATED_DIR_MARKER = '.regmirror-created';
const MARKER_TEXT = 'regmirror node-agent made this directory: it goes with the agent\'s files once nothing else is in it.\n';

/**
 * Makes `dir` (and its parents) when it is not there, marked as the agent's with
 * CREATED_DIR_MARKER: removal takes only directories the agent made, never one that was there
 * before, empty or not. The directory is made under a temp name with the marker in it and then
 * renamed into place, so a kill cannot leave it unmarked. True when made.
 */
export async function ensureDir(dir: string): Promise<boolean> {
  if (await isDirectory(dir)) return false;
  await mkdir(path.dirname(dir), { recursive: true });
  const temp = tempPath(dir);
  try {
    await mkdir(temp);
    await writeFile(path.join(temp, CREATED_DIR_MARKER), MARKER_TEXT, { mode: 0o644 });
    await rename(temp, dir);
  } catch (error) {
    await rm(temp, { recursive: true, force: true });
    if (await isDirectory(dir)) return false; // made meanwhile by someone else: not the agent's
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new Error(`cannot make directory ${dir} (${code}): the agent needs to write in ${path.dirname(dir)}, and ${dir} must be a directory or absent`, { cause: error });
  }
  return true;
}

/**
 * Marks `dir` as the agent's when it has no marker and holds nothing but `ours` (files an agent
 * from before the markers wrote, in a directory it made and did not mark): removal then takes it
 * as it did then. True when marked.
 */
export async function adoptUnmarkedDir(dir: string, ours: string[]): Promise<boolean> {
  const entries = await listDir(dir);
  if (entries.length === 0 || entries.includes(CREATED_DIR_MARKER) || !entries.every((name) => ours.includes(name))) return false;
  await writeFile(path.join(dir, CREATED_DIR_MARKER), MARKER_TEXT, { mode: 0o644 });
  return true;
}

/**
 * Removes a directory the agent made (ensureDir) once nothing but its marker is in it. A
 * directory without the marker (there before the agent came, or a symlink to one) stays.
 * True when removed.
 */
export async function removeCreatedDirIfEmpty(dir: string): Promise<boolean> {
  try {
    if (!(await lstat(dir)).isDirectory()) return false;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
  const entries = await readdir(dir);
  if (entries.length !== 1 || entries[0] !== CREATED_DIR_MARKER) return false;
  await removeFile(path.join(dir, CREATED_DIR_MARKER));
  try {
    await rmdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
    // something arrived meanwhile: the directory stays, still marked as the agent's
    await writeFile(path.join(dir, CREATED_DIR_MARKER), MARKER_TEXT, { mode: 0o644 });
    return false;
  }
  return true;
}

/** A write takes milliseconds: a temp file this old is abandoned, whoever wrote it. */
const ABANDONED_AFTER_MS = 60_000;

/**
 * Whether the process that wrote a temp file is done with it. Call it only while this process has
 * no write under way (between passes, which never overlap): a file named with this process's pid
 * is then a previous process's (a restarted container's agent often gets the same pid again). A
 * pid no process has here is a killed writer's, or one in another pod's pid namespace, which
 * writeFileAtomic's retry covers. A live process's file is abandoned once older than a write takes.
 */
function writerDone(pid: number, mtimeMs: number): boolean {
  if (pid === process.pid || Date.now() - mtimeMs > ABANDONED_AFTER_MS) return true;
  return pid > 0 && !processExists(pid);
}

/**
 * Removes the temp files (and ensureDir's temp directories) that a killed write left in `dir`:
 * the file a pass was writing, credentials and all, would otherwise stay for good, and keep its
 * directory from being removed. Returns what it removed.
 */
export async function removeStaleTempFiles(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await listDir(dir)) {
    const match = TEMP_NAME.exec(name);
    if (!match) continue;
    const file = path.join(dir, name);
    const st = await lstat(file).catch(() => undefined);
    if (!st || !writerDone(Number(match[1]), st.mtimeMs)) continue;
    if (st.isDirectory()) {
      // ensureDir's, with nothing in it but the marker
      if ((await readdir(file)).some((entry) => entry !== CREATED_DIR_MARKER)) continue;
      await rm(file, { recursive: true, force: true });
    } else if (st.isFile()) {
      await rm(file, { force: true });
    } else {
      continue;
    }
    removed.push(file);
  }
  return removed;
}

export async function removeFile(file: string): Promise<boolean> {
  return unlessAbsent(() => rm(file));
}

/** Moves `from` over `to` atomically (same directory): restores a backup byte for byte. */
export async function moveFile(from: string, to: string): Promise<void> {
  await rename(from, to);
}
