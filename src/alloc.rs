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

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The global allocator; declared `#[global_allocator]` in the binary as
/// `Allocator`. mimalloc, called as the `mimalloc` crate does, except that
/// blocks needing no more than word alignment (nearly all of them) go
/// through `mi_malloc` rather than `mi_malloc_aligned`: every mimalloc
/// block is word-aligned already, and the aligned entry point's checks
/// were a measurable share of the engine's allocations.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

/// Every mimalloc block is aligned to at least this (its smallest size
/// class is one word, and every class is a multiple of it).
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: mimalloc returns blocks of at least the requested size, aligned
// as requested (word alignment by construction; larger alignments through
// its `_aligned` entry points), or null on failure; `mi_free` takes any
// block it returned, whatever the entry point.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment gets a block aligned as asked, which keeps
    /// its bytes through growing and shrinking reallocations.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 7, 8, 9, 24, 40, 56, 100, 1000, 70_000, 3 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown {size}, align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == i as u8));
                    let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = a.realloc(grown, grown_layout, size.div_ceil(2));
                    assert_eq!(shrunk as usize % align, 0);
                    assert!((0..size.div_ceil(2)).all(|i| *shrunk.add(i) == i as u8));
                    a.dealloc(
                        shrunk,
                        Layout::from_size_align(size.div_ceil(2), align).unwrap(),
                    );

                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
