import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { encodeTrace, formatTraceText, parseTrace } from '@dirtytrack/guest';
import { afterAll, describe, expect, it } from 'vitest';
import { run, runJson } from './__fixtures__/run.js';
import { resolveScenarioPaths } from './scenario.js';

/** A page record on the wire: an 8-byte header, then the 4 KiB page. */
const NORMAL_RECORD = 8 + 4096;
const MS = 1_000_000;

const tmp = mkdtempSync(join(tmpdir(), 'dirtytrack-cli-trace-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// A 64-page (256 KiB) guest with one vCPU: pages 0–9 at 0 ms, pages 10 and 11 at 5 ms; 10 ms long.
const traceInput = {
  pages: 64,
  vcpus: 1,
  periodNs: 10 * MS,
  records: [
    { timeNs: 0, vcpu: 0, pages: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] },
    { timeNs: 5 * MS, vcpu: 0, pages: [10, 11] },
  ],
};
const traceFile = join(tmp, 'guest.trace');
writeFileSync(traceFile, encodeTrace(traceInput));
const textFile = join(tmp, 'guest.trace.txt');
writeFileSync(textFile, formatTraceText(parseTrace(encodeTrace(traceInput))));
const emptyFile = join(tmp, 'empty.trace');
writeFileSync(emptyFile, encodeTrace({ ...traceInput, records: [] }));

/** The guest, a 1 MiB/s migration (256 KiB takes ~100 ms), the trace's workload. */
const guest = (file: string, ...more: string[]): string[] => [
  'simulate',
  '--set',
  'memory=256K',
  '--set',
  'vcpus=1',
  '--set',
  'migration.parameters.max-bandwidth=1M',
  '--set',
  'workload.kind=trace',
  '--set',
  `workload.file=${file}`,
  ...more,
];

describe('simulate with workload kind: trace', () => {
  it('replays the trace once: 12 writes, pages 10 and 11 dirty again after the first pass', async () => {
    const { result } = await runJson(...guest(traceFile));
    expect(result.dirtytrack.pipeline.workload).toBe('trace');
    expect(result.dirtytrack.vcpu.writes).toBe(12);
    expect(result.dirtytrack.vcpu.faults).toBe(12);
    expect(result.status).toBe('completed');
    expect(result.ram['dirty-sync-count']).toBe(3);
    // Pages 0–9 are written before the setup sync (they are dirty from the start anyway); 10, 11 at 5 ms.
    expect(result.trajectory.map((t) => t['new-dirty-pages'])).toEqual([0, 2, 0]);
    expect(result.ram.normal).toBe(64 + 2);
    expect(result.ram.transferred).toBe((64 + 2) * NORMAL_RECORD);
  });

  it('loop: true repeats it every 10 ms: 13 passes begun in ~100 ms, 12 pages re-sent', async () => {
    const { result } = await runJson(...guest(traceFile, '--set', 'workload.loop=true'));
    expect(result.dirtytrack.vcpu.writes).toBe(130); // 10 whole passes × 12 + the next pass's first 10
    expect(result.dirtytrack.vcpu.faults).toBe(22);
    expect(result.trajectory.map((t) => t['new-dirty-pages'])).toEqual([0, 12, 0]);
    expect(result.ram.normal).toBe(64 + 12);
    expect(result.ram.transferred).toBe((64 + 12) * NORMAL_RECORD);
  });

  it('run-before: the guest has run that long when the migration starts, and the replay is that far along', async () => {
    // 6 ms in, the one pass is over: nothing is written during the migration.
    const { result: over } = await runJson(...guest(traceFile, '--set', 'workload.run-before=0.006'));
    expect(over.dirtytrack.vcpu.writes).toBe(0);
    expect(over.ram.normal).toBe(64);
    expect(over.ram.transferred).toBe(64 * NORMAL_RECORD);
    // 3 ms in, pages 0–9 were written before (not logged), pages 10 and 11 come 2 ms into the run.
    const { result: mid } = await runJson(...guest(traceFile, '--set', 'workload.run-before=0.003'));
    expect(mid.dirtytrack.vcpu.writes).toBe(2);
    expect(mid.trajectory.map((t) => t['new-dirty-pages'])).toEqual([0, 2, 0]);
    expect(mid.ram.normal).toBe(64 + 2);
    // Looping, a whole number of periods ahead is where it started: the same run as none.
    const loop = ['--set', 'workload.loop=true'];
    const { result: none } = await runJson(...guest(traceFile, ...loop));
    const { result: three } = await runJson(
      ...guest(traceFile, ...loop, '--set', 'workload.run-before=0.03'),
    );
    expect(three.ram).toEqual(none.ram);
    expect(three.dirtytrack.vcpu.writes).toBe(none.dirtytrack.vcpu.writes);
    const bad = await run(...guest(traceFile, '--set', 'workload.run-before=-1'));
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^[^\n]*workload\.run-before[^\n]*\n$/);
  });

  it('an empty trace writes nothing: every page is sent once', async () => {
    const { result } = await runJson(...guest(emptyFile));
    expect(result.dirtytrack.vcpu.writes).toBe(0);
    expect(result.ram.normal).toBe(64);
    expect(result.ram.transferred).toBe(64 * NORMAL_RECORD);
  });

  it('the text form gives byte-identical JSON, and a relative --set path reads from the current directory', async () => {
    const binary = await runJson(...guest(traceFile));
    expect((await runJson(...guest(textFile))).stdout).toBe(binary.stdout);
    expect((await runJson(...guest(relative(process.cwd(), traceFile)))).stdout).toBe(binary.stdout);
  });

  it('scale: true replays a 64-page trace on a 128-page guest (page p → 2p)', async () => {
    const { result } = await runJson(
      ...guest(traceFile, '--set', 'memory=512K', '--set', 'workload.scale=true'),
    );
    expect(result.dirtytrack.vcpu.writes).toBe(12);
    expect(result.trajectory.map((t) => t['new-dirty-pages'])).toEqual([0, 2, 0]);
    expect(result.ram.normal).toBe(128 + 2);
  });

  it('a scenario file laid over the same preset: the same run as with --set', async () => {
    const scenario = join(tmp, 'trace.yaml');
    writeFileSync(
      scenario,
      [
        'memory: 256K',
        'vcpus: 1',
        'migration:',
        '  parameters:',
        '    max-bandwidth: 1M',
        'workload:',
        '  kind: trace',
        `  file: ${JSON.stringify(traceFile)}`,
        '',
      ].join('\n'),
    );
    const fromFile = await runJson('simulate', '--preset', 'small', '--scenario', scenario);
    const fromSet = await runJson(...guest(traceFile));
    expect(fromFile.result.ram).toEqual(fromSet.result.ram);
    expect(fromFile.result.dirtytrack.vcpu).toEqual(fromSet.result.dirtytrack.vcpu);
  });

  it('a scenario file’s relative workload.file is read from the file’s directory, not the cwd', async () => {
    const scenario = join(tmp, 'relative.yaml');
    writeFileSync(scenario, ['workload:', '  kind: trace', '  file: guest.trace', ''].join('\n'));
    const sets = guest(traceFile).slice(1, 7); // memory, vcpus, max-bandwidth
    const fromFile = await runJson('simulate', '--preset', 'small', ...sets, '--scenario', scenario);
    const fromSet = await runJson(...guest(traceFile));
    expect(fromFile.result.ram).toEqual(fromSet.result.ram);
  });

  it('resolveScenarioPaths makes a relative workload.file read from the scenario file’s directory', () => {
    expect(resolveScenarioPaths({ workload: { kind: 'trace', file: 'guest.trace' } }, tmp)).toEqual({
      workload: { kind: 'trace', file: traceFile },
    });
    const absolute = { workload: { file: traceFile } };
    expect(resolveScenarioPaths(absolute, '/elsewhere')).toBe(absolute);
    const odd = { workload: { file: 7 } };
    expect(resolveScenarioPaths(odd, tmp)).toBe(odd);
  });
});

