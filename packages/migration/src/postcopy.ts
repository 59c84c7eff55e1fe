import { popcount32, type Bitmap } from '@dirtytrack/core';

/**
 * Postcopy's discard step (reference/qemu.md §3, `postcopy_start` step 2): every run of set bits
 * in the migration bitmap (re-dirtied and never-sent pages) goes to the destination as a range
 * to punch out, at most MAX_DISCARDS_PER_COMMAND ranges per RAM_DISCARD command.
 */

/** QEMU's MAX_DISCARDS_PER_COMMAND. */
export const MAX_DISCARDS_PER_COMMAND = 12;

/** How a RAMBlock's discard ranges go on the wire. */
export interface DiscardPlan {
  /** Runs of set bits (ranges to discard). */
  ranges: number;
  /** RAM_DISCARD commands (`ceil(ranges / 12)`). */
  commands: number;
  /** Main-stream bytes of those commands. */
  bytes: number;
}

/**
 * Counts the runs of set bits in `bmap` word-wise (a run starts where a bit is set and the bit
 * below it is not) and prices the commands: each is `0x08, be16 cmd, be16 len` (5 B), then
 * `u8 version, u8 name length, name, NUL` and 16 B (be64 start, be64 length) per range.
 */
export function planDiscard(bmap: Bitmap, blockName: string): DiscardPlan {
  const words = bmap.words;
  let ranges = 0;
  let carry = 0; // the top bit of the previous word
  for (let i = 0; i < words.length; i++) {
    const w = words[i] as number;
    if (w === 0) {
      carry = 0;
      continue;
    }
    const starts = (w & ~((w << 1) | carry)) >>> 0;
    ranges += popcount32(starts);
    carry = w >>> 31;
  }
  const commands = Math.ceil(ranges / MAX_DISCARDS_PER_COMMAND);
  const perCommand = 5 + 2 + blockName.length + 1;
  return { ranges, commands, bytes: commands * perCommand + ranges * 16 };
}

/** The source's RECV_BITMAP command on the main stream: item header (5 B) + u8 name length + `pc.ram`. */
export const RECV_BITMAP_CMD = 5 + 1 + 6;
/** The source's POSTCOPY_RESUME command: item header only. */
export const POSTCOPY_RESUME_CMD = 5;
/**
 * The destination's RECV_BITMAP answer on the return path, without the bitmap: be16 type + be16
 * length, u8 name length + `pc.ram`, then be64 bitmap size and, after the bitmap, be64 end mark.
 */
export const RP_RECV_BITMAP_FIXED = 4 + 1 + 6 + 8 + 8;
/** The destination's RESUME_ACK: be16 type + be16 length + be32 value. */
export const RP_RESUME_ACK = 4 + 4;
