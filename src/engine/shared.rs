//! [`SharedBytes`]: immutable bytes that several owners share, counted, in
//! one allocation behind a thin pointer. A stored trigger is one: an event
//! that opens episodes of several absence rules (the shipped checkout rule
//! and the filler's four on every `checkout_started`) stores its trigger
//! once, and each episode holds a count on it, where each used to own a
//! copy (an allocation, a `memcpy` and a free apiece).
//!
//! `Arc<[u8]>` would do the same with a wider pointer (16 bytes) and a
//! 16-byte header (its strong and weak counts); here the pointer is 8
//! bytes and the header 8 (a 32-bit count and the length), so an episode
//! that shares with no one costs what a `Box<[u8]>` did: 8 bytes less in
//! its slot, 8 more in the allocation.
//!
//! A stored trigger lives as long as its episode (minutes to days), so by
//! the time it is freed its memory is cold, and the allocator's free list
//! for its size is made of such blocks: the allocator links free blocks
//! through their own first word, so handing out the next one waited on a
//! cache miss (in the sustained benchmark, two thirds of `malloc`'s
//! samples sat on that read, and stored triggers were a third of `malloc`'s
//! samples, more than any other caller's). Instead, a block whose
//! last owner is gone goes to a small pool per thread, by size
//! ([`Pool`]), and [`SharedBytes::new`] takes the newest block of its size
//! from there: memory that the count's decrement touched moments before.
//! Frees and allocations of stored triggers come at the same rate (an
//! episode closes or fires for every one that opens), so the pool stays
//! small; it is bounded, and the allocator takes the rest.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

/// What the pointer points at; the bytes follow it.
#[repr(C)]
struct Head {
    count: AtomicU32,
    len: u32,
}

/// The empty value: never allocated, never counted, never freed, so that
/// `Default` (and `std::mem::take`) costs nothing.
static EMPTY: Head = Head {
    count: AtomicU32::new(1),
    len: 0,
};

/// Immutable shared bytes (see the module documentation).
pub struct SharedBytes(NonNull<Head>);

// SAFETY: the bytes are never written after `new`, and the count is atomic,
// as in `Arc<[u8]>`, which is `Send` and `Sync`.
unsafe impl Send for SharedBytes {}
// SAFETY: as above.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    /// A copy of `bytes`, with one owner.
    ///
    /// # Panics
    /// On 4 GiB or more (a Kafka record is at most 2 GiB).
    pub fn new(bytes: &[u8]) -> SharedBytes {
        if bytes.is_empty() {
            return SharedBytes::default();
        }
        let len = u32::try_from(bytes.len()).expect("shared bytes are less than 4 GiB");
        let layout = layout(bytes.len());
        let head = POOL
            .try_with(|pool| pool.borrow_mut().take(layout.size()))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                // SAFETY: the layout has a non-zero size (the head).
                NonNull::new(unsafe { alloc(layout) }.cast::<Head>())
                    .unwrap_or_else(|| handle_alloc_error(layout))
            });
        // SAFETY: the block (new, or pooled: of this length's layout, and
        // owned by no one) is written before anything reads it, the head
        // first and the bytes right after it, inside the block.
        unsafe {
            head.as_ptr().write(Head {
                count: AtomicU32::new(1),
                len,
            });
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                head.as_ptr().add(1).cast::<u8>(),
                bytes.len(),
            );
            SharedBytes(head)
        }
    }

    fn head(&self) -> &Head {
        // SAFETY: the head lives as long as any owner (or forever: EMPTY).
        unsafe { self.0.as_ref() }
    }

    fn is_static(&self) -> bool {
        std::ptr::eq(self.0.as_ptr(), &EMPTY)
    }
}

/// The allocation for `len` bytes: the head, then the bytes, rounded up
/// to a whole word, as the allocator rounds it anyway (mimalloc's smallest
/// size classes are a word apart), so that every length of one rounded
/// size can reuse the same pooled blocks.
fn layout(len: usize) -> Layout {
    block((std::mem::size_of::<Head>() + len).next_multiple_of(WORD))
}

/// A block of `size` bytes, aligned for the head.
fn block(size: usize) -> Layout {
    Layout::from_size_align(size, std::mem::align_of::<Head>()).expect("a layout under 4 GiB")
}

const WORD: usize = 8;

/// Pooled sizes: blocks up to this size (head included) are kept for
/// reuse; larger ones go back to the allocator at once.
const POOL_MAX_SIZE: usize = 512;

/// Blocks kept per size; beyond it, a block goes back to the allocator.
/// At most `POOL_PER_SIZE` × 64 sizes × up to 512 bytes per thread (2 MiB
/// at the very most; a few kilobytes in practice, since frees and
/// allocations of stored triggers come at the same rate).
const POOL_PER_SIZE: usize = 64;

