// Boots a TypeScript worker module through tsx's API. Node 20 workers do not apply
// `execArgv: ['--import', 'tsx']` to their entry file ("Unknown file extension .ts"), so the
// tests start this plain ESM file instead and pass the .ts entry's URL as the last argv element.
import process from 'node:process';
import { tsImport } from 'tsx/esm/api';

const entry = process.argv.at(-1);
if (entry === undefined || !entry.startsWith('file:')) {
  throw new Error(
    `ts-worker.mjs: expected the worker entry's file: URL as the last argv element, got ${entry}`,
  );
}
await tsImport(entry, import.meta.url);
