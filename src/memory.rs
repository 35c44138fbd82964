//! How the process gives memory back: large blocks go straight back to
//! the system when freed.
//!
//! glibc serves blocks over its mmap threshold with their own mapping, but
//! raises that threshold each time such a block is freed, up to 32 MiB.
//! After the first batches, a batch's buffers (a 50,000-message list, a
//! reply, a Native block: a few MiB each) then come from the heap, and a
//! freed one stays in the process between heap blocks still in use. Fixed,
//! they are unmapped when freed and the resident size follows what is
//! live. The build before, with and without `MALLOC_MMAP_THRESHOLD_=262144`
//! in one sitting (`cargo bench --bench e2e`): peak RSS 71.9 → 53.5 MiB
//! at-least-once, 107.6 → 94.2 MiB exactly-once. The price is page faults
//! (fresh pages are zeroed): the worker's kernel time went from ≈4% to ≈9%
//! of a `perf` profile's samples, part of which reusing message lists
//! ([`crate::flow::lists`]) takes back.

/// Blocks of this size or more get mappings of their own (glibc's initial
/// threshold is 128 KiB; a reply of a 5,000-entry read is about 650 KiB).
const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. Process-wide, and
/// only for blocks the heap cannot serve from what it holds free: the
/// `sluice` binary calls it first thing (`tests/allocator.rs` checks it in
/// a process of its own). Elsewhere (musl, other systems) it does nothing.
pub fn return_large_blocks_when_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; glibc takes
    // its own lock for it, and any value is valid for M_MMAP_THRESHOLD.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}
