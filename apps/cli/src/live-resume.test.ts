import { describe, expect, it } from 'vitest';
import { run, spawnServe } from './__fixtures__/run.js';

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
      resumed: { ms: 200, vcpus: 2 },
    });
    expect(destination.resumed.writes).toBeGreaterThan(0);
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
      expect(destination.resumed).toMatchObject({ ms: 200, vcpus });
      if (writes) expect(destination.resumed.writes).toBeGreaterThan(0);
      else expect(destination.resumed.writes).toBe(0);
    },
    60_000,
  );
});
