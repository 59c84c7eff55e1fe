import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { CLI_DIR, run } from './__fixtures__/run.js';

// QEMU's conformance check 1, "the guest runs" on the destination: serve --run-after boots
// worker vCPUs over the memory it received, once the migration completed and verified.

describe('serve --run-after', () => {
  it('runs the received guest on after a verified migration', async () => {
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
        '--memory',
        '16M',
        '--once',
        '--run-after',
        '200',
        '--json',
      ],
      { cwd: CLI_DIR, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const lines = createInterface({ input: child.stdout });
    let out = '';
    const port = await new Promise<number>((resolve, reject) => {
      lines.once('line', (line) => {
        const m = /^listening on 127\.0\.0\.1:(\d+)$/.exec(line);
        if (m) resolve(Number(m[1]));
        else reject(new Error(line));
      });
      child.once('exit', (code) => reject(new Error(`serve exited ${code}`)));
    });
    lines.on('line', (line) => {
      out += line + '\n';
    });
    const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
    const r = await run('migrate', '--to', `127.0.0.1:${port}`, '--memory', '16M', '--json');
    expect(r.code).toBe(0);
    const source = JSON.parse(r.stdout) as { status: string; verified: boolean };
    expect(source).toMatchObject({ status: 'completed', verified: true });
    expect(await exited).toBe(0);
    const destination = JSON.parse(out) as {
      status: string;
      verified: boolean;
      resumed: { ms: number; vcpus: number; writes: number };
    };
    expect(destination).toMatchObject({
      status: 'completed',
      verified: true,
      resumed: { ms: 200, vcpus: 2 },
    });
    expect(destination.resumed.writes).toBeGreaterThan(0);
  }, 60_000);
});
