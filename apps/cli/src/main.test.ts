import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runJson, type SimulateJson } from './__fixtures__/run.js';
import { PRESETS } from './presets.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const PAGE = 4096;
/** Wire record sizes: an 8-byte header, then the page (normal) or one fill byte (zero page). */
const NORMAL_RECORD = 8 + PAGE;
const ZERO_RECORD = 8 + 1;

const tmp = mkdtempSync(join(tmpdir(), 'dirtytrack-cli-main-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('simulate --preset small --json', () => {
  let stdout = '';
  let r: SimulateJson;
  beforeAll(async () => {
    const out = await run('simulate', '--preset', 'small', '--json');
    expect(out.code).toBe(0);
    expect(out.stderr).toBe('');
    stdout = out.stdout;
    r = JSON.parse(stdout) as SimulateJson;
  });

  it('prints exactly one JSON object, newline-terminated', () => {
    expect(stdout.startsWith('{\n')).toBe(true);
    expect(stdout.endsWith('}\n')).toBe(true);
    const parsed: unknown = JSON.parse(stdout);
    expect(typeof parsed).toBe('object');
    expect(Array.isArray(parsed)).toBe(false);
    expect(parsed).not.toBeNull();
  });

  it("has query-migrate's fields, with number values", () => {
    expect(r).toMatchObject({
      status: expect.any(String),
      'total-time': expect.any(Number),
      downtime: expect.any(Number),
      'setup-time': expect.any(Number),
      'expected-downtime': expect.any(Number),
      ram: {
        total: expect.any(Number),
        transferred: expect.any(Number),
        remaining: expect.any(Number),
        normal: expect.any(Number),
        duplicate: expect.any(Number),
        'dirty-sync-count': expect.any(Number),
        'dirty-pages-rate': expect.any(Number),
        mbps: expect.any(Number),
      },
      trajectory: expect.any(Array),
    });
    for (const entry of r.trajectory) {
      expect(entry).toMatchObject({
        time: expect.any(Number),
        remaining: expect.any(Number),
        'dirty-rate': expect.any(Number),
        transferred: expect.any(Number),
      });
    }
  });

  it('completes with the whole 4 GiB sent and nothing remaining', () => {
    expect(r.status).toBe('completed');
    expect(r.ram.total).toBe(4 * GiB);
    expect(r.ram.remaining).toBe(0);
    expect(r.ram['page-size']).toBe(PAGE);
    // Every page goes at least once.
    expect(r.ram.normal + r.ram.duplicate).toBeGreaterThanOrEqual(r.ram.total / PAGE);
    expect(r.dirtytrack).toEqual({
      scenario: 'small',
      seed: 1,
      'stop-reason': 'converged',
      pipeline: { workload: 'uniform', tracker: 'wp', reporter: 'bitmap', layers: 'single-hop' },
      vcpu: expect.any(Object),
      events: [
        { status: 'setup', time: 0, remaining: 0 },
        { status: 'active', time: r['setup-time'], remaining: r.ram.total },
        { status: 'completed', time: r['total-time'], remaining: 0 },
      ],
      migration: expect.any(Object),
    });
  });

  it('counts transferred bytes as wire records: normal × (4096 + 8) + duplicate × (8 + 1)', () => {
    expect(r.ram.transferred).toBe(r.ram.normal * NORMAL_RECORD + r.ram.duplicate * ZERO_RECORD);
    expect(r.ram['normal-bytes']).toBe(r.ram.normal * PAGE);
    expect(r.ram['precopy-bytes'] + r.ram['downtime-bytes']).toBe(r.ram.transferred);
  });

  it('times add up: setup < total, downtime < total', () => {
    const downtime = r.downtime ?? Number.NaN;
    expect(r['setup-time']).toBeGreaterThan(0);
    expect(r['total-time']).toBeGreaterThan(r['setup-time']);
    expect(downtime).toBeGreaterThan(0);
    expect(downtime).toBeLessThan(r['total-time']);
  });

  it('has one trajectory entry per dirty sync, in strictly increasing time', () => {
    const t = r.trajectory;
    expect(r.ram['dirty-sync-count']).toBeGreaterThanOrEqual(2);
    expect(t).toHaveLength(r.ram['dirty-sync-count']);
    expect(t.map((e) => e.sync)).toEqual(t.map((_, i) => i + 1));
    for (let i = 1; i < t.length; i++) {
      const [prev, cur] = [t[i - 1], t[i]];
      expect(cur?.time).toBeGreaterThan(prev?.time ?? Number.POSITIVE_INFINITY);
      expect(cur?.transferred).toBeGreaterThanOrEqual(prev?.transferred ?? Number.POSITIVE_INFINITY);
    }
    // The first sync ends setup with every page dirty and nothing sent yet.
    expect(t[0]).toMatchObject({ sync: 1, time: r['setup-time'], remaining: r.ram.total, transferred: 0 });
    // The last sync is the one at switchover: after it only the downtime bytes go.
    expect(t.at(-1)?.transferred).toBe(r.ram['precopy-bytes']);
  });

  it('is the default: `simulate --json` without --preset prints the same bytes', async () => {
    const out = await run('simulate', '--json');
    expect(out.code).toBe(0);
    expect(out.stdout).toBe(stdout);
  });

  describe('determinism', () => {
    it('prints byte-identical stdout when run twice', async () => {
      const again = await run('simulate', '--preset', 'small', '--json');
      expect(again.code).toBe(0);
      expect(again.stdout).toBe(stdout);
    });

    it('prints something else for --set seed=2', async () => {
      const { result, stdout: seeded } = await runJson('simulate', '--preset', 'small', '--set', 'seed=2');
      expect(seeded).not.toBe(stdout);
      expect(result.dirtytrack.seed).toBe(2);
      expect(result.status).toBe('completed');
      expect(result.ram.total).toBe(4 * GiB);
    });

    it('writes the --json stdout, byte for byte, to --out FILE', async () => {
      const file = join(tmp, 'small.json');
      const out = await run('simulate', '--preset', 'small', '--json', '--out', file);
      expect(out.code).toBe(0);
      expect(out.stdout).toBe(stdout);
      expect(readFileSync(file, 'utf8')).toBe(stdout);
    });

    it('writes the JSON to --out FILE also when stdout gets the human summary', async () => {
      const file = join(tmp, 'small-summary.json');
      const out = await run('simulate', '--preset', 'small', '--out', file);
      expect(out.code).toBe(0);
      expect(out.stdout).not.toBe(stdout);
      expect(out.stdout).toContain('status    completed');
      expect(readFileSync(file, 'utf8')).toBe(stdout);
    });
  });
});

