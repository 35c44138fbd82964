//! The allocator setting of `src/memory.rs`, checked in a process of its
//! own: in the shared test process, blocks other tests freed serve new
//! ones from the heap whatever the threshold says.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_large_block_has_its_own_mapping_after_a_larger_one_was_freed() {
    /// Bytes in blocks that have mappings of their own.
    fn mapped() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    sluice::testing::return_large_blocks_when_freed();
    // Freeing a 3 MiB block is what would raise glibc's threshold past
    // 2 MiB.
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
