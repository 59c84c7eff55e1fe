import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fdWritesAvailable } from '@dirtytrack/migration';
import { createHugePageAllocator } from '@dirtytrack/qemu-layers';
import { describe, expect, it } from 'vitest';
import { run } from './__fixtures__/run.js';
import { fourDigits } from './bench-timing.js';
import {
  cpuLoad,
  errorPct,
  finalMbps,
  formatMigrateBench,
  USAGE_PRELOAD,
  ZERO_COPY_UNAVAILABLE,
  type MigrateBenchResult,
} from './bench-migrate.js';

// Real migrations (worker vCPUs, destination child processes, TCP on loopback) at 16 MiB: the
// shape and the exact invariants only — no timing is asserted.
describe('dirtytrack bench migrate', () => {
  it('measures raw loopback, idle precopy, multifd 2 (and with zero-copy-send) and 4 and a dirtying guest in one run, each predicted by the model', async () => {
    // zero-copy-send needs vmsplice and splice through koffi; where koffi cannot load the bench
    // says so instead of running the case.
    const zeroCopy = fdWritesAvailable();
    if (!zeroCopy) console.info(`multifd-2-zero-copy not run here: ${ZERO_COPY_UNAVAILABLE}`);
    const out = await run(
      'bench',
      'migrate',
      '--memory',
      '16M',
      '--dirty-memory',
      '16M',
      '--reps',
      '1',
      '--time-limit',
      '5',
      '--json',
    );
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    const r = JSON.parse(out.stdout) as MigrateBenchResult;
    const memory = 16 * 2 ** 20;
    expect([r.bench, r.reps, r.memory, r['dirty-memory'], r.vcpus, r['time-limit']]).toEqual([
      'migrate',
      1,
      memory,
      memory,
      2,
      5,
    ]);
    expect(r['loopback-runs']).toEqual([r['loopback-mbps']]);
    // Guest RAM advised huge pages in every run, where this machine can (as QEMU advises its RAM).
    expect(r['huge-pages']).toBe(createHugePageAllocator().kind === 'huge-pages');
    for (const c of r.cases) for (const x of c.runs) expect(x['huge-pages']).toBe(r['huge-pages']);
    expect(r['loopback-mbps']).toBeGreaterThan(0);
    // The same raw TCP written from guest RAM instead of the hot buffer, once per repetition.
    expect(r['loopback-cold-runs']).toEqual([r['loopback-cold-mbps']]);
    expect(r['loopback-cold-mbps']).toBeGreaterThan(0);
    expect(r['precopy-vs-loopback-cold']).toBe(fourDigits(r['precopy-mbps'] / r['loopback-cold-mbps']));
    // TCP between two guest RAMs (read in place, its bytes spot-checked), once per repetition.
    expect(r['loopback-memory-runs']).toEqual([r['loopback-memory-mbps']]);
    expect(r['loopback-memory-mbps']).toBeGreaterThan(0);
    expect(r['precopy-vs-loopback-memory']).toBe(fourDigits(r['precopy-mbps'] / r['loopback-memory-mbps']));
    // TCP in QEMU's page records (every page counted, sampled pages compared), once per repetition.
    expect(r['loopback-records-runs']).toEqual([r['loopback-records-mbps']]);
    expect(r['loopback-records-mbps']).toBeGreaterThan(0);
    expect(r['precopy-vs-loopback-records']).toBe(fourDigits(r['precopy-mbps'] / r['loopback-records-mbps']));
    const names = [
      'precopy',
      'precopy-staging',
      'multifd-2',
      ...(zeroCopy ? ['multifd-2-zero-copy'] : []),
      'multifd-4',
      'dirtying',
    ];
    expect(
      r.cases.map((c) => [c.name, c.channels, c.dirtying, c['auto-converge'], c['zero-copy-send']]),
    ).toEqual([
      ['precopy', 0, false, false, false],
      ['precopy-staging', 0, false, false, false],
      ['multifd-2', 2, false, false, false],
      ...(zeroCopy ? [['multifd-2-zero-copy', 2, false, false, true]] : []),
      ['multifd-4', 4, false, false, false],
      ['dirtying', 0, true, true, false],
    ]);
    for (const c of r.cases) {
      expect(c.runs).toHaveLength(1);
      expect(c['downtime-limit']).toBe(300);
      expect(c.converged).toBe(c.status === 'completed');
      // Verified means completed and checked byte for byte; a completed run sent every page once at least.
      expect(c.verified).toBe(c.converged);
      if (c.converged) expect(c.transferred).toBeGreaterThanOrEqual(memory);
      // The check's own time, outside total-time: measured exactly when it ran (one repetition: its value).
      if (c.converged) expect(c['verify-time']).toBeGreaterThan(0);
      else expect(c['verify-time']).toBeUndefined();
      expect(c['verify-time']).toBe(c.runs[0]?.['verify-time']);
      expect(c['within-downtime-limit']).toBe(c.converged && (c.downtime as number) <= 300);
      for (const x of c.runs)
        expect(x.mbps).toBe(fourDigits((x.transferred * 8) / (x['total-time'] - x['setup-time']) / 1000));
      expect(c.mbps).toBe(c.runs[0]?.mbps);
      expect(c['destination-peak-rss-mib']).toBeGreaterThan(16);
      // CPU time, measured in every run (one that stops at the time limit too): both processes
      // worked (the destination at least received 16 MiB), and the load is exactly their sum over
      // the window and this machine's cores.
      const [win, src, dst] = [c['cpu-window-ms'], c['source-cpu-ms'], c['destination-cpu-ms']] as number[];
      expect([typeof win, typeof src, typeof dst]).toEqual(['number', 'number', 'number']);
      expect(src).toBeGreaterThan(0);
      expect(dst).toBeGreaterThan(0);
      // The window runs from setup done (setup-time, to the µs) to the final status, which comes
      // before total-time is read (the run's own ending: a few ms at most).
      expect(win).toBeGreaterThan(0);
      expect(win).toBeLessThanOrEqual(c['total-time'] - c['setup-time'] + 0.002);
      expect(c['cpu-load']).toBe(cpuLoad(src as number, dst as number, win as number));
      expect(c['cpu-load']).toBe(
        fourDigits(((src as number) + (dst as number)) / ((win as number) * r.cores)),
      );
      expect([win, src, dst]).toEqual([
        c.runs[0]?.['cpu-window-ms'],
        c.runs[0]?.['source-cpu-ms'],
        c.runs[0]?.['destination-cpu-ms'],
      ]);
    }
    expect(r.cores).toBe(availableParallelism());
    expect(r.cases.map((c) => c['send-from'])).toEqual(
      names.map((n) => (n === 'precopy-staging' ? 'staging' : 'auto')),
    );
    const byName = (n: string) => r.cases.find((c) => c.name === n) as MigrateBenchResult['cases'][number];
    for (const c of r.cases.filter((x) => !x.dirtying)) {
      // Idle: completed, verified, no write by the vCPUs, so nothing was sent twice but the last sync's pages.
      expect([c.status, c.verified, c['guest-writes-per-s']]).toEqual(['completed', true, 0]);
      // Zero-copy-send handed every page of the idle guest (all random, each sent once) to the
      // kernel by reference; the other runs none.
      expect(c['spliced-bytes']).toBe(c['zero-copy-send'] ? memory : 0);
    }
    expect(byName('dirtying')['guest-writes-per-s']).toBeGreaterThan(0);
    const [precopy, staged, mfd2, mfd4] = ['precopy', 'precopy-staging', 'multifd-2', 'multifd-4'].map(
      byName,
    );
    expect([r['precopy-mbps'], r['precopy-staging-mbps'], r['multifd-2-mbps'], r['multifd-4-mbps']]).toEqual([
      precopy?.mbps,
      staged?.mbps,
      mfd2?.mbps,
      mfd4?.mbps,
    ]);
    expect(r['precopy-vs-loopback']).toBe(fourDigits(r['precopy-mbps'] / r['loopback-mbps']));
    expect(r['precopy-staging-vs-loopback']).toBe(fourDigits(r['precopy-staging-mbps'] / r['loopback-mbps']));
    expect(r['multifd-2-vs-loopback']).toBe(fourDigits(r['multifd-2-mbps'] / r['loopback-mbps']));
    expect(r['multifd-4-vs-loopback']).toBe(fourDigits(r['multifd-4-mbps'] / r['loopback-mbps']));
    if (zeroCopy) {
      const zc = byName('multifd-2-zero-copy');
      expect(r['multifd-2-zero-copy-mbps']).toBe(zc.mbps);
      expect(r['zero-copy-vs-multifd-2-runs']).toEqual([fourDigits(zc.mbps / (mfd2?.mbps as number))]);
      expect(r['zero-copy-vs-multifd-2']).toBe(r['zero-copy-vs-multifd-2-runs']?.[0]);
      // Its data path alone: every byte spliced, placed and sampled, or the bench throws.
      expect(r['loopback-zero-copy-runs']).toEqual([r['loopback-zero-copy-mbps']]);
      expect(r['loopback-zero-copy-mbps']).toBeGreaterThan(0);
      expect(r['multifd-2-zero-copy-vs-loopback-zero-copy']).toBe(
        fourDigits(zc.mbps / (r['loopback-zero-copy-mbps'] as number)),
      );
    } else {
      expect(r['multifd-2-zero-copy-mbps']).toBe(ZERO_COPY_UNAVAILABLE);
      expect(r['zero-copy-vs-multifd-2']).toBeUndefined();
      expect(r['loopback-zero-copy-mbps']).toBe(ZERO_COPY_UNAVAILABLE);
      expect(r['multifd-2-zero-copy-vs-loopback-zero-copy']).toBeUndefined();
    }
    // The C ceiling, beside the rest in each repetition wherever cc builds it: raw TCP and the
    // page records, every page of the receiving RAM compared (or the bench throws).
    const cc = typeof r['c-loopback-mbps'] === 'number';
    if (cc) {
      expect(r['c-loopback-runs']).toEqual([r['c-loopback-mbps']]);
      expect(r['c-records-runs']).toEqual([r['c-records-mbps']]);
      expect(r['c-loopback-mbps']).toBeGreaterThan(0);
      expect(r['c-records-mbps']).toBeGreaterThan(0);
      expect(r['c-records-vs-loopback']).toBe(
        fourDigits((r['c-records-mbps'] as number) / r['loopback-mbps']),
      );
      expect(r['precopy-vs-c-records']).toBe(fourDigits(r['precopy-mbps'] / (r['c-records-mbps'] as number)));
    } else {
      console.info(`the C ceiling not measured here: ${String(r['c-loopback-mbps'])}`);
      // No cc, or one that could not build it (its complaint then): the bench goes on.
      expect(r['c-loopback-mbps']).toMatch(/^unavailable: /);
      expect([r['c-records-mbps'], r['precopy-vs-c-records']]).toEqual([undefined, undefined]);
    }
    const table = formatMigrateBench(r).split('\n');
    if (cc) {
      expect(table).toContain(
        `| C ceiling: raw TCP, 16.0 MiB to a discarding process | – | – | – | – | ${r['c-loopback-mbps']} | ` +
          `${fourDigits((r['c-loopback-mbps'] as number) / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
      );
      expect(table).toContain(
        `| C ceiling: 16.0 MiB as QEMU's page records, each page copied into guest RAM | – | – | – | – | ${r['c-records-mbps']} | ` +
          `${r['c-records-vs-loopback']} | verified | – | – | – | – | – | – |`,
      );
      expect(table).toContain(
        `The same page records between two C processes reach ${r['c-records-vs-loopback']} of raw loopback (runs ${r['c-records-mbps']} Mbit/s; raw TCP in C ${r['c-loopback-mbps']}); precopy reaches ${r['precopy-vs-c-records']} of them.`,
      );
    } else expect(table).toContain(`C ceiling: ${String(r['c-loopback-mbps'])}.`);
    // One model prediction per live run, over the measured link and write rate, with its error.
    expect(r.model.map((m) => m.case)).toEqual(names);
    for (const [i, m] of r.model.entries()) {
      const c = r.cases[i] as MigrateBenchResult['cases'][number];
      expect(m.scenario.memory).toBe(memory);
      expect(m.scenario.link?.bandwidth).toBe(Math.round((r['loopback-mbps'] * 1e6) / 8));
      expect(m.scenario.workload?.rate).toBe(Math.round(c['guest-writes-per-s'] * 4096));
      expect(m.scenario.migration?.capabilities?.multifd).toBe(c.channels > 0);
      expect(m.scenario.migration?.capabilities?.['zero-copy-send'] ?? false).toBe(c['zero-copy-send']);
      // The live run's algorithm: its final copy planned for half of downtime-limit.
      expect(m.scenario.migration?.['switchover-share']).toBe(0.5);
      // And its setup: the model's setup lasts as long, and the live rate is the rate after it.
      expect(c['setup-time']).toBeGreaterThan(0);
      expect(m.scenario.migration?.['setup-time']).toBe(c['setup-time']);
      expect(m['total-time-error-pct']).toBe(errorPct(m['total-time'], c['total-time']));
      expect(m['transferred-error-pct']).toBe(errorPct(m.transferred, c.transferred));
      const at = m['at-live-rate'];
      expect(at['link-mbps']).toBe(
        fourDigits((c.transferred * 8) / (c['total-time'] - c['setup-time']) / 1000),
      );
      expect(at['total-time-error-pct']).toBe(errorPct(at['total-time'], c['total-time']));
      expect(at['transferred-error-pct']).toBe(errorPct(at.transferred, c.transferred));
      // An error only where both have a downtime (the live one > 0): a run that did not converge
      // within its time limit has none. A clean-clone CI run failed here when this test took the
      // error as always there.
      const e = at['downtime-error-pct'];
      if (c.downtime !== undefined && c.downtime > 0 && at.downtime !== undefined)
        expect(e).toBe(errorPct(at.downtime, c.downtime));
      else expect(e).toBeUndefined();
      const cell =
        at.downtime === undefined
          ? '–'
          : e === undefined
            ? String(at.downtime)
            : `${at.downtime} (${e > 0 ? '+' : ''}${e.toFixed(1)}%)`;
      const row = table.find((l) => l.startsWith(`| ${c.name}:`)) as string;
      expect(row.endsWith(` | ${cell} |`)).toBe(true);
    }
    // An idle guest of random pages: the model sends exactly what the live run did but headers.
    expect(r.model[0]?.status).toBe('completed');
    expect(r['peak-rss-mib']).toBeGreaterThan(0);
    expect(r['receiver-peak-rss-mib']).toBeGreaterThan(0);

    expect(table[0]).toBe(
      `# migrate: live migration on loopback, 2 vCPUs per guest, medians of 1 (Node ${r.node}), guest RAM ` +
        (r['huge-pages'] ? 'on transparent huge pages' : 'on 4 KiB pages'),
    );
    expect(table.filter((l) => l.startsWith('| '))).toHaveLength((zeroCopy ? 12 : 10) + (cc ? 2 : 1));
    expect(table).toContain(
      zeroCopy
        ? `multifd-2 with zero-copy-send over the plain multifd-2 run before it: ${r['zero-copy-vs-multifd-2']} (median ${r['zero-copy-vs-multifd-2']}).`
        : `multifd-2 with zero-copy-send: ${ZERO_COPY_UNAVAILABLE}.`,
    );
    expect(table).toContain(
      zeroCopy
        ? `multifd-2 with zero-copy-send over TCP between memories in its own packets, zero-copy (its data path alone): ${r['multifd-2-zero-copy-vs-loopback-zero-copy']}.`
        : `TCP between memories with zero-copy-send: ${ZERO_COPY_UNAVAILABLE}.`,
    );
    if (zeroCopy)
      expect(table).toContain(
        `| TCP between memories in multifd packets, zero-copy-send: 16.0 MiB of guest RAM spliced, read in place | – | – | – | – | ${r['loopback-zero-copy-mbps']} | ` +
          `${fourDigits((r['loopback-zero-copy-mbps'] as number) / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
      );
    if (zeroCopy)
      expect(
        table.some((l) =>
          l.startsWith('| multifd-2-zero-copy: idle 16.0 MiB, zero-copy-send (16.0 MiB spliced) |'),
        ),
      ).toBe(true);
    expect(table).toContain(
      `| raw TCP from guest RAM: 16.0 MiB of cold guest RAM to the same process | – | – | – | – | ${r['loopback-cold-mbps']} | ` +
        `${fourDigits(r['loopback-cold-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
    );
    expect(table).toContain(
      `precopy over raw TCP from guest RAM (the sender's copy reading cold memory, as precopy's does): ${r['precopy-vs-loopback-cold']}.`,
    );
    expect(table).toContain(
      `| TCP between memories: 16.0 MiB of guest RAM read in place into guest RAM | – | – | – | – | ${r['loopback-memory-mbps']} | ` +
        `${fourDigits(r['loopback-memory-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
    );
    expect(table).toContain(
      `| TCP in QEMU's page records: 16.0 MiB, each page copied from the read buffer into guest RAM | – | – | – | – | ${r['loopback-records-mbps']} | ` +
        `${fourDigits(r['loopback-records-mbps'] / r['loopback-mbps'])} | – | – | – | – | – | – | – |`,
    );
    expect(table).toContain(
      `precopy over TCP between memories (one connection, no copy in user space): ${r['precopy-vs-loopback-memory']}; ` +
        `over TCP in its own page records (read as the bench's Node reader reads them): ${r['precopy-vs-loopback-records']}.`,
    );
    expect(table).toContain(
      `Downtime of each repetition, ms (the live link is pipelined: when the last window queued the rest of RAM, almost nothing is pending at the stop): ${r.cases
        .map((c) => `${c.name} ${(c.runs[0] as { downtime?: number }).downtime ?? '–'}`)
        .join('; ')}.`,
    );
    expect(table).toContain(
      `Byte-for-byte check after completion (outside total-time), median ms: ${r.cases
        .map((c) => `${c.name} ${c['verify-time'] ?? '–'}`)
        .join(', ')}.`,
    );
    expect(table).toContain(
      `CPU time from setup done to completed (the middle repetition by total-time; each process's every thread; ${r.cores} cores), ms: ${r.cases
        .map(
          (c) =>
            `${c.name} source ${c['source-cpu-ms']} + destination ${c['destination-cpu-ms']} in ${Math.round(c['cpu-window-ms'] as number)} (load ${c['cpu-load']})`,
        )
        .join(', ')}.`,
    );
    // The side-by-side ratios: each repetition over its own loopback, and their median.
    for (const c of r.cases) {
      expect(c['vs-loopback-runs']).toEqual([
        fourDigits((c.runs[0] as { mbps: number }).mbps / r['loopback-mbps']),
      ]);
      expect(c['vs-loopback-paired']).toBe(c['vs-loopback-runs'][0]);
    }
    expect(r['precopy-vs-loopback-paired']).toBe(r.cases[0]?.['vs-loopback-paired']);
    expect(table).toContain(
      `precopy over each repetition's own loopback: ${r.cases[0]?.['vs-loopback-runs'][0]} (median ${r['precopy-vs-loopback-paired']}).`,
    );
    // Six live migrations and four loopback runs: ~14 s alone, ~22 s beside two busy loops, and once
    // over 60 s beside a whole second npm test on the same 2 cores.
  }, 120_000);

  it("mbps is QEMU's final one: the bytes over total-time less setup-time (0 with no time after setup)", () => {
    // 1 GiB + its 262,144 eight-byte headers in 469 ms of which 17 were setup: 19,041.4 Mbit/s
    // (over the whole 469 ms, 18,351.2: the bench's definition before, which counted setup).
    expect(finalMbps(1_075_838_976, 469, 17)).toBeCloseTo(19_041.4, 1);
    expect([finalMbps(1_000_000, 10, 2), finalMbps(1_000_000, 5, 5), finalMbps(0, 3, 1)]).toEqual([
      1000, 0, 0,
    ]);
  });

  it('errorPct is (model − live) / live in %, one decimal', () => {
    expect([errorPct(110, 100), errorPct(50, 200), errorPct(1, 3)]).toEqual([10, -75, -66.7]);
  });

  it.each([
    [['--memory', '1536K'], '--memory'],
    [['--dirty-memory', '3X'], '--dirty-memory'],
    [['--vcpus', '0'], '--vcpus'],
    [['--time-limit', 'x'], '--time-limit'],
  ])('rejects %j with one line naming %s (exit 2)', async (args, flag) => {
    const out = await run('bench', 'migrate', ...args);
    expect(out.code).toBe(2);
    expect(out.stderr.trim().split('\n')).toHaveLength(1);
    expect(out.stderr).toContain(flag);
  });
});

// The usage preload that reports a destination's CPU time and peak RSS on fd 3: with worker
// threads that end before the process (a destination's vCPUs), the exit line must still arrive.
// Until d53fc4c the preload ran in every worker too, and the first worker to exit closed fd 3:
// `bench migrate` reported a peak RSS of 0 for every 1 GiB destination, and its 16 MiB test
// could not see it.
describe("bench migrate's usage preload", () => {
  it('answers each CPU query and writes the peak RSS at exit, after worker threads have come and gone', async () => {
    // Workers from a file, as the destination's vCPUs are (the preload runs in those, not in eval'd ones).
    const dir = await mkdtemp(join(tmpdir(), 'dirtytrack-preload-'));
    const worker = join(dir, 'worker.cjs');
    await writeFile(worker, 'setTimeout(() => {}, 50);\n');
    const script =
      "const { Worker } = require('node:worker_threads');" +
      // Two workers that end after 50 ms; then the main thread says so and lives 300 ms more.
      `let n = 0; for (let i = 0; i < 2; i++) new Worker(${JSON.stringify(worker)}).on('exit', () => { if (++n === 2) { console.log('gone'); setTimeout(() => {}, 300); } });`;
    const child = spawn(process.execPath, ['--import', USAGE_PRELOAD, '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    });
    const gone = new Promise((r) => child.stdout?.setEncoding('utf8').once('data', r));
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const fd3 = child.stdio[3] as Socket;
    let text = '';
    fd3.setEncoding('utf8').on('data', (c: string) => (text += c));
    // One query while it runs, once the workers are gone.
    expect(await gone).toBe('gone\n');
    fd3.write('c');
    const code = await new Promise((r) => child.once('close', r));
    await rm(dir, { recursive: true });
    expect([code, stderr]).toEqual([0, '']);
    const lines = text.trim().split('\n');
    // The query answered by the main thread after the workers had gone, then its exit line (with
    // the fault, fd 3 closed by the first worker: only that worker's exit line).
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^cpu [1-9]\d*$/);
    expect(lines[1]).toMatch(/^exit [1-9]\d*$/);
    // Peak RSS in KiB: more than any Node process's 16 MiB.
    expect(Number(lines[1]?.split(' ')[1])).toBeGreaterThan(16384);
  });
});