describe('trackers through the software MMU', () => {
  const vcpuOf = async (...set: string[]) => {
    const out = await run('simulate', '--preset', 'small', '--json', ...set.flatMap((x) => ['--set', x]));
    expect(out.code, out.stderr).toBe(0);
    const r = JSON.parse(out.stdout) as SimulateJson;
    expect(r.status).toBe('completed');
    return r.dirtytrack;
  };

  it('mmu-wp traps exactly the writes the flat wp tracker traps; PML exits once per 512 new pages', async () => {
    const flat = await vcpuOf('backing=2m');
    const mmu = await vcpuOf('backing=2m', 'tracker=mmu-wp');
    const pml = await vcpuOf('backing=2m', 'tracker=pml');
    expect(mmu.pipeline.tracker).toBe('mmu-wp');
    expect(mmu.vcpu).toEqual(flat.vcpu); // Same faults, priced the same (all fast faults).
    expect(pml.vcpu.writes).toBe(flat.vcpu.writes);
    expect(pml.vcpu.faults).toBeLessThan(flat.vcpu.faults / 400);
  });

  it('lazy (initially-set) enable runs with manual protect and QEMU layers', async () => {
    const lazy = await vcpuOf(
      'tracker=mmu-wp',
      'backing=2m',
      'mmu-logging=lazy',
      'manual-protect=true',
      'layers=xchg',
    );
    expect(lazy.pipeline).toEqual({
      workload: 'uniform',
      tracker: 'mmu-wp',
      reporter: 'bitmap',
      layers: 'xchg',
    });
  });
});

