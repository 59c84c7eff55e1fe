import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** One measured case: the median of several repetitions, in milliseconds. */
export interface BenchRow {
  name: string;
  medianMs: number;
  minMs: number;
  maxMs: number;
  reps: number;
  note?: string;
}

/** Runs `fn` `reps` times after one warm-up (with `prepare` outside the timing) and summarises. */
export function measure(
  name: string,
  reps: number,
  fn: () => void,
  prepare: () => void = () => {},
  note?: string,
): BenchRow {
  prepare();
  fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    prepare();
    const t0 = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((a, b) => a - b);
  const row: BenchRow = {
    name,
    medianMs: round(times[Math.floor(times.length / 2)] as number),
    minMs: round(times[0] as number),
    maxMs: round(times[times.length - 1] as number),
    reps,
  };
  return note === undefined ? row : { ...row, note };
}

/** Writes `<dir>/bench-results/<name>.json` and `.md` (a table generated from the JSON). */
export function writeReport(
  dir: string,
  name: string,
  title: string,
  rows: BenchRow[],
  extra: Record<string, unknown>,
): void {
  const out = join(dir, 'bench-results');
  mkdirSync(out, { recursive: true });
  const json = { bench: name, node: process.version, date: new Date().toISOString(), ...extra, rows };
  writeFileSync(join(out, `${name}.json`), JSON.stringify(json, null, 2) + '\n');
  const lines = [
    `# ${title}`,
    '',
    ...Object.entries(extra).map(
      ([k, v]) => `- ${k}: ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`,
    ),
    '',
    '| case | median ms | min ms | max ms | reps | note |',
    '|---|---:|---:|---:|---:|---|',
    ...rows.map(
      (r) => `| ${r.name} | ${r.medianMs} | ${r.minMs} | ${r.maxMs} | ${r.reps} | ${r.note ?? ''} |`,
    ),
    '',
  ];
  writeFileSync(join(out, `${name}.md`), lines.join('\n'));
  process.stdout.write(lines.join('\n'));
}

export function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
