#!/usr/bin/env node
/* global process, console, URL */
// Runs the pnpm version pinned in package.json's "packageManager" through npx, so a machine
// with only Node and npm can install and test the monorepo (no global pnpm, no corepack).
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const root = new URL('../package.json', import.meta.url);
const { packageManager } = JSON.parse(readFileSync(root, 'utf8'));
const match = /^pnpm@(\d+\.\d+\.\d+)$/.exec(packageManager ?? '');
if (!match) {
  console.error(`[dirtytrack] packageManager must be "pnpm@X.Y.Z", got ${JSON.stringify(packageManager)}`);
  process.exit(2);
}
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';
const result = spawnSync(npx, ['--yes', `pnpm@${match[1]}`, ...process.argv.slice(2)], {
  stdio: 'inherit',
  env: { ...process.env, TURBO_TELEMETRY_DISABLED: '1', DO_NOT_TRACK: '1' },
});
process.exit(result.status ?? 1);
