export { createSimChannel, createSimLink, type SimLinkOptions, type SimLinkOutage } from './sim-link.js';
export {
  runPrecopy,
  DEFAULT_PRECOPY_PARAMETERS,
  DIRTY_RING_REAPER_PERIOD_NS,
  DEFAULT_PRECOPY_CAPABILITIES,
  RATE_LIMIT_WINDOW_NS,
  type PrecopyCapabilities,
  type PrecopyOptions,
  type PageSink,
  type PrecopyOutcome,
  type PrecopyParameters,
  type PrecopyProgress,
  type PrecopyStats,
} from './precopy.js';
export {
  createThrottleTrigger,
  nextThrottle,
  DEFAULT_AUTO_CONVERGE_PARAMETERS,
  type AutoConvergeParameters,
  type TriggerPeriod,
} from './auto-converge.js';
export {
  createDirtyLimiter,
  DEFAULT_DIRTY_LIMIT_PARAMETERS,
  DIRTYLIMIT_TOLERANCE,
  type DirtyLimiter,
  type DirtyLimitParameters,
} from './dirty-limit.js';
export {
  MULTIFD_PACKET_PAGES,
  MULTIFD_PACKET_HEADER,
  MULTIFD_INIT_BYTES,
  MULTIFD_FLUSH_RECORD,
} from './multifd.js';
export type {
  MigrationInfo,
  MigrationStatus,
  RamInfo,
  StatusEvent,
  TrajectoryEntry,
} from './migration-info.js';
export {
  runLiveMigration,
  LIVE_SWITCHOVER_SHARE,
  type LiveMigrationOptions,
  type LiveMigrationOutcome,
} from './live/run-live.js';
export { RING_FULL_SHARE, ringReaps, type GuestRings, type RingReaps } from './ring-reaps.js';
export {
  openLiveLink,
  type LiveLink,
  type LiveLinkOptions,
  type LiveLinkStats,
  type VerifyResult as LiveVerifyResult,
} from './live/live-link.js';
export { SEND_FROM, type SendFrom } from './live/link-layout.js';
export { createFdWriter, fdWritesAvailable, type FdWriter, type Gather } from './live/fd-writer.js';
export { MAIN_READ_BUFFER_BYTES, READ_BUFFER_BYTES } from './live/read-buffer.js';
export {
  createRecordRam,
  ramBytesOf,
  recordRamOf,
  RECORD_RAM_MAX_BYTES,
  type RecordRam,
} from './live/record-ram.js';
export {
  createDestination,
  type Destination,
  type DestinationOptions,
  type DestinationResult,
} from './live/destination.js';
export {
  clientHandshake,
  serverHandshake,
  isLoopback,
  resultCodeName,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
} from './live/handshake.js';
export type { ClientHandshakeOptions, ServerHandshakeOptions } from './live/handshake.js';
export {
  DEFAULT_MAX_MEMORY,
  DEFAULT_DESTINATION_TIMEOUT_MS,
  GUEST_VCPUS_FROM_SOURCE_MAX,
} from './live/destination.js';
export {
  attachDiscardSink,
  attachPostcopyFaults,
  createPostcopyFaults,
  REQUEST_RING_SLOTS,
  type PostcopyFaultData,
  type PostcopyFaults,
} from './live/postcopy-faults.js';
export {
  WIRE_VERSION,
  HELLO_BYTES,
  CHALLENGE_BYTES,
  AUTH_BYTES,
  RAM_FLAG,
  VM_ITEM,
  MIG_CMD,
  RP_MSG,
  CHANNEL_KIND,
  HELLO_FLAG,
  MULTIFD_MAGIC,
  MULTIFD_VERSION,
  MULTIFD_FLAG_SYNC,
  RAM_BLOCK,
  RAM_SECTION_ID,
  RESULT_CODE,
  PAGE_RECORD_BYTES,
  ZERO_RECORD_BYTES,
  encodeHello,
  decodeHello,
  authTag,
  writeRamHeader,
  writeBlockId,
  encodeSection,
  encodeEof,
  encodeEos,
  encodeFlush,
  encodeMemSize,
  encodeCommand,
  encodePing,
  encodeDiscard,
  writeMultifdHeader,
  encodeVerifyHashes,
  encodeVerifyEnd,
  encodeVcpuState,
  decodeVcpuState,
  VCPU_STATE_MAX,
  PROGRAM_KINDS,
  encodeGuestTrace,
  decodeGuestTrace,
  GUEST_TRACE_MAX,
  GUEST_TRACE_CHUNK_MAX,
  GUEST_TRACE_FLAG,
  encodeReturn,
  encodeReturnU32,
  encodeReqPages,
  encodeRecvBitmap,
  encodeVerifyResult,
  pageHashes,
  createMainDecoder,
  createMultifdDecoder,
  createReturnDecoder,
  type Hello,
  type MultifdHeaderFields,
  type StreamDecoder,
  type MainDecoder,
  type MainDecoderOptions,
  type MultifdDecoder,
  type MultifdDecoderOptions,
  type MultifdPacketInfo,
  type ReturnDecoderOptions,
  type VerifyResult as WireVerifyResult,
  type VcpuStateWire,
  type VcpuStateMessage,
  type GuestProgramWire,
  type GuestTraceWire,
  type GuestTraceChunk,
} from './live/wire.js';
export { pageHashKernel } from './live/page-hash.js';
