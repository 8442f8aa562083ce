// Placeholder while the node-agent is being built; replaced by the node-agent's own entry point.
export async function main(_argv: string[]): Promise<void> {
  throw new Error('regmirror node-agent is not built yet');
}
