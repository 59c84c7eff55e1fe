import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isDirtytrackError, parseSize } from '@dirtytrack/core';
import { benchBitmap, formatBitmapBench } from './bench-bitmap.js';
import { benchMmu, formatMmuBench } from './bench-mmu.js';
import { benchTrackers, formatTrackersBench } from './bench-trackers.js';
import { benchReporters, DEFAULT_FRACTIONS, formatReportersBench } from './bench-reporters.js';
import { SingleBar } from 'cli-progress';
import { Command, CommanderError, Option } from 'commander';
import { intFlag, loadScenario, UsageError } from './load-scenario.js';
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

/** `@dirtytrack/cli`'s version (`src/` and `dist/` both sit one level below its package.json). */
const VERSION = (createRequire(import.meta.url)('../package.json') as { version: string }).version;

/** `--json`, `--out`, `--markdown` of every bench. */
interface BenchOutputFlags {
  json?: boolean;
  out?: string;
  markdown?: string;
}

/**
 * Runs the `dirtytrack` command line and returns the exit code: 0 on success, 1 on an internal
 * failure, 2 for bad input (one line on stderr naming the field and what is accepted).
 */
export async function main(argv: readonly string[], io: Io = defaultIo): Promise<number> {
  const program = new Command('dirtytrack')
    .description('Model, measure and extend how KVM and QEMU track dirty memory and live-migrate VMs.')
    .version(VERSION, '-V, --version', 'print the version of the dirtytrack command line')
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
      writeOut('--out', opts.out, json);
      io.stdout(opts.json ? json : formatSummary(scenario, result) + '\n');
    });

  /** The output flags every bench takes (read by {@link printBench}), added after its own. */
  const benchOutput = (command: Command): Command =>
    command
      .option('--json', 'print the result as one JSON object on stdout')
      .option('--out <file>', 'also write the JSON result to a file')
      .option('--markdown <file>', 'also write the Markdown table to a file');

  /** A bench's output: the JSON with `--json`, else the Markdown table; `--out` / `--markdown` also write them. */
  const printBench = (opts: BenchOutputFlags, result: unknown, table: string): void => {
    const json = JSON.stringify(result, null, 2) + '\n';
    writeOut('--out', opts.out, json);
    writeOut('--markdown', opts.markdown, table);
    io.stdout(opts.json === true ? json : table);
  };

  const bench = program
    .command('bench')
    .description('Benchmarks: components side by side in one run, medians of several repetitions, ratios.');
  benchOutput(
    bench
      .command('reporters')
      .description(
        'Harvest the same dirty sets through the KVM dirty bitmap and the dirty ring, 0.01% to 100% dirty.',
      )
      .option('--memory <size>', 'guest memory (IEC size)', '64G')
      .option('--reps <n>', 'repetitions per case (the median is reported)', '5')
      .option('--fractions <list>', 'comma-separated dirty fractions in (0, 1]', DEFAULT_FRACTIONS.join(','))
      .option('--seed <n>', 'seed of the dirty sets', '1'),
  ).action(
    (
      opts: {
        memory: string;
        reps: string;
        fractions: string;
        seed: string;
      } & BenchOutputFlags,
    ) => {
      const { memory, reps } = benchSize(opts);
      const fractions = opts.fractions.split(',').map(Number);
      if (fractions.some((f) => !(f > 0 && f <= 1))) {
        throw new UsageError(
          '--fractions',
          `${JSON.stringify(opts.fractions)} must be numbers in (0, 1], comma-separated`,
        );
      }
      const seed = Number(opts.seed);
      if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) {
        throw new UsageError('--seed', `${JSON.stringify(opts.seed)} is not an integer in [0, 2^32)`);
      }
      const bar = io.progress
        ? new SingleBar({
            stream: process.stderr,
            format: 'bench reporters {bar} {value}/{total} fractions',
            hideCursor: true,
          })
        : undefined;
      bar?.start(fractions.length, 0);
      const result = benchReporters({ memory, fractions, reps, seed, onFraction: (i) => bar?.update(i) });
      bar?.update(fractions.length);
      bar?.stop();
      printBench(opts, result, formatReportersBench(result));
    },
  );

  benchOutput(
    bench
      .command('bitmap')
      .description(
        "QEMU's bitmap sync strategies side by side: memcpy, xchg, three-layer xchg, rwlock-memcpy, fused.",
      )
      .option('--memory <size>', 'guest memory (IEC size); 3T is a 96 MiB bitmap, 8T 256 MiB', '3T')
      .option('--reps <n>', 'repetitions per case (the median is reported)', '5'),
  ).action((opts: { memory: string; reps: string } & BenchOutputFlags) => {
    const { memory, reps } = benchSize(opts);
    const result = benchBitmap({
      memory,
      reps,
      onStep: (s) => io.progress && io.stderr(`bench bitmap: ${s}\n`),
    });
    printBench(opts, result, formatBitmapBench(result));
  });

  benchOutput(
    bench
      .command('mmu')
      .description(
        'Enabling dirty logging in the MMU: eager split + write-protect against lazy initially-set.',
      )
      .option('--memory <size>', 'guest memory (IEC size)', '128G')
      .option('--backing <size>', 'backing page size: 4K, 2M or 1G', '1G')
      .option('--reps <n>', 'repetitions per case (the median is reported)', '5'),
  ).action(
    (
      opts: {
        memory: string;
        backing: string;
        reps: string;
      } & BenchOutputFlags,
    ) => {
      const { memory, reps } = benchSize(opts);
      const backing = opts.backing.toUpperCase();
      if (backing !== '4K' && backing !== '2M' && backing !== '1G') {
        throw new UsageError('--backing', `${JSON.stringify(opts.backing)} is not one of 4K, 2M, 1G`);
      }
      const unit = backing === '1G' ? 2 ** 30 : backing === '2M' ? 2 ** 21 : 4096;
      if (memory % unit !== 0) {
        throw new UsageError('--memory', `${opts.memory} is not a whole number of ${backing} backing pages`);
      }
      if (memory > 16 * 2 ** 40 - 4096) {
        throw new UsageError(
          '--memory',
          `${opts.memory} is past the MMU model's 16 TiB guest-physical limit`,
        );
      }
      if (io.progress) io.stderr(`bench mmu: ${reps} + 2 warm-up repetitions on ${opts.memory}\n`);
      const result = benchMmu({ memory, backing, reps });
      printBench(opts, result, formatMmuBench(result));
    },
  );

  // `selftest dirty-log` (issue 5): the kernel's dirty_log_test over a chosen pipeline.
  (await import('./selftest.js')).registerSelftest(program, io, (c) => (code = c));
  // `serve` and `migrate` (issue 9): the live plane over TCP.
  (await import('./live.js')).registerLive(program, io, (c) => (code = c));
  // `dirtyrate` (issue 7): QEMU's calc-dirty-rate on a live software guest.
  (await import('./dirtyrate.js')).registerDirtyrate(program, io);

  benchOutput(
    bench
      .command('trackers')
      .description(
        'Guest write throughput in the live engine with each tracker (off, wp, pml, uffd-wp), side by side.',
      )
      .option('--memory <size>', 'guest memory (IEC size, a multiple of 2M, at most 4G)', '64M')
      .option('--vcpus <n>', 'worker-thread vCPUs', '2')
      .option('--warmup-ms <ms>', 'unmeasured run before each window', '1500')
      .option('--window-ms <ms>', 'measured window per tracker and repetition', '1000')
      .option('--harvest-ms <ms>', 'interval between dirty-log harvests', '50')
      .option('--reps <n>', 'repetitions (the median is reported)', '3')
      .option('--seed <n>', 'seed of the vCPUs’ page choices', '1'),
  ).action(
    async (
      opts: {
        memory: string;
        vcpus: string;
        warmupMs: string;
        windowMs: string;
        harvestMs: string;
        reps: string;
        seed: string;
      } & BenchOutputFlags,
    ) => {
      const { memory, reps } = benchSize(opts);
      if (memory % 2 ** 21 !== 0 || memory > 4 * 2 ** 30) {
        throw new UsageError('--memory', `${opts.memory} must be a multiple of 2M and at most 4G`);
      }
      const result = await benchTrackers({
        memory,
        reps,
        vcpus: intFlag('--vcpus', opts.vcpus, 1, 64),
        warmupMs: intFlag('--warmup-ms', opts.warmupMs, 0, 600_000),
        windowMs: intFlag('--window-ms', opts.windowMs, 1, 600_000),
        harvestMs: intFlag('--harvest-ms', opts.harvestMs, 1, 60_000),
        seed: intFlag('--seed', opts.seed, 0, 0xffff_ffff),
        onStep: (s) => io.progress && io.stderr(`bench trackers: ${s}\n`),
      });
      printBench(opts, result, formatTrackersBench(result));
    },
  );

  // `bench simulate` (issue 8): the huge-VM presets' wall-clock time and peak RSS, one child each.
  {
    const { benchSimulate, formatSimulateBench } = await import('./bench-simulate.js');
    benchOutput(
      bench
        .command('simulate')
        .description('Wall-clock seconds and peak RSS of `simulate --preset …`, each run in its own process.')
        .option('--presets <list>', 'comma-separated presets to run', 'seed-3tb,seed-8tb')
        .option('--reps <n>', 'runs per preset (the median is reported)', '1'),
    ).action(async (opts: { presets: string; reps: string } & BenchOutputFlags) => {
      const presets = opts.presets.split(',').map((p) => p.trim());
      const unknown = presets.find((p) => !Object.hasOwn(PRESETS, p));
      if (unknown !== undefined) {
        throw new UsageError(
          '--presets',
          `unknown preset ${JSON.stringify(unknown)} (accepted: a comma-separated list of ${Object.keys(PRESETS).join(', ')})`,
        );
      }
      const reps = intFlag('--reps', opts.reps, 1, 100);
      const result = await benchSimulate({
        presets,
        reps,
        onRun: (p, rep) => io.progress && io.stderr(`bench simulate: ${p} run ${rep + 1}/${reps}\n`),
      });
      printBench(opts, result, formatSimulateBench(result));
    });
  }

  // `bench migrate` (issue 9): raw loopback TCP vs live precopy / multifd / a dirtying guest, and the model's prediction.
  {
    const { benchMigrate, formatMigrateBench } = await import('./bench-migrate.js');
    benchOutput(
      bench
        .command('migrate')
        .description(
          'Live migrations on loopback (idle guest by precopy — from staging buffers and from guest memory — and multifd 2 (again with zero-copy-send where koffi loads) and 4, a dirtying guest) against raw TCP, TCP between two guest RAMs and TCP in QEMU’s page records into guest RAM (in Node, and in C where cc builds it), and the model plane’s prediction of each.',
        )
        .option('--memory <size>', 'idle guest RAM and loopback transfer (IEC size)', '1G')
        .option('--dirty-memory <size>', 'RAM of the guest dirtying at full speed', '512M')
        .option('--vcpus <n>', 'worker-thread vCPUs per guest', '2')
        .option('--time-limit <s>', 'seconds after which a live run gives up', '60')
        .option('--reps <n>', 'repetitions (the median is reported)', '3')
        .option('--seed <n>', 'seed of the guests’ RAM and page choices', '1'),
    ).action(
      async (
        opts: {
          memory: string;
          dirtyMemory: string;
          vcpus: string;
          timeLimit: string;
          reps: string;
          seed: string;
        } & BenchOutputFlags,
      ) => {
        const reps = intFlag('--reps', opts.reps, 1, 1000);
        // Guest RAM as `migrate --memory` takes it: whole MiB in [1M, 16G].
        const [memory, dirtyMemory] = (
          [
            ['--memory', opts.memory],
            ['--dirty-memory', opts.dirtyMemory],
          ] as const
        ).map(([flag, text]) => {
          const bytes = usage(flag, () => parseSize(text, flag));
          if (bytes < 2 ** 20 || bytes % 2 ** 20 !== 0 || bytes > 16 * 2 ** 30) {
            throw new UsageError(flag, `${text} must be a whole number of MiB in [1M, 16G]`);
          }
          return bytes;
        }) as [number, number];
        const result = await benchMigrate({
          memory,
          dirtyMemory,
          reps,
          vcpus: intFlag('--vcpus', opts.vcpus, 1, 64),
          timeLimit: intFlag('--time-limit', opts.timeLimit, 1, 86_400),
          seed: intFlag('--seed', opts.seed, 0, 0xffff_ffff),
          onStep: (s) => io.progress && io.stderr(`bench migrate: ${s}\n`),
        });
        printBench(opts, result, formatMigrateBench(result));
      },
    );
  }

  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (error) {
    code = report(error, io);
  }
  return code;
}