describe('non-convergence', () => {
  it('--preset no-converge stops `active` at the time limit, with no downtime', async () => {
    const { result } = await runJson('simulate', '--preset', 'no-converge');
    const timeLimitS = PRESETS['no-converge']['time-limit'];
    expect(timeLimitS).toBe(120);
    expect(result.status).toBe('active');
    expect(Object.hasOwn(result, 'downtime')).toBe(false);
    expect(result.dirtytrack['stop-reason']).toBe('time-limit');
    expect(result.dirtytrack.scenario).toBe('no-converge');
    expect(result['total-time']).toBeGreaterThanOrEqual(timeLimitS * 1000);
    expect(result.ram.remaining).toBeGreaterThan(0);
    expect(result.ram.total).toBe(4 * GiB);
    expect(result.ram['downtime-bytes']).toBe(0);
    expect(result.ram.transferred).toBe(
      result.ram.normal * NORMAL_RECORD + result.ram.duplicate * ZERO_RECORD,
    );
    expect(result.trajectory).toHaveLength(result.ram['dirty-sync-count']);
  });

  it('honours --set time-limit on a non-converging run', async () => {
    const { result } = await runJson('simulate', '--preset', 'no-converge', '--set', 'time-limit=7.5');
    expect(result.status).toBe('active');
    expect(result.dirtytrack['stop-reason']).toBe('time-limit');
    expect(result['total-time']).toBeGreaterThanOrEqual(7500);
    expect(result['total-time']).toBeLessThan(120_000);
  });

  it('a tiny 1 MiB guest converges quickly: completed, stop-reason converged', async () => {
    const { result } = await runJson('simulate', '--set', 'memory=1M', '--set', 'workload.working-set=1M');
    expect(result.status).toBe('completed');
    expect(result.dirtytrack['stop-reason']).toBe('converged');
    expect(result.ram.total).toBe(MiB);
    expect(result.ram.remaining).toBe(0);
    expect(result.downtime).toEqual(expect.any(Number));
    expect(result['total-time']).toBeLessThan(1000);
    expect(result.ram['dirty-sync-count']).toBeGreaterThanOrEqual(2);
    expect(result.trajectory).toHaveLength(result.ram['dirty-sync-count']);
  });
});

describe('--scenario files', () => {
  const yamlFile = join(tmp, 'scenario.yaml');
  const jsonFile = join(tmp, 'scenario.json');
  writeFileSync(yamlFile, '# a 512 MiB guest\nmemory: 512M\nvcpus: 2\n');
  writeFileSync(jsonFile, JSON.stringify({ memory: '512M', vcpus: 2 }, null, 2));

  it('runs a YAML scenario: ram.total is 512 MiB', async () => {
    const { result } = await runJson('simulate', '--scenario', yamlFile);
    expect(result.ram.total).toBe(512 * MiB);
    expect(result.status).toBe('completed');
    expect(result.ram.remaining).toBe(0);
    // No --preset with a file: the schema's defaults, not the `small` preset, fill the rest.
    expect(result.dirtytrack.scenario).toBe('custom');
  });

  it('runs the same scenario as JSON, printing the same bytes', async () => {
    const fromJson = await runJson('simulate', '--scenario', jsonFile);
    const fromYaml = await runJson('simulate', '--scenario', yamlFile);
    expect(fromJson.result.ram.total).toBe(512 * MiB);
    expect(fromJson.stdout).toBe(fromYaml.stdout);
  });

  it('lays the file over --preset and --set over the file', async () => {
    const { result } = await runJson(
      'simulate',
      '--preset',
      'small',
      '--scenario',
      yamlFile,
      '--set',
      'seed=7',
      '--set',
      'workload.working-set=256M', // the preset's 1G no longer fits in 512M
    );
    expect(result.ram.total).toBe(512 * MiB);
    expect(result.dirtytrack.scenario).toBe('small');
    expect(result.dirtytrack.seed).toBe(7);
  });
});

