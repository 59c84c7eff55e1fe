/**
 * How QEMU reaps the KVM dirty rings during a migration, as one policy both planes use: the
 * model's `simulate` pipeline (its engine's ring-full exits) and the live migration (a poll while
 * its migration thread waits). `runPrecopy`'s `dirtyRing.reap` and `dirtyRing.onLimit` take the
 * rest: the reaper thread once a second, and whether dirty-limit is in service.
 */

/** What {@link ringReaps} needs of the guest's dirty rings (`@dirtytrack/reporters`' `RingReporter`). */
export interface GuestRings {
  readonly vcpus: number;
  /** Entries a vCPU may push before it exits with KVM_EXIT_DIRTY_RING_FULL. */
  readonly softLimit: number;
  /** Entries in vCPU `vcpu`'s ring not yet reset. */
  used(vcpu: number): number;
  /** Harvests every ring (or only `vcpu`'s) and resets them (QEMU's `kvm_dirty_ring_reap`). */
  reap(vcpu?: number): number;
}

/**
 * The share of its soft limit at which a live vCPU's ring counts as full (`ringReaps`'
 * `whenFull`): that reap is polled every `WHILE_WAITING_MS` (live-link.ts), so a ring is reaped a
 * little before it is full, for its vCPU not to stop at the limit and wait for the next poll.
 */
export const RING_FULL_SHARE = 7 / 8;

/** A migration's reaps of the guest's dirty rings, as QEMU's (see {@link ringReaps}). */
export interface RingReaps {
  /** A vCPU's ring is full (KVM_EXIT_DIRTY_RING_FULL): the model engine's `onRingFull`. */
  onFull(vcpu: number): void;
  /** Polled (the live plane): reaps as {@link RingReaps.onFull} once a ring holds {@link RING_FULL_SHARE} of its soft limit. */
  whenFull(): void;
  /** Every ring: the reaper thread's reap once a second (`runPrecopy`'s `dirtyRing.reap`). */
  reap(): void;
  /** Dirty-limit in or out of service (`runPrecopy`'s `dirtyRing.onLimit`). */
  onLimit(inService: boolean): void;
}

/**
 * The reaps of the guest's dirty rings during a migration, as QEMU reaps them — in both planes
 * (the model's engine calls `onFull`, the live migration thread polls `whenFull`). On a vCPU's
 * ring-full exit QEMU's vCPU thread reaps every ring, or only its own while dirty-limit is in
 * service (`kvm_dirty_ring_reap(s, cpu)`: the others' rings fill until their own exits, where
 * their throttle sleeps are taken); its reaper thread reaps every ring once a second (not while
 * dirty-limit is in service); each sync reaps every ring. How soon a written page is re-armed —
 * and so how many pages a vCPU pushes per second, the dirty rate dirty-limit measures — follows.
 */
export function ringReaps(ring: GuestRings): RingReaps {
  const full = Math.max(1, Math.floor(ring.softLimit * RING_FULL_SHARE));
  let limiting = false;
  const onFull = (vcpu: number): void => void (limiting ? ring.reap(vcpu) : ring.reap());
  return {
    onFull,
    whenFull() {
      for (let v = 0; v < ring.vcpus; v++) {
        if (ring.used(v) < full) continue;
        onFull(v);
        if (!limiting) return;
      }
    },
    reap: () => void ring.reap(),
    onLimit(inService) {
      limiting = inService;
    },
  };
}
