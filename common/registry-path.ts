// Registry names: where a registry's API lives, and how one is named in the first path component
// of a repository, for clients that cannot tell a
// mirror which registry they want with containerd's ?ns= (CRI-O, Podman and skopeo through a
// registries.conf mirror): mirror:5000/ghcr.io/org/app is org/app on ghcr.io.
//
// A path component allows lowercase letters, digits and the separators . _ __ and -, but no ':'.
// Registry names are lowercase host names (letters, digits, '-' and '.') with an optional port,
// so the port goes after '__', which no host name contains: registry.example.com:5000 is written
// registry.example.com__5000, and reading it back is exact.

/** The path component that names `registry` (host[:port]). */
export function registryPathComponent(registry: string): string {
  return registry.replace(':', '__');
}

/**
 * The registry a first path component may name, or undefined when it cannot be one: a Docker Hub
 * namespace has neither a dot nor '__', so `library` or `myorg` is never taken for a registry.
 */
export function registryFromPathComponent(component: string): string | undefined {
  if (!component.includes('.') && !component.includes('__')) return undefined;
  return component.replace('__', ':');
}

/** Where a registry's API lives when nothing says otherwise: Docker Hub's is not at docker.io itself. */
export function registryApiUrl(registry: string): string {
  return registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`;
}