/** The `--memory` and `--reps` every bench takes, validated. */
function benchSize(opts: { memory: string; reps: string }): { memory: number; reps: number } {
  const memory = usage('--memory', () => parseSize(opts.memory, '--memory'));
  if (memory < 64 * 4096 || memory % (64 * 4096) !== 0) {
    throw new UsageError(
      '--memory',
      `${opts.memory} must be a multiple of 256K (64 pages) and at least 256K`,
    );
  }
  const reps = intFlag('--reps', opts.reps, 1, 1000);
  return { memory, reps };
}

/** Writes a result file; a failure is the user's path, reported as bad input on `flag`. */
function writeOut(flag: string, path: string | undefined, text: string): void {
  if (path === undefined) return;
  try {
    writeFileSync(path, text);
  } catch (cause) {
    throw new UsageError(
      flag,
      `cannot write ${path}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
    );
  }
}

/** Runs `parse`, turning a DirtytrackError about the value into a one-line usage error. */
function usage<T>(flag: string, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    if (isDirtytrackError(error))
      throw new UsageError(flag, error.message.replace(/^\[dirtytrack\] \[[^\]]*\] [^:]*: /, ''));
    throw error;
  }
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
    // "option '--x <v>' argument 'y' is invalid. …" names its flag first, like every other bad value.
    const option = /^option '(--[\w-]+)[^']*' (argument .*)$/.exec(message);
    io.stderr(`dirtytrack: ${option === null ? message : `${option[1]}: ${option[2]}`}${hint}\n`);
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