describe('bad trace input: exit 2 and one line naming workload.file', () => {
  const expectUsage = async (argv: string[], line: string): Promise<void> => {
    const r = await run(...argv);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`dirtytrack: ${line}\n`);
  };

  it('a missing file', async () => {
    const missing = join(tmp, 'missing.trace');
    await expectUsage(guest(missing), `workload.file: cannot read ${missing}: ENOENT`);
  });

  it('an unknown version, with its byte offset', async () => {
    const bad = join(tmp, 'v9.trace');
    const bytes = encodeTrace(traceInput);
    bytes[8] = 9;
    writeFileSync(bad, bytes);
    await expectUsage(
      guest(bad),
      `workload.file: ${bad} is not a valid trace: trace byte 8: unknown version 9 (accepted: 1)`,
    );
  });

  it('a truncated file, with its byte offset', async () => {
    const bad = join(tmp, 'cut.trace');
    writeFileSync(bad, encodeTrace(traceInput).subarray(0, 100));
    await expectUsage(
      guest(bad),
      `workload.file: ${bad} is not a valid trace: trace byte 100: truncated: after record 0's 10 pages the 1 records left cannot fit`,
    );
  });

  it('a file that is no trace at all', async () => {
    const bad = join(tmp, 'not.trace');
    writeFileSync(bad, 'hello\n');
    await expectUsage(
      guest(bad),
      `workload.file: ${bad} is not a valid trace: trace byte 0: bad magic (accepted: a binary trace starting "DTTRACE\\0", or a text trace starting "dirtytrack-trace")`,
    );
  });

  it('a trace of another guest size without scale', async () => {
    await expectUsage(
      guest(traceFile, '--set', 'memory=512K'),
      `workload.file: ${traceFile} was taken on a guest of 64 pages, the scenario has 128 (accepted: memory 262144, or workload.scale: true)`,
    );
  });

  it('a trace of more vCPUs than the scenario has', async () => {
    const wide = join(tmp, 'wide.trace');
    writeFileSync(wide, encodeTrace({ ...traceInput, vcpus: 2 }));
    await expectUsage(
      guest(wide),
      `workload.file: ${wide} was taken on 2 vCPUs, the scenario has 1 (accepted: vcpus >= 2)`,
    );
  });

  it('kind: trace without a file, and trace keys on another kind', async () => {
    await expectUsage(
      ['simulate', '--set', 'workload.kind=trace'],
      'workload.file: is required with kind: trace (accepted: the path of a trace file)',
    );
    await expectUsage(
      ['simulate', '--set', `workload.file=${traceFile}`],
      'workload.file: applies to kind: trace only (kind is uniform)',
    );
    await expectUsage(
      ['simulate', '--set', 'workload.loop=true'],
      'workload.loop: applies to kind: trace only (kind is uniform)',
    );
    await expectUsage(
      guest(traceFile, '--set', 'workload.scale=yes'),
      'workload.scale: expected true or false',
    );
  });
});
