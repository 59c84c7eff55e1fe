import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { MigrationInfo } from '@dirtytrack/migration';
import { main } from '../main.js';
import type { SimulateResult } from '../pipeline.js';

/** What one `dirtytrack` invocation produced. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `dirtytrack …argv` in-process through `main`, capturing stdout and stderr (no progress bar). */
export async function run(...argv: string[]): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const code = await main(argv, {
    stdout: (text) => {
      stdout += text;
    },
    stderr: (text) => {
      stderr += text;
    },
    progress: false,
  });
  return { code, stdout, stderr };
}

/** Runs `dirtytrack …argv` in-process and parses its stdout as the `--json` result. */
export async function runJson(...argv: string[]): Promise<{ result: SimulateJson; stdout: string }> {
  const r = await run(...argv, '--json');
  if (r.code !== 0 || r.stderr !== '') {
    throw new Error(`dirtytrack ${argv.join(' ')} --json exited ${r.code}: ${r.stderr}`);
  }
  return { result: JSON.parse(r.stdout) as SimulateJson, stdout: r.stdout };
}

/** The package directory (apps/cli), where `src/bin.ts` lives. */
export const CLI_DIR = fileURLToPath(new URL('../../', import.meta.url));

/** Runs the real process, `node --conditions=@dirtytrack/source --import tsx src/bin.ts …argv`. */
export function spawnCli(...argv: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--conditions=@dirtytrack/source', '--import', 'tsx', 'src/bin.ts', ...argv],
      { cwd: CLI_DIR, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/**
 * `dirtytrack …argv` as a real process (from the sources, like {@link spawnCli}) leading a process
 * group of its own, as a shell runs a foreground job: `signalGroup` then signals the whole group,
 * as a terminal's Ctrl-C does. `untilStderr` resolves once stderr matches (or rejects after `ms`).
 */
export function spawnCliJob(...argv: string[]): {
  child: ChildProcessWithoutNullStreams;
  untilStderr: (pattern: RegExp, ms: number) => Promise<RegExpExecArray>;
  signalGroup: (signal: NodeJS.Signals) => void;
  output: Promise<RunResult>;
} {
  const child = spawn(
    process.execPath,
    ['--conditions=@dirtytrack/source', '--import', 'tsx', 'src/bin.ts', ...argv],
    { cwd: CLI_DIR, stdio: ['pipe', 'pipe', 'pipe'], detached: true },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const output = new Promise<RunResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
  const untilStderr = async (pattern: RegExp, ms: number): Promise<RegExpExecArray> => {
    const end = Date.now() + ms;
    for (;;) {
      const m = pattern.exec(stderr);
      if (m !== null) return m;
      if (Date.now() > end || child.exitCode !== null)
        throw new Error(`stderr never matched ${pattern} (exit ${child.exitCode}): ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  const signalGroup = (signal: NodeJS.Signals): void => {
    process.kill(-(child.pid as number), signal);
  };
  return { child, untilStderr, signalGroup, output };
}

/** The shape of `simulate --json` (QEMU's query-migrate names plus dirtytrack's section). */
export type SimulateJson = MigrationInfo & Pick<SimulateResult, 'dirtytrack'>;

/** A `dirtytrack serve --listen 127.0.0.1:0 …args` process, once it listens. */
export interface ServeProcess {
  readonly child: ChildProcessWithoutNullStreams;
  readonly port: number;
  /** Everything it printed on stdout after the "listening on" line, and on stderr, once it has exited. */
  readonly output: Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** What it has printed on stdout so far after the "listening on" line. */
  printed(): string;
}

/** Spawns `dirtytrack serve` on a free loopback port (from the sources, like {@link spawnCli}). */
export function spawnServe(...args: string[]): Promise<ServeProcess> {
  return spawnServeWith(process.env, ...args);
}

/** {@link spawnServe} with the environment `env` (a `NODE_OPTIONS` preload, say). */
export async function spawnServeWith(env: NodeJS.ProcessEnv, ...args: string[]): Promise<ServeProcess> {
  const child = spawn(
    process.execPath,
    [
      '--conditions=@dirtytrack/source',
      '--import',
      'tsx',
      'src/bin.ts',
      'serve',
      '--listen',
      '127.0.0.1:0',
      ...args,
    ],
    { cwd: CLI_DIR, stdio: ['pipe', 'pipe', 'pipe'], env },
  );
  const lines = createInterface({ input: child.stdout });
  const port = await new Promise<number>((resolve, reject) => {
    lines.once('line', (line) => {
      const m = /^listening on 127\.0\.0\.1:(\d+)$/.exec(line);
      if (m) resolve(Number(m[1]));
      else reject(new Error(`serve said: ${line}`));
    });
    child.once('exit', (code) => reject(new Error(`serve exited ${code}`)));
  });
  let stdout = '';
  lines.on('line', (line) => {
    stdout += line + '\n';
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const output = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.once('close', (code) => resolve({ code, stdout, stderr })),
  );
  return { child, port, output, printed: () => stdout };
}
