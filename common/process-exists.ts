// Whether a process with this pid exists here (in this PID namespace): signal 0 checks without
// sending anything; EPERM means it exists, as another user's.
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}
