//! How the process gives memory back: large blocks go straight back to
//! the system when freed.
//!
//! glibc serves blocks over its mmap threshold with their own mapping, but
//! raises that threshold each time such a block is freed, up to 32 MiB.
//! After the first batches, a batch's buffers (a 50,000-message list, a
//! reply, a Native block: a few MiB each) then come from the heap, and a
//! freed one stays in the process between heap blocks still in use. Fixed,
//! they are unmapped when freed and the resident size follows what is
//! live: peak RSS 68 → 47 MiB at-least-once and 104 → 73 MiB exactly-once,
//! at no measurable cost in throughput (`cargo bench --bench e2e`, README).

/// Blocks of this size or more get mappings of their own (glibc's initial
/// threshold is 128 KiB; a reply of a 5,000-entry read is about 650 KiB).
const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. Process-wide; the
/// `sluice` binary calls it first thing. Elsewhere (musl, other systems)
/// it does nothing.
pub(crate) fn return_large_blocks_when_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; glibc takes
    // its own lock for it, and any value is valid for M_MMAP_THRESHOLD.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Bytes in blocks that have mappings of their own.
    fn mapped() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    fn a_large_block_has_its_own_mapping_after_a_larger_one_was_freed() {
        return_large_blocks_when_freed();
        // Freeing a 3 MiB block is what would raise glibc's threshold
        // past 2 MiB.
        drop(std::hint::black_box(vec![1u8; 3 << 20]));
        let before = mapped();
        let block = std::hint::black_box(vec![1u8; 2 << 20]);
        let during = mapped();
        drop(block);
        assert!(
            during >= before + (2 << 20),
            "a 2 MiB block came from the heap ({before} → {during} bytes mapped)"
        );
    }
}
