export async function main(_argv: string[]): Promise<void> {
  throw new Error('regmirror mirror is not built yet');
}
