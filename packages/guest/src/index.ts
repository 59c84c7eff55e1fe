export {
  createUniformWorkload,
  createSweepWorkload,
  sweepShare,
  createHotSetWorkload,
  type HotSetOptions,
  type WorkloadOptions,
} from './workloads.js';
export {
  createTraceWorkload,
  createTraceWriter,
  encodeTrace,
  formatTraceText,
  parseTrace,
  recordTrace,
  TraceFormatError,
  TRACE_HEADER_BYTES,
  TRACE_MAGIC,
  TRACE_RECORD_HEADER_BYTES,
  TRACE_TEXT_MAGIC,
  TRACE_VERSION,
  type RecordTraceOptions,
  type Trace,
  type TraceInput,
  type TraceWorkloadOptions,
  type TraceWriter,
} from './trace-workload.js';
export {
  createModelEngine,
  createModelMemory,
  type ModelEngine,
  type ModelEngineOptions,
  type ModelEngineStats,
  type ModelMemory,
} from './model-engine.js';
export {
  createLiveGuest,
  createVcpuStandby,
  type VcpuStandby,
  type VcpuStandbyOptions,
  type LiveGuest,
  type LiveGuestOptions,
  type LiveGuestStats,
  type LiveVcpuProgress,
  type LiveWorkload,
} from './live-guest.js';
export { createLiveEngine, type LiveEngine, type LiveEngineOptions } from './live-engine.js';
export {
  runDirtyLogTest,
  DIRTY_LOG_TEST_PAGES_PER_LOOP,
  type DirtyLogTestOptions,
  type DirtyLogTestProgress,
  type DirtyLogTestResult,
  type DirtyLogViolation,
} from './dirty-log-test.js';
