// Finding a runtime daemon to signal. A pid from a pidfile is trusted only when /proc says the
// process has the expected name: in a pod without hostPID the same number is someone else.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { readTextOrNull } from './node-files.ts';

async function commOf(pid: number, procRoot: string): Promise<string | undefined> {
  return (await readTextOrNull(`${procRoot}/${pid}/comm`))?.trim();
}

export type ProcessLookup =
  | { found: true; pid: number; via: string }
  | { found: false; reason: string };

/**
 * The daemon named `comm`: from the first pidfile whose pid is such a process, else (when `scan`)
 * the only such process in /proc that `isNodes` accepts (one in a container, such as docker:dind
 * in a CI pod, is not the node's).
 */
export async function findDaemon(comm: string, pidFiles: string[], scan: boolean, procRoot = '/proc', isNodes: (pid: number) => Promise<boolean> = async () => true): Promise<ProcessLookup> {
  for (const file of pidFiles) {
    const text = (await readTextOrNull(file))?.trim();
    if (!text || !/^\d+$/.test(text)) continue;
    const pid = Number(text);
    if ((await commOf(pid, procRoot)) === comm) return { found: true, pid, via: file };
  }
  if (!scan) return { found: false, reason: `no ${comm} process at the pid in ${pidFiles.join(', ')}` };
  let entries: string[];
  try {
    entries = await readdir(procRoot);
  } catch {
    return { found: false, reason: `${procRoot} is not readable` };
  }
  const matches: number[] = [];
  let others = 0;
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    if ((await commOf(Number(entry), procRoot)) !== comm) continue;
    if (await isNodes(Number(entry))) matches.push(Number(entry));
    else others++;
  }
  if (matches.length === 1) return { found: true, pid: matches[0]!, via: procRoot };
  if (matches.length > 1) return { found: false, reason: `${matches.length} ${comm} processes and no pidfile (${pidFiles.join(', ')}) names one` };
  const ignored = others > 0 ? `; ${others} ${comm} process${others > 1 ? 'es' : ''} of containers ignored` : '';
  return { found: false, reason: `no ${comm} process of the node visible (pidfile ${pidFiles.join(', ') || 'none'}; the DaemonSet needs hostPID${ignored})` };
}

/** The process's arguments (argv[0] first) from /proc/<pid>/cmdline; undefined when it is gone. */
export async function commandLine(pid: number, procRoot = '/proc'): Promise<string[] | undefined> {
  const raw = await readTextOrNull(`${procRoot}/${pid}/cmdline`);
  return raw === null ? undefined : raw.replace(/\0$/, '').split('\0');
}

/**
 * `pid@start time` (field 22 of /proc/<pid>/stat, counted after the parenthesised name): a
 * process restarted under the same pid is another one. undefined when it is gone.
 */
export async function processIdentity(pid: number, procRoot = '/proc'): Promise<string | undefined> {
  const stat = await readTextOrNull(`${procRoot}/${pid}/stat`);
  const fields = stat?.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields?.[19] ? `${pid}@${fields[19]}` : undefined;
}

/** `file` as the process sees it (its root, or its working directory for a relative path), through /proc. */
export function pathSeenBy(pid: number, file: string, procRoot = '/proc'): string {
  return path.isAbsolute(file) ? path.join(procRoot, String(pid), 'root', file) : path.join(procRoot, String(pid), 'cwd', file);
}
