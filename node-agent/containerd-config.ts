// containerd's configuration as containerd loads it, for the check that its CRI reads hosts.toml:
// config.toml, then the files its `imports` name (and theirs), in containerd's order. Read only;
// containerd.ts merges what this returns.
import path from 'node:path';
import { parse } from 'smol-toml';
import { containerdConfigVersion, containerdImports, type ContainerdConfigFile } from './containerd.ts';
import { exists, isDirectory, listDir, readTextOrNull } from './node-files.ts';

export interface LoadedContainerdConfig {
  /** config.toml first, then every file it imports, in the order containerd merges them. */
  files: ContainerdConfigFile[];
  /** What keeps the agent from reading the configuration as containerd does, naming the file. */
  problems: string[];
}

/**
 * Where the agent reads a file a (host) config names. The pod sees the host's config directory at
 * --containerd-config's directory (the DaemonSet mounts /etc/containerd at /host/etc/containerd),
 * so an absolute path below it is read there: /etc/containerd/conf.d/*.toml at
 * /host/etc/containerd/conf.d/*.toml. A path outside it is read as named.
 */
export function pathAsMounted(named: string, configFile: string): string {
  const dir = path.dirname(configFile);
  const segments = dir.split('/').filter(Boolean);
  // the longest tail of the local directory that the named path lies under is the host's directory
  for (let i = 0; i < segments.length; i++) {
    const hostDir = `/${segments.slice(i).join('/')}`;
    if (named === hostDir || named.startsWith(`${hostDir}/`)) return dir + named.slice(hostDir.length);
  }
  return named;
}

// Go's filepath.Glob, which containerd uses: `*`, `?`, `[...]` classes and `\` escapes, matched one
// path element at a time; matches come sorted within each directory.
const GLOB_META = /[*?[\\]/;

class BadPattern extends Error {}

/** A RegExp for one path element of a Go glob pattern (path.Match); throws BadPattern as Go does. */
function globElement(pattern: string): RegExp {
  const literal = (c: string): string => c.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&');
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '\\') {
      if (++i >= pattern.length) throw new BadPattern();
      re += literal(pattern[i]!);
    } else if (c === '[') {
      let cls = '';
      if (pattern[i + 1] === '^') {
        cls = '^';
        i++;
      }
      const char = (): string => {
        let ch = pattern[++i];
        if (ch === undefined || ch === '-' || ch === ']') throw new BadPattern();
        if (ch === '\\') ch = pattern[++i];
        if (ch === undefined) throw new BadPattern();
        return literal(ch);
      };
      let ranges = 0;
      while (pattern[i + 1] !== ']' || ranges === 0) {
        const lo = char();
        cls += lo;
        if (pattern[i + 1] === '-') {
          i++;
          cls += `-${char()}`;
        }
        ranges++;
      }
      i++;
      re += `[${cls}]`;
    } else re += literal(c);
  }
  return new RegExp(`^${re}$`);
}

/** The leading directories of a glob pattern that hold no pattern characters. */
function fixedDirectory(pattern: string): string {
  const elements = pattern.split('/');
  const first = elements.findIndex((element) => GLOB_META.test(element));
  return elements.slice(0, first).join('/') || '/';
}

const within = (file: string, dir: string): boolean => file === dir || file.startsWith(`${dir}/`);

async function glob(pattern: string): Promise<string[]> {
  if (!GLOB_META.test(pattern)) return (await exists(pattern)) ? [pattern] : [];
  const element = globElement(path.basename(pattern));
  const dir = path.dirname(pattern);
  const dirs = GLOB_META.test(dir) ? await glob(dir) : [dir];
  const matches: string[] = [];
  for (const d of dirs) {
    for (const name of (await listDir(d)).sort()) if (element.test(name)) matches.push(path.join(d, name));
  }
  return matches;
}

function reason(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? (error as Error).message.split('\n')[0]!;
}

/**
 * Loads config.toml and what it imports as containerd 1.6 to 2.x do: breadth first, each file
 * once; a path relative to the importing file's directory, a glob's matches in sorted order.
 * Null when config.toml itself is absent.
 */
export async function loadContainerdConfig(configFile: string): Promise<LoadedContainerdConfig | null> {
  const files: ContainerdConfigFile[] = [];
  const problems: string[] = [];
  const loaded = new Set<string>();
  const pending: { file: string; importedBy?: string }[] = [{ file: configFile }];
  let version = 0;
  for (let next = pending.shift(); next !== undefined; next = pending.shift()) {
    const { file, importedBy } = next;
    if (loaded.has(file)) continue;
    loaded.add(file);
    const from = importedBy ? ` (imported by ${importedBy})` : '';
    let text: string | null;
    try {
      text = await readTextOrNull(file);
    } catch (error) {
      if (!importedBy) throw error;
      problems.push(`containerd config ${file}${from} cannot be read (${reason(error)}), so the agent cannot tell whether containerd's CRI reads hosts.toml`);
      continue;
    }
    if (text === null) {
      if (!importedBy) return null;
      problems.push(`containerd config ${file}${from} is not there: containerd does not start with an import it cannot open, and the agent cannot tell whether its CRI reads hosts.toml (an import below config.toml's directory is read at ${path.dirname(configFile)}; one elsewhere on the host is out of the agent's sight)`);
      continue;
    }
    let doc: Record<string, unknown>;
    try {
      doc = parse(text) as Record<string, unknown>;
    } catch (error) {
      problems.push(`containerd config ${file}${from} is not TOML the agent can read: ${(error as Error).message.split('\n')[0]}`);
      continue;
    }
    files.push({ file, doc });
    if (containerdConfigVersion(doc) !== 0) version = containerdConfigVersion(doc);
    for (const named of containerdImports(doc)) {
      const isGlob = named.includes('*');
      if (isGlob && !path.isAbsolute(named) && version < 3) {
        // containerd 1.x globs a relative pattern from its working directory (/ under systemd),
        // containerd 2.x from the importing file's directory
        problems.push(`containerd config ${file} imports "${named}", a relative glob: containerd 1.x matches it against its working directory, 2.x against ${path.dirname(file)}, so the agent cannot tell which files containerd reads; write it as an absolute path`);
        continue;
      }
      const local = path.isAbsolute(named) ? pathAsMounted(path.normalize(named), configFile) : path.join(path.dirname(file), named);
      if (!isGlob) {
        pending.push({ file: local, importedBy: file });
        continue;
      }
      // A directory the agent cannot see matches nothing here, whatever it holds on the host.
      const fixed = fixedDirectory(local);
      if (!within(fixed, path.dirname(configFile)) && !(await isDirectory(fixed))) {
        problems.push(`containerd config ${file} imports "${named}", from ${fixed}, which is out of the agent's sight (only ${path.dirname(configFile)} is mounted into its pod), so it cannot tell which files containerd reads; import from below ${path.dirname(configFile)}, or mount that directory too`);
        continue;
      }
      try {
        for (const match of await glob(local)) pending.push({ file: match, importedBy: file });
      } catch (error) {
        if (!(error instanceof BadPattern)) throw error;
        problems.push(`containerd config ${file} imports "${named}", which is not a pattern containerd can match (it does not start with it)`);
      }
    }
  }
  return { files, problems };
}
