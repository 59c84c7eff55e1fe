import { PAGE_SIZE } from '@dirtytrack/core';

/**
 * Multifd's wire accounting (reference/qemu.md §4): pages go in packets of at most
 * `MULTIFD_PACKET_PAGES` page slots; each packet carries a fixed header plus one u64 offset per
 * slot (normal offsets, then zero-page offsets) and is followed by its normal pages' payload.
 * Every sync (`multifd_ram_flush_and_sync`) sends the partial packet, then one SYNC packet
 * (header only) on every channel, and the main stream writes one MULTIFD_FLUSH record.
 */

/** pages_alloc: 512 KiB of 4 KiB pages per packet. */
export const MULTIFD_PACKET_PAGES = (512 * 1024) / PAGE_SIZE;
/** The fixed part of `MultiFDPacket_t`: magic … ramblock[256] = 320 B. */
export const MULTIFD_PACKET_FIXED = 320;
/** A packet's header with its offset array: 320 + 8 × 128 = 1344 B. */
export const MULTIFD_PACKET_HEADER = MULTIFD_PACKET_FIXED + 8 * MULTIFD_PACKET_PAGES;
/** `MultiFDInit_t`, the per-channel handshake: 64 B. */
export const MULTIFD_INIT_BYTES = 64;
/** RAM_SAVE_FLAG_MULTIFD_FLUSH on the main stream: one be64. */
export const MULTIFD_FLUSH_RECORD = 8;

/**
 * The main thread's batch: how many page slots of the current packet are taken. A packet's
 * header is charged when its first page is queued, its payload page by page.
 */
export interface MultifdBatch {
  /** Slots taken in the packet being filled (0 = no packet open). */
  fill: number;
  /** Packets started so far. */
  packets: number;
}

/** Queues `normal` + `zero` pages; returns the multifd bytes this adds (headers and payload). */
export function queuePages(batch: MultifdBatch, normal: number, zero: number): number {
  const k = normal + zero;
  if (k === 0) return 0;
  const started = packetsStarted(batch, k);
  batch.fill = (batch.fill + k) % MULTIFD_PACKET_PAGES;
  batch.packets += started;
  return started * MULTIFD_PACKET_HEADER + normal * PAGE_SIZE;
}

/** What {@link queuePages} would return, without queuing. */
export function peekPages(batch: MultifdBatch, normal: number, zero: number): number {
  const k = normal + zero;
  return k === 0 ? 0 : packetsStarted(batch, k) * MULTIFD_PACKET_HEADER + normal * PAGE_SIZE;
}

function packetsStarted(batch: MultifdBatch, k: number): number {
  return (batch.fill === 0 ? 1 : 0) + Math.floor((batch.fill + k - 1) / MULTIFD_PACKET_PAGES);
}

/**
 * `multifd_ram_flush_and_sync`: closes the partial packet (already charged) and sends a SYNC
 * packet on each of `channels`. Returns the multifd bytes this adds.
 */
export function syncChannels(batch: MultifdBatch, channels: number): number {
  batch.fill = 0;
  return channels * MULTIFD_PACKET_HEADER;
}
