import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { CLI_DIR, type RunResult } from './run.js';

// Real links for the live plane's fault tests: two network namespaces joined by a veth pair, made
// with iproute2 (`ip netns`, `ip link`, `tc`). Every address is inside those namespaces.

/** Why namespaces cannot be made here (not root, no iproute2), or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  const probe = `dt-${process.pid}-probe`;
  const r = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (r.error !== undefined) return `cannot run ip (iproute2): ${r.error.message}`;
  if (r.status !== 0) return `ip netns add failed: ${r.stderr.trim()} (needs root)`;
  spawnSync('ip', ['netns', 'del', probe]);
  return undefined;
}

/** A source and a destination namespace joined by a veth pair, and the processes run in them. */
export interface NetnsPair {
  src: string;
  dst: string;
  /** The source's end of the veth pair (inside `src`), where shaping and cuts apply. */
  srcIf: string;
  srcAddr: string;
  dstAddr: string;
  /** A token-bucket limit on what the source sends, e.g. `100mbit`. */
  shape(rate: string): void;
  /** A real cut: the source's veth goes down. */
  cut(): void;
  /** The cut mended: the source's veth comes up again. */
  restore(): void;
  /** `dirtytrack …argv` from the sources, run in `ns`. */
  cli(ns: string, ...argv: string[]): CliProcess;
  /** Kills what is still running (SIGKILL) and deletes both namespaces (and with them the veth). */
  cleanup(): Promise<void>;
}

/** A running `dirtytrack` process. */
export interface CliProcess {
  child: ChildProcess;
  /** Its first stdout line (serve prints `listening on HOST:PORT` first). */
  firstLine: Promise<string>;
  /** Exit code and all of stdout and stderr. */
  done: Promise<RunResult>;
}

/**
 * Creates `dt-<pid>-<n>-src` and `-dst`, a veth pair between them, 10.211.X.1 and .2 (X from the
 * pid, so parallel runs on one host do not share a subnet), links and loopbacks up. On any failure
 * what was made is removed before the error is thrown.
 */
export function createNetnsPair(n: number): NetnsPair {
  const x = 16 + ((process.pid + n) % 224);
  const base = `dt-${process.pid}-${n}`;
  const src = `${base}-src`;
  const dst = `${base}-dst`;
  // Interface names have at most 15 characters.
  const srcIf = `dt${process.pid % 1e6}n${n}a`;
  const dstIf = `dt${process.pid % 1e6}n${n}b`;
  const srcAddr = `10.211.${x}.1`;
  const dstAddr = `10.211.${x}.2`;
  const children = new Set<ChildProcess>();
  const removeNamespaces = (): void => {
    spawnSync('ip', ['netns', 'del', src]);
    spawnSync('ip', ['netns', 'del', dst]);
  };
  try {
    ip('netns', 'add', src);
    ip('netns', 'add', dst);
    ip('link', 'add', srcIf, 'netns', src, 'type', 'veth', 'peer', 'name', dstIf, 'netns', dst);
    ip('-n', src, 'addr', 'add', `${srcAddr}/24`, 'dev', srcIf);
    ip('-n', dst, 'addr', 'add', `${dstAddr}/24`, 'dev', dstIf);
    for (const [ns, dev] of [
      [src, srcIf],
      [dst, dstIf],
      [src, 'lo'],
      [dst, 'lo'],
    ] as const) {
      ip('-n', ns, 'link', 'set', dev, 'up');
    }
  } catch (error) {
    removeNamespaces();
    throw error;
  }
  return {
    src,
    dst,
    srcIf,
    srcAddr,
    dstAddr,
    shape(rate) {
      // The recipe the issue measured: a 100 Mbit/s tbf gives ~92 Mbit/s to a Node socket.
      run(
        'ip',
        'netns',
        'exec',
        src,
        'tc',
        'qdisc',
        'replace',
        'dev',
        srcIf,
        'root',
        'tbf',
        'rate',
        rate,
        'burst',
        '32kbit',
        'latency',
        '400ms',
      );
    },
    cut() {
      ip('-n', src, 'link', 'set', srcIf, 'down');
    },
    restore() {
      ip('-n', src, 'link', 'set', srcIf, 'up');
    },
    cli(ns, ...argv) {
      const child = spawn(
        'ip',
        [
          'netns',
          'exec',
          ns,
          process.execPath,
          '--conditions=@dirtytrack/source',
          '--import',
          'tsx',
          'src/bin.ts',
          ...argv,
        ],
        { cwd: CLI_DIR, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      children.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout?.setEncoding('utf8').on('data', (c: string) => {
        stdout += c;
      });
      child.stderr?.setEncoding('utf8').on('data', (c: string) => {
        stderr += c;
      });
      const done = new Promise<RunResult>((resolve, reject) => {
        child.once('error', reject);
        child.once('close', (code, signal) => {
          children.delete(child);
          resolve({ code: code ?? (signal === null ? -1 : 128), stdout, stderr });
        });
      });
      const firstLine = new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout as NonNullable<ChildProcess['stdout']> }).once('line', resolve);
        void done.then(
          (r) => reject(new Error(`exited ${r.code} before a line: ${r.stderr.trim()}`)),
          reject,
        );
      });
      firstLine.catch(() => {});
      return { child, firstLine, done };
    },
    async cleanup() {
      // `ip netns exec` execs node, so the child's pid is the dirtytrack process itself.
      const waits = [...children].map(
        (c) =>
          new Promise<void>((resolve) => {
            c.once('close', () => resolve());
            c.kill('SIGKILL');
          }),
      );
      await within(Promise.all(waits), 5_000, 'the processes to exit').catch(() => {});
      removeNamespaces();
    },
  };
}

/** Resolves with `promise`, or rejects after `ms` naming what did not happen. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Waits until `ns` has an established TCP connection to `addr:port` (the migration has started),
 * polling `ss` every 100 ms for at most `ms`. With `process`, a process that ends first fails the
 * wait at once with its exit code and output (not a bare timeout).
 */
export async function waitForConnection(
  ns: string,
  addr: string,
  port: number,
  ms: number,
  process?: CliProcess,
): Promise<void> {
  const deadline = Date.now() + ms;
  let ended: RunResult | undefined;
  void process?.done.then((r) => (ended = r));
  for (;;) {
    if (ended !== undefined) {
      throw new Error(
        `the process ended (code ${ended.code}) before a connection to ${addr}:${port}: ${ended.stdout.slice(0, 800)} ${ended.stderr.slice(0, 800)}`,
      );
    }
    const r = spawnSync(
      'ip',
      ['netns', 'exec', ns, 'ss', '-Htn', 'state', 'established', 'dst', `${addr}:${port}`],
      {
        encoding: 'utf8',
      },
    );
    if (r.status === 0 && r.stdout.trim() !== '') return;
    if (Date.now() > deadline) throw new Error(`no connection to ${addr}:${port} from ${ns} within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The port in serve's first line, `listening on HOST:PORT`. */
export function listeningPort(line: string): number {
  const m = /^listening on \S+:(\d+)$/.exec(line);
  if (m === null) throw new Error(`serve said: ${line}`);
  return Number(m[1]);
}

function ip(...args: string[]): void {
  run('ip', ...args);
}

function run(cmd: string, ...args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim() || r.error?.message}`);
}