/// Freed blocks by size in words (see the module documentation).
struct Pool {
    sizes: [Vec<NonNull<Head>>; POOL_MAX_SIZE / WORD],
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool {
            sizes: [const { Vec::new() }; POOL_MAX_SIZE / WORD],
        })
    };
}

impl Pool {
    /// The pool's list for blocks of `size` bytes (rounded), if pooled.
    fn list(&mut self, size: usize) -> Option<&mut Vec<NonNull<Head>>> {
        self.sizes.get_mut(size / WORD - 1)
    }

    /// A pooled block of `size` bytes (a [`layout`]'s size), if any.
    fn take(&mut self, size: usize) -> Option<NonNull<Head>> {
        self.list(size)?.pop()
    }

    /// Keeps `head`, a block of `size` bytes (a [`layout`]'s size) that
    /// nobody owns, for reuse: false when its size is not pooled or its
    /// list is full.
    fn keep(&mut self, head: NonNull<Head>, size: usize) -> bool {
        match self.list(size) {
            Some(list) if list.len() < POOL_PER_SIZE => {
                list.push(head);
                true
            }
            _ => false,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (words, list) in self.sizes.iter_mut().enumerate() {
            let layout = block((words + 1) * WORD);
            for head in list.drain(..) {
                // SAFETY: pooled blocks have no owner; allocated with the
                // layout of their size.
                unsafe { dealloc(head.as_ptr().cast::<u8>(), layout) }
            }
        }
    }
}

impl Default for SharedBytes {
    fn default() -> SharedBytes {
        SharedBytes(NonNull::from(&EMPTY))
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let len = self.head().len as usize;
        // SAFETY: `len` bytes were written after the head by `new` (none
        // for EMPTY, whose pointer is still valid and aligned for u8).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().add(1).cast::<u8>(), len) }
    }
}

impl Clone for SharedBytes {
    fn clone(&self) -> SharedBytes {
        if !self.is_static() {
            // Relaxed, as `Arc::clone`: a new owner comes from an existing
            // one, which keeps the allocation alive meanwhile.
            let before = self.head().count.fetch_add(1, Ordering::Relaxed);
            // Some 2 billion owners of one trigger would be a leak of
            // their own; stop before the count could wrap.
            if before > u32::MAX / 2 {
                std::process::abort();
            }
        }
        SharedBytes(self.0)
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        if self.is_static() || self.head().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // As `Arc`'s drop: every other owner's use happens before the block
        // is reused or freed.
        fence(Ordering::Acquire);
        let (head, layout) = (self.0, layout(self.head().len as usize));
        // Pooled (see the module documentation); on a thread whose pool is
        // already gone (its exit), freed.
        if !POOL
            .try_with(|pool| pool.borrow_mut().keep(head, layout.size()))
            .unwrap_or(false)
        {
            // SAFETY: the last owner; allocated with this layout.
            unsafe { dealloc(head.as_ptr().cast::<u8>(), layout) }
        }
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len())
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        **self == **other
    }
}

