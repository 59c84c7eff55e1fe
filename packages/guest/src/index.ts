export {
  createUniformWorkload,
  createSweepWorkload,
  createHotSetWorkload,
  type HotSetOptions,
  type WorkloadOptions,
} from './workloads.js';
export {
  createModelEngine,
  createModelMemory,
  type ModelEngine,
  type ModelEngineOptions,
  type ModelEngineStats,
  type ModelMemory,
} from './model-engine.js';
