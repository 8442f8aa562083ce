// Placeholder while the operator is being built; replaced by the operator's own entry point.
export async function main(_argv: string[]): Promise<void> {
  throw new Error('regmirror operator is not built yet');
}
