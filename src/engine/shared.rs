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
        // SAFETY: the layout has a non-zero size (the head). The head is
        // written before anything reads it, and the bytes go right after
        // it, inside the allocation.
        unsafe {
            let head = NonNull::new(alloc(layout).cast::<Head>())
                .unwrap_or_else(|| handle_alloc_error(layout));
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

/// The allocation for `len` bytes: the head, then the bytes.
fn layout(len: usize) -> Layout {
    Layout::from_size_align(
        std::mem::size_of::<Head>() + len,
        std::mem::align_of::<Head>(),
    )
    .expect("a layout under 4 GiB")
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
        // As `Arc`'s drop: every other owner's use happens before the free.
        fence(Ordering::Acquire);
        let layout = layout(self.head().len as usize);
        // SAFETY: the last owner; allocated by `new` with this layout.
        unsafe { dealloc(self.0.as_ptr().cast::<u8>(), layout) }
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

    #[test]
    fn costs_no_more_than_a_boxed_slice() {
        assert_eq!(std::mem::size_of::<SharedBytes>(), 8);
        assert_eq!(std::mem::size_of::<Option<SharedBytes>>(), 8);
        assert_eq!(std::mem::size_of::<Head>(), 8);
    }
}