impl Eq for SharedBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(b: &SharedBytes) -> u32 {
        b.head().count.load(Ordering::SeqCst)
    }

    #[test]
    fn holds_a_copy_of_the_bytes() {
        let mut source = b"\x93\xa3c42\xc0\x80".to_vec();
        let b = SharedBytes::new(&source);
        source[0] = 0;
        assert_eq!(&*b, b"\x93\xa3c42\xc0\x80");
        assert_eq!(b.len(), 7);
    }

    #[test]
    fn clones_share_one_allocation_and_the_last_owner_frees_it() {
        let a = SharedBytes::new(b"trigger");
        let b = a.clone();
        let c = b.clone();
        assert!(std::ptr::eq(a.as_ptr(), c.as_ptr()), "one allocation");
        assert_eq!(count(&a), 3);
        drop(b);
        assert_eq!(count(&a), 2);
        drop(a);
        assert_eq!(count(&c), 1);
        assert_eq!(&*c, b"trigger");
    }

    #[test]
    fn empty_is_never_allocated_nor_counted() {
        let e = SharedBytes::default();
        let from_new = SharedBytes::new(&[]);
        assert!(e.is_static() && from_new.is_static());
        let before = count(&e);
        let copies: Vec<SharedBytes> = (0..10).map(|_| e.clone()).collect();
        assert_eq!(count(&e), before);
        drop(copies);
        assert_eq!(count(&e), before);
        assert!(e.is_empty());
        let mut taken = SharedBytes::new(b"x");
        assert_eq!(&*std::mem::take(&mut taken), b"x");
        assert!(taken.is_empty());
    }

    #[test]
    fn owners_on_several_threads() {
        let a = SharedBytes::new(&[7u8; 100]);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mine = a.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let c = mine.clone();
                        assert_eq!(c[99], 7);
                    }
                    mine
                })
            })
            .collect();
        let back: Vec<SharedBytes> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(count(&a), 5);
        drop(back);
        assert_eq!(count(&a), 1);
    }

    fn pooled(size: usize) -> usize {
        POOL.with(|p| p.borrow_mut().list(size).map_or(0, |l| l.len()))
    }

    #[test]
    fn a_freed_block_is_reused_by_the_next_one_of_its_size() {
        let a = SharedBytes::new(&[1u8; 100]);
        let at = a.as_ptr();
        drop(a);
        // 100 and 97 bytes round to the same size (108 → 112, 105 → 112).
        let b = SharedBytes::new(&[2u8; 97]);
        assert!(std::ptr::eq(b.as_ptr(), at), "the pooled block");
        assert_eq!(&*b, &[2u8; 97][..]);
        // Another size does not take it.
        drop(b);
        let c = SharedBytes::new(&[3u8; 200]);
        assert!(!std::ptr::eq(c.as_ptr(), at));
        assert_eq!(pooled(layout(97).size()), 1);
    }

    #[test]
    fn a_block_someone_still_holds_is_never_reused() {
        let a = SharedBytes::new(&[5u8; 60]);
        let kept = a.clone();
        drop(a);
        let fresh: Vec<SharedBytes> = (0..10).map(|_| SharedBytes::new(&[6u8; 60])).collect();
        assert!(fresh
            .iter()
            .all(|f| !std::ptr::eq(f.as_ptr(), kept.as_ptr())));
        assert_eq!(&*kept, &[5u8; 60][..]);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_per_size_and_none_that_are_large() {
        let many: Vec<SharedBytes> = (0..POOL_PER_SIZE * 3)
            .map(|_| SharedBytes::new(&[7u8; 30]))
            .collect();
        drop(many);
        assert_eq!(pooled(layout(30).size()), POOL_PER_SIZE);
        let large = SharedBytes::new(&[8u8; POOL_MAX_SIZE]);
        drop(large);
        assert!(POOL.with(|p| p.borrow_mut().list(layout(POOL_MAX_SIZE).size()).is_none()));
    }

    #[test]
    fn a_last_owner_on_another_thread_pools_there_and_frees_at_its_end() {
        let a = SharedBytes::new(&[9u8; 50]);
        let size = layout(50).size();
        let here = pooled(size);
        let there = std::thread::spawn(move || {
            drop(a);
            let there = pooled(size);
            // A new block of the size on that thread is the one it pooled.
            let b = SharedBytes::new(&[1u8; 50]);
            (there, pooled(size), b)
        })
        .join()
        .unwrap();
        assert_eq!((there.0, there.1), (1, 0));
        assert_eq!(&*there.2, &[1u8; 50][..]);
        assert_eq!(pooled(size), here, "this thread's pool is untouched");
    }

    #[derive(Debug, Clone)]
    enum Op {
        New(Vec<u8>),
        Clone(usize),
        Drop(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            // Lengths around a few rounded sizes, so that blocks are reused.
            prop::collection::vec(any::<u8>(), 0..80).prop_map(Op::New),
            any::<usize>().prop_map(Op::Clone),
            any::<usize>().prop_map(Op::Drop),
        ]
    }

    proptest::proptest! {
        /// Against the naive model (each owner its own copy): every owner
        /// reads its own bytes whatever is created, shared and dropped
        /// around it, pooled blocks reused among them.
        #[test]
        fn every_owner_keeps_its_bytes(ops in proptest::collection::vec(op(), 1..400)) {
            let mut live: Vec<(SharedBytes, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::New(bytes) => live.push((SharedBytes::new(&bytes), bytes)),
                    Op::Clone(i) if !live.is_empty() => {
                        let (b, m) = &live[i % live.len()];
                        live.push((b.clone(), m.clone()));
                    }
                    Op::Drop(i) if !live.is_empty() => {
                        live.swap_remove(i % live.len());
                    }
                    _ => {}
                }
                for (b, m) in &live {
                    proptest::prop_assert_eq!(&**b, &m[..]);
                }
            }
        }
    }

    #[test]
    fn costs_no_more_than_a_boxed_slice() {
        assert_eq!(std::mem::size_of::<SharedBytes>(), 8);
        assert_eq!(std::mem::size_of::<Option<SharedBytes>>(), 8);
        assert_eq!(std::mem::size_of::<Head>(), 8);
    }
}
