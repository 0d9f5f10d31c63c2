//! The process allocator. The `forewarn` binary (every subcommand, the
//! daemon above all) and the engine benchmark use mimalloc instead of the
//! system malloc: the engine allocates and frees a
//! handful of small blocks per event (the members it decodes, the event
//! itself, stored triggers), and mimalloc's per-thread free lists make
//! that markedly cheaper.
//!
//! Large OS pages are allowed as well (transparent huge pages, where the
//! kernel offers them on `madvise`). Engine state is millions of small
//! records reached at random (episodes, threshold windows); with 4 KiB
//! pages nearly every look-up also misses the TLB, which on a virtual
//! machine costs a two-level page walk. 2 MiB pages keep most of those
//! walks in cache. Set `MIMALLOC_ALLOW_LARGE_OS_PAGES=0` to turn it off.

/// The global allocator type; declared `#[global_allocator]` in the binary.
pub type Allocator = mimalloc::MiMalloc;

/// Call first thing in `main`: allows large OS pages unless the
/// environment says otherwise (mimalloc reads its own `MIMALLOC_*`
/// variables; this only changes the default).
pub fn tune() {
    if std::env::var_os("MIMALLOC_ALLOW_LARGE_OS_PAGES").is_none() {
        // SAFETY: sets one of mimalloc's documented options; any value is
        // valid, and mimalloc reads options with atomic loads.
        unsafe {
            libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
        }
    }
}
