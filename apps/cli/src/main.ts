import { writeFileSync } from 'node:fs';
import { isDirtytrackError } from '@dirtytrack/core';
import { SingleBar } from 'cli-progress';
import { Command, CommanderError, Option } from 'commander';
import { loadScenario, UsageError } from './load-scenario.js';
import { simulate } from './pipeline.js';
import { PRESETS } from './presets.js';
import { formatSummary } from './summary.js';

export interface Io {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Whether to draw a progress bar on stderr. */
  progress: boolean;
}

const defaultIo: Io = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  progress: Boolean(process.stderr.isTTY),
};

/**
 * Runs the `dirtytrack` command line and returns the exit code: 0 on success, 1 on an internal
 * failure, 2 for bad input (one line on stderr naming the field and what is accepted).
 */
export async function main(argv: readonly string[], io: Io = defaultIo): Promise<number> {
  const program = new Command('dirtytrack')
    .description('Model, measure and extend how KVM and QEMU track dirty memory and live-migrate VMs.')
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr, outputError: () => {} })
    .showSuggestionAfterError(true);

  let code = 0;
  program
    .command('simulate')
    .description('Run a migration scenario in the model plane (virtual time, deterministic per seed).')
    .addOption(new Option('--preset <name>', 'a built-in scenario').choices(Object.keys(PRESETS)))
    .option('--scenario <file>', 'a YAML or JSON scenario file, laid over the preset')
    .option(
      '--set <key=value>',
      'override a scenario key (dotted, repeatable), e.g. --set migration.parameters.downtime-limit=500',
      collect,
      [],
    )
    .option('--json', 'print the result as one JSON object on stdout')
    .option('--out <file>', 'also write the JSON result to a file')
    .action((opts: { preset?: string; scenario?: string; set: string[]; json?: boolean; out?: string }) => {
      const scenario = loadScenario({ preset: opts.preset, scenarioFile: opts.scenario, sets: opts.set });
      const bar = io.progress
        ? new SingleBar({
            stream: process.stderr,
            format: 'simulate {bar} {percentage}% of RAM sent once | {syncs} syncs | t={t}s',
            hideCursor: true,
          })
        : undefined;
      bar?.start(100, 0, { syncs: 0, t: 0 });
      const result = simulate(scenario, (p) =>
        bar?.update(Math.min(100, Math.floor((100 * p.transferred) / p.total)), {
          syncs: p.syncs,
          t: (p.timeNs / 1e9).toFixed(1),
        }),
      );
      bar?.stop();
      const json = JSON.stringify(result, null, 2) + '\n';
      if (opts.out !== undefined) {
        try {
          writeFileSync(opts.out, json);
        } catch (cause) {
          throw new UsageError(
            '--out',
            `cannot write ${opts.out}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
          );
        }
      }
      io.stdout(opts.json ? json : formatSummary(scenario, result) + '\n');
    });

  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (error) {
    code = report(error, io);
  }
  return code;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function report(error: unknown, io: Io): number {
  if (error instanceof CommanderError) {
    if (
      error.code === 'commander.helpDisplayed' ||
      error.code === 'commander.version' ||
      error.exitCode === 0
    ) {
      return 0;
    }
    // No command given: commander has already printed the help on stderr.
    if (error.code === 'commander.help') return 2;
    // One line: commander's message plus its "(Did you mean …?)" suggestion, if any.
    const message = error.message
      .replace(/^error: /, '')
      .split('\n')
      .map((line) => line.trim())
      .filter(Boolean)
      .join(' ');
    const hint = /unknownOption|unknownCommand|excessArguments/.test(error.code)
      ? ' (see dirtytrack --help)'
      : '';
    io.stderr(`dirtytrack: ${message}${hint}\n`);
    return 2;
  }
  if (error instanceof UsageError) {
    io.stderr(`dirtytrack: ${error.message}\n`);
    return 2;
  }
  if (isDirtytrackError(error, 'invalid-argument') || isDirtytrackError(error, 'invalid-config')) {
    io.stderr(`dirtytrack: ${error.message}\n`);
    return 2;
  }
  io.stderr(
    `dirtytrack: internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  return 1;
}
