// `regmirror node-agent`: points this node's container runtimes at the mirror (or takes that
// away), then stays up keeping it so and answering /readyz, unless --once.
import { createLogger } from '../common/logger.ts';
import { reconcileOnce, startAgent } from './agent.ts';
import { parseAgentConfig, usage } from './config.ts';

export async function main(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage());
    return;
  }
  const config = parseAgentConfig(argv, process.env);
  const log = createLogger('node-agent', config.logLevel);

  if (config.once) {
    const result = await reconcileOnce(config, log);
    // Files in place but a runtime that will not use them (containerd without config_path) is a
    // failure an init container must show.
    if (!result.ready) process.exitCode = 1;
    return;
  }

  // Signals are taken from before the agent starts: /readyz can answer while startAgent is still
  // finishing, and a SIGTERM in that moment must stop the agent, not kill the process.
  let early: NodeJS.Signals | undefined;
  let onSignal: (signal: NodeJS.Signals) => void = (signal) => {
    early = signal;
  };
  process.once('SIGTERM', (signal) => onSignal(signal));
  process.once('SIGINT', (signal) => onSignal(signal));
  const agent = await startAgent(config, log);
  await new Promise<void>((resolve) => {
    onSignal = (signal) => {
      // The configuration stays on the node: a restarted or updated pod must not make pulls slow.
      // Taking it away is remove mode's job.
      log.info({ signal }, 'node agent stopping; node configuration left in place');
      void agent.stop().then(resolve);
    };
    if (early) onSignal(early);
  });
}
