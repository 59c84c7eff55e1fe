import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it, onTestFinished } from 'vitest';
import { run, spawnServe, spawnServeWith } from './__fixtures__/run.js';
import { STANDBY_BOOT_TIMEOUT_MS, vcpuStateJson } from './live.js';

// QEMU's conformance check 1, "the guest runs" on the destination: serve --run-after boots
// worker vCPUs over the memory it received, once the migration completed and verified.

describe('serve --run-after', () => {
  it('runs the received guest on after a verified migration', async () => {
    const serve = await spawnServe('--memory', '16M', '--once', '--run-after', '200', '--json');
    const r = await run('migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ status: 'completed', verified: true });
    const { code, stdout } = await serve.output;
    expect(code).toBe(0);
    const destination = JSON.parse(stdout) as { resumed: { ms: number; vcpus: number; writes: number } };
    expect(destination).toMatchObject({
      status: 'completed',
      verified: true,
      resumed: { ms: 200, vcpus: 2, 'booted-ahead': 2 },
    });
    expect(destination.resumed.writes).toBeGreaterThan(0);
  }, 60_000);

  it('vCPU workers that never boot: serve waits 30 s for them, says so in one line, listens without them, and the guest run there boots its own', async () => {
    // Every standby worker of this serve hangs before its imports (the preload blocks it).
    const hang = fileURLToPath(new URL('./__fixtures__/hang-standby.cjs', import.meta.url));
    const env = {
      ...process.env,
      NODE_OPTIONS: `${process.env['NODE_OPTIONS'] ?? ''} --require ${JSON.stringify(hang)}`.trim(),
    };
    const spawned = Date.now();
    const serve = await spawnServeWith(env, '--memory', '16M', '--once', '--run-after', '200', '--json');
    // It listened only once the bound had passed.
    expect(Date.now() - spawned).toBeGreaterThanOrEqual(STANDBY_BOOT_TIMEOUT_MS);
    const r = await run('migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ status: 'completed', verified: true });
    const { code, stdout, stderr } = await serve.output;
    expect(code).toBe(0);
    expect(stderr).toBe(
      'serve: 2 of 2 vCPU workers did not boot within 30 s; listening without them (a guest run here boots its own)\n',
    );
    const destination = JSON.parse(stdout) as { resumed: { ms: number; vcpus: number; writes: number } };
    // None stood by: the guest booted both of its vCPUs itself, and they ran.
    expect(destination).toMatchObject({
      status: 'completed',
      verified: true,
      resumed: { ms: 200, vcpus: 2, 'booted-ahead': 0 },
    });
    expect(destination.resumed.writes).toBeGreaterThan(0);
  }, 120_000);

  it('a trace program replays every record once and then idles: exactly the trace’s writes', async () => {
    // 2 vCPUs, 10 batches of 8 pages each over 100 ms, no loop: 160 writes, then nothing more.
    const lines = ['dirtytrack-trace 1 pages=4096 vcpus=2 period=100000000'];
    for (let t = 0; t < 10; t++)
      for (let v = 0; v < 2; v++)
        lines.push(
          `${t * 10_000_000 + v} ${v} ${Array.from({ length: 8 }, (_, i) => v * 2048 + t * 8 + i).join(',')}`,
        );
    const file = join(tmpdir(), `dirtytrack-resume-${process.pid}.trace`);
    writeFileSync(file, lines.join('\n') + '\n');
    onTestFinished(() => rmSync(file, { force: true }));
    const serve = await spawnServe(
      ...[
        '--memory',
        '16M',
        '--once',
        '--run-after',
        '1500',
        '--json',
        '--workload',
        'trace',
        '--trace',
        file,
      ],
    );
    const r = await run('migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M', '--json');
    expect(r.code).toBe(0);
    const { code, stdout } = await serve.output;
    expect(code).toBe(0);
    const destination = JSON.parse(stdout) as { resumed: { ms: number; vcpus: number; writes: number } };
    // The source's 2 vCPUs sent their state: the 2 here go on from it (a uniform source had not
    // started the trace, so it starts at its beginning).
    expect(destination.resumed).toEqual({
      ms: 1500,
      vcpus: 2,
      workload: 'trace',
      writes: 160,
      continued: true,
      'booted-ahead': 2,
    });
  }, 60_000);

  it('a source’s trace goes with it (GUEST_TRACE): serve, given no --trace, replays the rest of it, so the two guests write every record once in all', async () => {
    // 2 vCPUs, 10 records of 8 pages each per vCPU, one every 200 ms, no loop: the migration
    // (about 0.3 s here) usually stops the source mid-trace. Whenever it stops, the sums hold.
    const at = (t: number, v: number): number => t * 200_000_000 + v;
    const lines = ['dirtytrack-trace 1 pages=4096 vcpus=2 period=2000000000'];
    for (let t = 0; t < 10; t++)
      for (let v = 0; v < 2; v++)
        lines.push(`${at(t, v)} ${v} ${Array.from({ length: 8 }, (_, i) => v * 2048 + t * 8 + i).join(',')}`);
    const text = lines.join('\n') + '\n';
    const file = join(tmpdir(), `dirtytrack-trace-wire-${process.pid}.trace`);
    writeFileSync(file, text);
    onTestFinished(() => rmSync(file, { force: true }));
    const serve = await spawnServe('--memory', '16M', '--once', '--run-after', '2500', '--json');
    const r = await run(
      ...['migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M'],
      ...['--workload', 'trace', '--trace', file, '--json'],
    );
    expect(r.code).toBe(0);
    const source = JSON.parse(r.stdout) as {
      verified: boolean;
      dirtytrack: { 'vcpu-state': { vcpus: { 'trace-before-ns': number; 'trace-written': number }[] } };
    };
    expect(source.verified).toBe(true);
    const { code, stdout } = await serve.output;
    expect(code).toBe(0);
    const destination = JSON.parse(stdout) as {
      'guest-trace': unknown;
      resumed: { writes: number };
    };
    expect(destination['guest-trace']).toEqual({ bytes: Buffer.byteLength(text), loop: false, scale: false });
    // What the source's vCPUs wrote of the trace: every record before their clock, and the part
    // of the batch at it; the destination's wrote exactly the rest.
    const state = source.dirtytrack['vcpu-state'].vcpus;
    expect(state).toHaveLength(2);
    const writtenThere = state.reduce((sum, v, vcpu) => {
      let records = 0;
      for (let t = 0; t < 10; t++) if (at(t, vcpu) < v['trace-before-ns']) records++;
      return sum + 8 * records + v['trace-written'];
    }, 0);
    expect(destination.resumed).toEqual({
      ms: 2500,
      vcpus: 2,
      workload: 'trace',
      writes: 160 - writtenThere,
      continued: true,
      'booted-ahead': 2,
    });
  }, 60_000);

  it('the source sends its stopped vCPUs’ state (VCPU_STATE) and the guest run here goes on from it', async () => {
    const serve = await spawnServe(
      ...['--memory', '16M', '--once', '--run-after', '200', '--json', '--workload', 'sweep'],
    );
    const r = await run(
      ...['migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M', '--workload', 'sweep', '--json'],
    );
    expect(r.code).toBe(0);
    const source = JSON.parse(r.stdout) as {
      dirtytrack: { 'vcpu-state': { program: { kind: string }; vcpus: { sweep: number }[] } };
    };
    const { code, stdout } = await serve.output;
    expect(code).toBe(0);
    const destination = JSON.parse(stdout) as {
      'vcpu-state': unknown;
      resumed: { vcpus: number; writes: number; continued: boolean };
    };
    // What the source sent is what arrived, field for field; the sweep had moved on.
    expect(destination['vcpu-state']).toEqual(source.dirtytrack['vcpu-state']);
    expect(source.dirtytrack['vcpu-state'].program.kind).toBe('sweep');
    expect(source.dirtytrack['vcpu-state'].vcpus).toHaveLength(2);
    for (const v of source.dirtytrack['vcpu-state'].vcpus) expect(v.sweep).toBeGreaterThan(0);
    expect(destination.resumed).toMatchObject({ vcpus: 2, continued: true });
    expect(destination.resumed.writes).toBeGreaterThan(0);
  }, 60_000);

  it('without --workload or --vcpus, the guest run here is the source’s: its program and its vCPUs (they came with the vCPU state)', async () => {
    // An idle 3-vCPU source: serve is not told, yet its guest runs 3 vCPUs (not its default 2)
    // at speed 0, goes on from their state and writes exactly nothing. Its default 2 were booted
    // ahead (standing by since serve started); the third boots when the guest arrives.
    const serve = await spawnServe('--memory', '16M', '--once', '--run-after', '300', '--json');
    const r = await run(
      ...['migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M', '--vcpus', '3'],
      ...['--workload', 'idle', '--json'],
    );
    expect(r.code).toBe(0);
    const { code, stdout } = await serve.output;
    expect(code).toBe(0);
    const destination = JSON.parse(stdout) as { resumed: unknown };
    expect(destination.resumed).toEqual({
      ms: 300,
      vcpus: 3,
      workload: 'idle',
      writes: 0,
      continued: true,
      'booted-ahead': 2,
    });
  }, 60_000);

  it('a program given here (--workload) keeps --vcpus’ count (default 2), whatever the source had', async () => {
    const serve = await spawnServe(
      '--memory',
      '16M',
      '--once',
      '--run-after',
      '200',
      '--json',
      '--workload',
      'idle',
    );
    const r = await run(
      ...['migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M', '--vcpus', '3', '--json'],
    );
    expect(r.code).toBe(0);
    const { code, stdout } = await serve.output;
    expect(code).toBe(0);
    const destination = JSON.parse(stdout) as { resumed: unknown };
    // 2 here, 3 on the source: the state does not fit, they start afresh (and idle: no write).
    expect(destination.resumed).toEqual({
      ms: 200,
      vcpus: 2,
      workload: 'idle',
      writes: 0,
      continued: false,
      'booted-ahead': 2,
    });
  }, 60_000);

  it.each([
    // An idle program boots its vCPUs at speed 0: exactly no write.
    [['--vcpus', '3', '--workload', 'idle'], 3, false],
    [['--vcpus', '3', '--workload', 'sweep', '--rate', '0'], 3, true],
  ])(
    '%j: the guest run here is the program given',
    async (flags, vcpus, writes) => {
      const serve = await spawnServe('--memory', '16M', '--once', '--run-after', '200', '--json', ...flags);
      const r = await run('migrate', '--to', `127.0.0.1:${serve.port}`, '--memory', '16M', '--json');
      expect(r.code).toBe(0);
      const { code, stdout } = await serve.output;
      expect(code).toBe(0);
      const destination = JSON.parse(stdout) as { resumed: { ms: number; vcpus: number; writes: number } };
      // 3 vCPUs here, 2 on the source: its state does not fit, they start afresh.
      // --vcpus 3 here: all 3 stood by from serve's start.
      expect(destination.resumed).toMatchObject({ ms: 200, vcpus, continued: false, 'booted-ahead': 3 });
      if (writes) expect(destination.resumed.writes).toBeGreaterThan(0);
      else expect(destination.resumed.writes).toBe(0);
    },
    60_000,
  );
});

describe('vcpuStateJson: VCPU_STATE in the JSON results', () => {
  it('every field, renamed to kebab-case, values as they are', () => {
    const json = vcpuStateJson({
      program: { kind: 'hot-set', hotPages: 4096, hotShare: 230, rate: 5000, seed: 7 },
      vcpus: [
        { rng: [1, 2, 3, 4], sweep: 17, traceBeforeNs: 2e9, traceAfterNs: 3e9, traceWritten: 5 },
        { rng: [5, 6, 7, 8], sweep: 0, traceBeforeNs: 0, traceAfterNs: 0, traceWritten: 0 },
      ],
    });
    expect(json).toEqual({
      program: { kind: 'hot-set', 'hot-pages': 4096, 'hot-share': 230, rate: 5000, seed: 7 },
      vcpus: [
        { rng: [1, 2, 3, 4], sweep: 17, 'trace-before-ns': 2e9, 'trace-after-ns': 3e9, 'trace-written': 5 },
        { rng: [5, 6, 7, 8], sweep: 0, 'trace-before-ns': 0, 'trace-after-ns': 0, 'trace-written': 0 },
      ],
    });
    expect(JSON.stringify(json)).not.toMatch(/[a-z][A-Z]/); // no camelCase key left
  });
});
