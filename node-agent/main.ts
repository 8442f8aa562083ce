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
    // 0 once the files are as the mode wants them (DESIGN.md's contract for tests and init
    // containers); a runtime that will not use them (containerd without config_path) is reported
    // in the log, as in /readyz. 1 when the files could not be put in place, or no runtime was found.
    if (!result.applied) process.exitCode = 1;
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
