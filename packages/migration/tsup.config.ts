import { packageBuild } from '../../tsup.shared.js';

// live/sender-worker.ts is the live link's worker entry: built to dist/live/sender-worker.js so
// `new Worker(new URL('./live/sender-worker.js', import.meta.url))` finds it beside index.js.
export default packageBuild({
  entry: { index: 'src/index.ts', 'live/sender-worker': 'src/live/sender-worker.ts' },
});
