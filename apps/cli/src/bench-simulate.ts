import { spawn } from 'node:child_process';
import { DirtytrackError } from '@dirtytrack/core';
import { medianOf } from './bench-timing.js';
import { cliCommand } from './cli-command.js';

/**
 * `dirtytrack bench simulate`: how long the model plane takes, and how much memory, to run the
 * huge-VM presets on this machine. Each run is its own child process — `simulate --preset NAME
 * --json` on the CLI's own bin — so the peak RSS is that run's alone: the child reports
 * `process.resourceUsage().maxRSS` (the kernel's high-water mark, VmHWM) from its `exit` handler
 * on fd 3. Wall-clock seconds are timed in the parent from spawn to exit, Node's start included,
 * as a user running the command sees them.
 */
export interface SimulateBenchOptions {
  /** Preset names, run in this order. */
  presets: readonly string[];
  /** Runs per preset (the median is reported). */
  reps: number;
  /** Called before each run. */
  onRun?: (preset: string, rep: number) => void;
}

/** The budgets issue 8 sets; presets without one have none. */
export const SIMULATE_BUDGETS: Readonly<Record<string, { 'wall-s': number; 'peak-rss-mib'?: number }>> = {
  'seed-3tb': { 'wall-s': 10, 'peak-rss-mib': 2048 },
  'seed-8tb': { 'wall-s': 30 },
};

export interface SimulateBenchRun {
  'wall-s': number;
  'peak-rss-mib': number;
  /** The child's user + system CPU seconds: less sensitive than wall time to a busy machine. */
  'cpu-s': number;
}

export interface SimulateBenchCase {
  preset: string;
  /** Median over the runs. */
  'wall-s': number;
  /** Median over the runs. */
  'peak-rss-mib': number;
  /** Median over the runs. */
  'cpu-s': number;
  runs: SimulateBenchRun[];
  /** The simulated migration's outcome (identical in every run: the model is deterministic). */
  status: string;
  /** Virtual milliseconds the simulated migration took. */
  'total-time': number;
  budget?: { 'wall-s': number; 'peak-rss-mib'?: number };
  /** Whether the medians are within the budget (absent without one). */
  'within-budget'?: boolean;
}

export interface SimulateBenchResult {
  bench: 'simulate';
  node: string;
  reps: number;
  cases: SimulateBenchCase[];
}

export async function benchSimulate(options: SimulateBenchOptions): Promise<SimulateBenchResult> {
  const cases: SimulateBenchCase[] = [];
  for (const preset of options.presets) {
    const runs: SimulateBenchRun[] = [];
    let first: { status: string; 'total-time': number; stdout: string } | undefined;
    for (let rep = 0; rep < options.reps; rep++) {
      options.onRun?.(preset, rep);
      const r = await runChild(preset);
      runs.push({ 'wall-s': r.wallS, 'peak-rss-mib': r.rssMiB, 'cpu-s': r.cpuS });
      if (first === undefined) first = { ...parseOutcome(preset, r.stdout), stdout: r.stdout };
      else if (r.stdout !== first.stdout) {
        throw new DirtytrackError('internal', `${preset}: two runs printed different JSON`, {
          component: 'bench-simulate',
        });
      }
    }
    const budget = SIMULATE_BUDGETS[preset];
    const wall = medianOf(runs.map((r) => r['wall-s']));
    const rss = medianOf(runs.map((r) => r['peak-rss-mib']));
    cases.push({
      preset,
      'wall-s': wall,
      'peak-rss-mib': rss,
      'cpu-s': medianOf(runs.map((r) => r['cpu-s'])),
      runs,
      status: (first as { status: string }).status,
      'total-time': (first as { 'total-time': number })['total-time'],
      ...(budget === undefined
        ? {}
        : {
            budget,
            'within-budget':
              wall <= budget['wall-s'] &&
              (budget['peak-rss-mib'] === undefined || rss <= budget['peak-rss-mib']),
          }),
    });
  }
  return { bench: 'simulate', node: process.version, reps: options.reps, cases };
}

/** The Markdown table the README shows. */
export function formatSimulateBench(r: SimulateBenchResult): string {
  const lines = [
    `# simulate: wall-clock and peak RSS per preset, one child process per run, medians of ${r.reps} (Node ${r.node})`,
    '',
    '| preset | status | virtual time | wall s | CPU s | peak RSS MiB | budget | within |',
    '|---|---|---:|---:|---:|---:|---|---|',
  ];
  for (const c of r.cases) {
    const budget =
      c.budget === undefined
        ? '–'
        : `${c.budget['wall-s']} s${c.budget['peak-rss-mib'] === undefined ? '' : `, ${c.budget['peak-rss-mib']} MiB`}`;
    const within = c['within-budget'] === undefined ? '–' : c['within-budget'] ? 'yes' : '**no**';
    lines.push(
      `| ${c.preset} | ${c.status} | ${(c['total-time'] / 1000).toFixed(1)} s | ${c['wall-s']} | ${c['cpu-s']} | ${c['peak-rss-mib']} | ${budget} | ${within} |`,
    );
  }
  return lines.join('\n') + '\n';
}

/** Reports the child's peak RSS (KiB) and CPU time (µs) on fd 3 as it exits. */
const RSS_PRELOAD =
  'data:text/javascript,' +
  encodeURIComponent(
    "import { writeSync } from 'node:fs';" +
      "process.on('exit', () => { try { const u = process.resourceUsage(); writeSync(3, JSON.stringify([u.maxRSS, u.userCPUTime + u.systemCPUTime])); } catch {} });",
  );

function runChild(preset: string): Promise<{ wallS: number; rssMiB: number; cpuS: number; stdout: string }> {
  const args = ['--import', RSS_PRELOAD, ...cliCommand(), 'simulate', '--preset', preset, '--json'];
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    let usage = '';
    const [, stdoutPipe, stderrPipe, fd3Pipe] = child.stdio as unknown as NodeJS.ReadableStream[];
    (stdoutPipe as NodeJS.ReadableStream).on('data', (c: Buffer) => out.push(c));
    (stderrPipe as NodeJS.ReadableStream).setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const fd3 = fd3Pipe as NodeJS.ReadableStream;
    fd3.setEncoding('utf8');
    fd3.on('data', (c: string) => (usage += c));
    child.on('error', reject);
    child.on('close', (code) => {
      const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
      let kib = 0;
      let cpuUs = 0;
      try {
        [kib, cpuUs] = JSON.parse(usage) as [number, number];
      } catch {
        // Reported below: a child that died before its exit handler ran.
      }
      if (code !== 0 || !(kib > 0)) {
        reject(
          new DirtytrackError(
            'internal',
            `simulate --preset ${preset} exited ${String(code)}${kib > 0 ? '' : ' without reporting its RSS'}: ${stderr.trim().split('\n')[0] ?? ''}`,
            { component: 'bench-simulate' },
          ),
        );
        return;
      }
      resolve({
        wallS: Number(wallS.toFixed(2)),
        rssMiB: Math.round(kib / 1024),
        cpuS: Number((cpuUs / 1e6).toFixed(2)),
        stdout: Buffer.concat(out).toString('utf8'),
      });
    });
  });
}

function parseOutcome(preset: string, stdout: string): { status: string; 'total-time': number } {
  try {
    const r = JSON.parse(stdout) as { status: string; 'total-time': number };
    return { status: r.status, 'total-time': r['total-time'] };
  } catch (cause) {
    throw new DirtytrackError('internal', `simulate --preset ${preset} printed no JSON result`, {
      component: 'bench-simulate',
      cause,
    });
  }
}