describe('human summary (no --json)', () => {
  const TRAJECTORY_HEADER = '  sync  time            remaining        new dirty';

  it('prints the status and the trajectory table for --preset small, exit 0', async () => {
    const out = await run('simulate', '--preset', 'small');
    expect(out.code).toBe(0);
    expect(out.stderr).toBe('');
    expect(out.stdout.endsWith('\n')).toBe(true);
    expect(() => JSON.parse(out.stdout) as unknown).toThrow();
    const lines = out.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('dirtytrack simulate: small (seed 1)');
    expect(lines).toContain('  status    completed');
    expect(out.stdout).toContain('status    completed');
    const header = lines.indexOf(TRAJECTORY_HEADER);
    expect(header).toBeGreaterThan(0);
    // One row per sync (no more than 8 of them here), numbered from 1.
    const { result } = await runJson('simulate', '--preset', 'small');
    const rows = lines.slice(header + 1);
    expect(result.ram['dirty-sync-count']).toBeLessThanOrEqual(8);
    expect(rows).toHaveLength(result.ram['dirty-sync-count']);
    expect(rows.map((row) => Number(row.trim().split(/\s+/)[0]))).toEqual(
      result.trajectory.map((e) => e.sync),
    );
    expect(out.stdout).toContain(`  syncs     ${result.ram['dirty-sync-count']}, `);
  });

  it('explains an active run as stopped at the time limit', async () => {
    const out = await run('simulate', '--preset', 'no-converge');
    expect(out.code).toBe(0);
    expect(out.stdout).toContain('  status    active (stopped at the 120 s time limit');
    expect(out.stdout).not.toContain('downtime ');
    expect(out.stdout).toContain(TRAJECTORY_HEADER);
  });

  it('shows the first and last 4 syncs of a long trajectory and counts the rest', async () => {
    const argv = [
      'simulate',
      '--set',
      'memory=256M',
      '--set',
      'workload.working-set=256M',
      '--set',
      'vcpus=8',
      '--set',
      'workload.rate=16M',
      '--set',
      'link.bandwidth=1Gbit',
      '--set',
      'migration.parameters.max-bandwidth=0',
      '--set',
      'migration.parameters.downtime-limit=100',
      '--set',
      'time-limit=30',
    ];
    const { result } = await runJson(...argv);
    const n = result.ram['dirty-sync-count'];
    expect(n).toBeGreaterThan(8);
    const out = await run(...argv);
    expect(out.code).toBe(0);
    const lines = out.stdout.trimEnd().split('\n');
    const rows = lines.slice(lines.indexOf(TRAJECTORY_HEADER) + 1);
    expect(rows).toHaveLength(9);
    expect(rows[4]).toBe(`  …     (${n - 8} more)`);
    const numbers = rows.filter((_, i) => i !== 4).map((row) => Number(row.trim().split(/\s+/)[0]));
    expect(numbers).toEqual([1, 2, 3, 4, n - 3, n - 2, n - 1, n]);
  });
});

