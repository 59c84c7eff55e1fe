import { packageBuild } from '../../tsup.shared.js';

// live-vcpu.ts is the live engine's worker entry: built beside index.js so `new Worker(new
// URL('./live-vcpu.js', import.meta.url))` finds it in dist/.
export default packageBuild({ entry: ['src/index.ts', 'src/live-vcpu.ts'] });