describe('simulate: migration capabilities and status paths (issue 8)', () => {
  /** A 256 MiB guest whose vCPUs sweep all of it at `rate` each, over a `link` link, no cap. */
  const sweep = (vcpus: string, rate: string, link: string) =>
    [
      'memory=256M',
      `vcpus=${vcpus}`,
      'workload.kind=sweep',
      `workload.rate=${rate}`,
      'workload.working-set=256M',
      `link.bandwidth=${link}`,
      'migration.parameters.max-bandwidth=0',
      'time-limit=120',
    ].flatMap((kv) => ['--set', kv]);
  /** A 1 MiB idle guest on a 1 GB/s link: 256 pages, one round. */
  const tiny = [
    '--set',
    'memory=1M',
    '--set',
    'workload.working-set=1M',
    '--set',
    'workload.rate=0',
    '--set',
    'link.bandwidth=1G',
    '--set',
    'migration.parameters.max-bandwidth=0',
  ];

  it('multifd on 4 channels: handshakes, 2 packets, a SYNC on every channel at setup, wrap and completion', async () => {
    const { result } = await runJson(
      'simulate',
      ...tiny,
      '--set',
      'migration.capabilities.multifd=true',
      '--set',
      'migration.parameters.multifd-channels=4',
    );
    expect(result.status).toBe('completed');
    const header = 1344;
    expect(result.ram['multifd-bytes']).toBe(4 * 64 + 3 * 4 * header + 2 * header + 256 * PAGE);
    expect(result.ram['multifd-bytes']).toBe(1_067_648);
    expect(result.ram.transferred).toBe(1_067_648 + 3 * 8);
    expect(result.dirtytrack.migration).toMatchObject({ 'multifd-packets': 2, 'multifd-syncs': 3 });
  });

  it('auto-converge makes a 100 MB/s sweep over a 50 MB/s link complete: steps 20, 30, …, 0 at the end', async () => {
    const { result } = await runJson(
      'simulate',
      ...sweep('1', '100M', '400Mbit'),
      '--set',
      'migration.capabilities.auto-converge=true',
    );
    expect(result.status).toBe('completed');
    expect(result.dirtytrack.migration['throttle-steps']).toEqual([20, 30, 40, 50, 60, 70, 80]);
    expect(result['total-time']).toBe(67_601.195);
    expect(result['cpu-throttle-percentage']).toBe(0);
    expect(result.dirtytrack.events.map((e) => e.status)).toEqual(['setup', 'active', 'completed']);
    const alone = await runJson('simulate', ...sweep('1', '100M', '400Mbit'));
    expect(alone.result.status).toBe('active');
  });

  it('dirty-limit through the ring throttles each vCPU and the migration completes', async () => {
    const { result } = await runJson(
      'simulate',
      ...sweep('2', '300M', '400M'),
      '--set',
      'reporter=ring',
      '--set',
      'migration.parameters.downtime-limit=250',
      '--set',
      'migration.parameters.vcpu-dirty-limit=50',
      '--set',
      'migration.capabilities.dirty-limit=true',
    );
    expect(result.status).toBe('completed');
    expect(result.trajectory.map((t) => t['dirty-limit-throttle-time-per-round'])).toEqual([
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 260_390, 260_390, 260_390, 260_390,
    ]);
    expect(result['dirty-limit-throttle-time-per-round']).toBe(0); // removed at the end
  });

  it('cancel-at: setup → active → cancelling → cancelled at that time', async () => {
    const { result } = await runJson(
      'simulate',
      '--preset',
      'no-converge',
      '--set',
      'migration.cancel-at=2.5',
    );
    expect(result.status).toBe('cancelled');
    expect(result.dirtytrack['stop-reason']).toBe('cancelled');
    expect(result.dirtytrack.events.map((e) => [e.status, e.time])).toEqual([
      ['setup', 0],
      ['active', result['setup-time']],
      // Requested at 2500 ms; the migration thread sees it when the window's send returns.
      ['cancelling', 2502.374],
      ['cancelled', 2502.374],
    ]);
  });

  it('switchover-share 0.5 (the live plane’s) plans the final copy for half of downtime-limit: it stops later, with less downtime', async () => {
    const [whole, half] = await Promise.all(
      ['1', '0.5'].map(async (share) => {
        const { result } = await runJson('simulate', '--set', `migration.switchover-share=${share}`);
        return [
          result['total-time'],
          result.downtime,
          result.ram.transferred,
          result.ram['dirty-sync-count'],
        ];
      }),
    );
    // The default scenario (README): QEMU's share, 1; then half of it.
    expect(whole).toEqual([4093.578, 191.241, 4426533360, 4]);
    expect(half).toEqual([4110.018, 107.68, 4429459512, 4]);
  });

  it('link.drop-at: the migration fails with an error-desc', async () => {
    const { result } = await runJson('simulate', '--preset', 'no-converge', '--set', 'link.drop-at=1');
    expect(result.status).toBe('failed');
    expect(result['error-desc']).toBe('Unable to write to socket: Broken pipe (link dropped at 1000 ms)');
    expect(result.dirtytrack.events.at(-1)).toMatchObject({ status: 'failed', time: 1000 });
  });

  it('a hot-set workload with every feature on prints byte-identical JSON for the same seed', async () => {
    const argv = [
      'simulate',
      '--set',
      'memory=256M',
      '--set',
      'workload.working-set=256M',
      '--set',
      'workload.kind=hotset',
      '--set',
      'workload.rate=64M',
      '--set',
      'link.bandwidth=1Gbit',
      '--set',
      'migration.capabilities.auto-converge=true',
      '--set',
      'migration.capabilities.multifd=true',
      '--set',
      'migration.capabilities.zero-copy-send=true',
      '--set',
      'migration.capabilities.pause-before-switchover=true',
      '--set',
      'time-limit=60',
    ];
    const a = await runJson(...argv);
    const b = await runJson(...argv);
    expect(a.stdout).toBe(b.stdout);
    expect(a.result.dirtytrack.pipeline.workload).toBe('hotset');
    const c = await runJson(...argv, '--set', 'seed=9');
    expect(c.stdout).not.toBe(a.stdout);
  });

  it('dirty rings, dirty-limit, postcopy and a cancel that comes too late: byte-identical JSON too', async () => {
    const argv = [
      'simulate',
      ...['memory=256M', 'workload.working-set=256M', 'workload.kind=hotset', 'workload.rate=128M']
        .concat(['reporter=ring', 'ring-size=1024', 'link.bandwidth=800Mbit', 'migration.cancel-at=500'])
        .concat(['migration.capabilities.dirty-limit=true', 'migration.parameters.vcpu-dirty-limit=20'])
        .concat(['migration.capabilities.postcopy-ram=true', 'migration.start-postcopy-at=1'])
        .flatMap((kv) => ['--set', kv]),
    ];
    const a = await runJson(...argv);
    const b = await runJson(...argv);
    expect(a.stdout).toBe(b.stdout);
    expect(a.result.dirtytrack.events.map((e) => e.status)).toEqual([
      'setup',
      'active',
      'postcopy-active',
      'completed',
    ]);
  });

  // The seed presets at 1/64 of their memory and working set (the full runs take seconds each;
  // `bench simulate --reps N` compares the full runs' JSON byte for byte too).
  it.each([
    ['seed-3tb', ['memory=48G', 'workload.working-set=16G'], 10_281.952],
    ['seed-8tb', ['memory=128G', 'workload.working-set=32G'], 5777.958],
  ])('%s at 1/64 of its size prints byte-identical JSON for the same seed', async (preset, sets, totalMs) => {
    const argv = ['simulate', '--preset', preset, ...sets.flatMap((kv) => ['--set', kv])];
    const a = await runJson(...argv);
    const b = await runJson(...argv);
    expect(a.stdout).toBe(b.stdout);
    expect([a.result.status, a.result['total-time']]).toEqual(['completed', totalMs]);
    expect(a.result.dirtytrack.pipeline.workload).toBe('hotset');
    const c = await runJson(...argv, '--set', 'seed=2');
    expect(c.stdout).not.toBe(a.stdout);
  });

  it('postcopy on 1G pages: whole host pages requested and placed; double-map and uffd minor mode change that', async () => {
    const argv = ['simulate', '--preset', 'no-converge']
      .concat(['migration.capabilities.postcopy-ram=true', 'migration.start-postcopy-at=10', 'backing=1g'])
      .flatMap((kv, i) => (i < 3 ? [kv] : ['--set', kv]));
    const whole = (await runJson(...argv)).result;
    const dm = (await runJson(...argv, '--set', 'migration.postcopy-double-map=true')).result;
    const minor = (await runJson(...argv, '--set', 'migration.postcopy-uffd-minor=true')).result;
    expect([whole.status, dm.status, minor.status]).toEqual(['completed', 'completed', 'completed']);
    // The sweep dirtied the 2 GiB it writes: both of those 1 GiB pages fault once each, and all
    // four (the discard dropped every page of memory holding a stale page) are placed whole.
    expect([whole.ram['postcopy-requests'], whole.dirtytrack.migration['postcopy-placed']]).toEqual([2, 4]);
    expect(dm.dirtytrack.migration['postcopy-placed']).toBe(2 ** 20);
    expect(dm.ram['postcopy-requests']).toBeGreaterThan(2);
    expect(dm['postcopy-blocktime']).toBeLessThan(whole['postcopy-blocktime'] as number);
    expect(minor.ram['postcopy-bytes']).toBeLessThanOrEqual(whole.ram['postcopy-bytes'] as number);
    const text = await run(...argv);
    expect(text.stdout).toMatch(
      / {2}postcopy {2}2 1g host page requests \(mean latency [^)]*\), blocktime [^,]*, 4 1g host pages placed/,
    );
  });

  // Invariant 6's property found it: a live run's setup (8 ms and more on a busy machine) moved
  // its rate-limit windows past a migrate-start-postcopy 8 ms after a window's end, so it switched
  // a window (1.68 MB of precopy) sooner than the model (8 % less transferred, 3 runs of 3).
  it('setup-time: the rate-limit windows start after it, and migrate-start-postcopy waits for the window it falls in', async () => {
    const argv = ['simulate']
      .concat(['memory=16M', 'workload.working-set=16M', 'workload.rate=1M'])
      .concat(['migration.parameters.max-bandwidth=16M', 'migration.capabilities.postcopy-ram=true'])
      .concat(['migration.start-postcopy-at=0.408'])
      .flatMap((kv, i) => (i === 0 ? [kv] : ['--set', kv]));
    const shape = (r: Awaited<ReturnType<typeof runJson>>['result']) => [
      r['setup-time'],
      r.dirtytrack.events.map((e) => [e.status, e.time]),
      r.ram['precopy-bytes'],
      r.ram.transferred,
    ];
    // The modelled setup (8 µs): windows end at 100.008, ..., 500.008 ms; the request at 408 ms
    // is acted on when the fifth window ends. Five windows of 1.6 MB (and the setup's records).
    expect(shape((await runJson(...argv)).result)).toEqual([
      0.008,
      [
        ['setup', 0],
        ['active', 0.008],
        ['postcopy-active', 500.152],
        ['completed', 510.252],
      ],
      8_392_680,
      17_749_228,
    ]);
    // A measured setup of 10 ms: windows end at 110, ..., 410 ms — four of them.
    expect(shape((await runJson(...argv, '--set', 'migration.setup-time=10')).result)).toEqual([
      10,
      [
        ['setup', 0],
        ['active', 10],
        ['postcopy-active', 410.139],
        ['completed', 420.239],
      ],
      6_714_144,
      17_423_792,
    ]);
  });

  it('postcopy: the no-converge guest completes after migrate-start-postcopy at 10 s', async () => {
    const { result } = await runJson(
      'simulate',
      '--preset',
      'no-converge',
      '--set',
      'migration.capabilities.postcopy-ram=true',
      '--set',
      'migration.start-postcopy-at=10',
    );
    expect(result.status).toBe('completed');
    expect(result.dirtytrack.events.map((e) => e.status)).toEqual([
      'setup',
      'active',
      'postcopy-active',
      'completed',
    ]);
    expect(result.downtime).toBeLessThan(300);
    expect(result.ram['postcopy-requests']).toBeGreaterThan(0);
    expect(result.dirtytrack.migration['postcopy-placed']).toBe(
      (result.dirtytrack.events[2]?.remaining ?? 0) / PAGE,
    );
  });
});
