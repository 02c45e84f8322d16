//! Host tests of `mm::user`: the kernel's machine over the host stand-ins
//! of the frame allocator and the architecture (frames are host pages,
//! copies go through the page tables and the identity direct map).

use super::*;
use crate::mm::frames_in_use;
use crate::mm::paging::Attr;

const BASE: usize = 0x40_0000;

/// A space with `pages` lazily allocated read-write pages at `BASE`.
fn space_with(pages: usize) -> UserSpace {
    let mut s = UserSpace::new(0, None).unwrap();
    s.map(
        BASE,
        MemoryObject::anonymous(pages, false).unwrap(),
        0,
        pages,
        Attr::WRITE,
    )
    .unwrap();
    s
}

#[test]
fn copies_round_trip_across_a_page_boundary_loaded_or_not() {
    let before = frames_in_use();
    let mut s = space_with(2);
    for loaded in [false, true] {
        if loaded {
            load(&mut s);
            assert_eq!(arch::host::loaded_user_root().map(|r| r.0), Some(s.root()));
        }
        let data: [u8; 32] = core::array::from_fn(|i| i as u8 + u8::from(loaded));
        let at = BASE + PAGE - 16;
        assert_eq!(copy_to_user(&mut s, UserAddr::new(at), &data), Ok(()));
        let mut back = [0u8; 32];
        assert_eq!(copy_from_user(&mut s, UserAddr::new(at), &mut back), Ok(()));
        assert_eq!(back, data);
        // The bytes are in the two frames, through the page tables.
        let first = s.translate(at).unwrap().pa;
        let second = s.translate(BASE + PAGE).unwrap().pa;
        assert_ne!(first & !0xfff, second);
        // SAFETY: both are live host frames of `s` (identity direct map).
        let (a, b) = unsafe {
            (
                *(arch::phys_to_virt(first) as *const u8),
                *(arch::phys_to_virt(second) as *const u8),
            )
        };
        assert_eq!((a, b), (data[0], data[16]));
    }
    unload();
    assert_eq!(arch::host::loaded_user_root(), None);
    drop(s);
    assert_eq!(frames_in_use(), before, "every frame returned");
}

#[test]
fn bad_addresses_are_refused() {
    let before = frames_in_use();
    let mut s = space_with(2);
    let bad = Err(Error::BadAddress);
    let mut b = [0u8; 8];
    assert_eq!(
        copy_from_user(&mut s, UserAddr::new(BASE + 2 * PAGE), &mut b),
        bad,
        "unmapped"
    );
    assert_eq!(
        copy_to_user(&mut s, UserAddr::new(BASE + 2 * PAGE), &b),
        bad,
        "unmapped"
    );
    assert_eq!(
        copy_from_user(&mut s, UserAddr::new(BASE + 2 * PAGE - 4), &mut b),
        bad,
        "runs off"
    );
    assert_eq!(
        copy_from_user(&mut s, UserAddr::new(0), &mut b),
        bad,
        "null"
    );
    assert_eq!(
        copy_to_user(&mut s, UserAddr::new(usize::MAX - 3), &b),
        bad,
        "wraps"
    );
    assert_eq!(
        copy_to_user(&mut s, UserAddr::new(USER_END - 4), &b),
        bad,
        "kernel half"
    );
    assert_eq!(copy_from_user(&mut s, UserAddr::new(BASE), &mut []), Ok(()));
    // Read-only pages refuse writes, allow reads.
    assert_eq!(s.protect(BASE, 2, Attr::empty()), Ok(()));
    assert_eq!(
        copy_to_user(&mut s, UserAddr::new(BASE), &b),
        bad,
        "read-only"
    );
    assert_eq!(copy_from_user(&mut s, UserAddr::new(BASE), &mut b), Ok(()));
    assert_eq!(b, [0; 8], "demand-zero");
    drop(s);
    assert_eq!(frames_in_use(), before);
}

#[test]
fn strings_stop_at_the_nul_or_fail() {
    let mut s = space_with(1);
    // The string ends on the last byte of the only mapped page.
    let at = BASE + PAGE - 6;
    assert_eq!(copy_to_user(&mut s, UserAddr::new(at), b"hello\0"), Ok(()));
    let mut buf = [0u8; 16];
    assert_eq!(
        copy_str_from_user(&mut s, UserAddr::new(at), &mut buf),
        Ok(5)
    );
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(
        copy_str_from_user(&mut s, UserAddr::new(at), &mut buf[..3]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(copy_to_user(&mut s, UserAddr::new(at), b"hellos"), Ok(()));
    assert_eq!(
        copy_str_from_user(&mut s, UserAddr::new(at), &mut buf),
        Err(Error::BadAddress),
        "runs into the unmapped page"
    );
}

#[test]
fn written_objects_are_seen_by_every_mapping_and_cow_children_split() {
    let before = frames_in_use();
    let obj = MemoryObject::anonymous(2, false).unwrap();
    assert_eq!(write_object(&obj, PAGE - 2, b"span"), Ok(()));
    let mut parent = UserSpace::new(0, None).unwrap();
    parent.map(BASE, obj.clone(), 0, 2, Attr::WRITE).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(
        copy_from_user(&mut parent, UserAddr::new(BASE + PAGE - 2), &mut b),
        Ok(())
    );
    assert_eq!(&b, b"span");
    drop(obj);
    let mut child = parent.clone_cow(0, None).unwrap();
    assert_eq!(
        copy_to_user(&mut child, UserAddr::new(BASE), b"kid!"),
        Ok(())
    );
    assert_eq!(
        copy_from_user(&mut parent, UserAddr::new(BASE), &mut b),
        Ok(())
    );
    assert_ne!(&b, b"kid!", "the parent does not see the child's write");
    assert_eq!(
        copy_from_user(&mut child, UserAddr::new(BASE), &mut b),
        Ok(())
    );
    assert_eq!(&b, b"kid!");
    drop(child);
    drop(parent);
    assert_eq!(frames_in_use(), before, "every frame returned");
}

#[test]
fn frame_stats_count_host_frames() {
    let (total, free, _) = crate::mm::frame_stats().unwrap();
    let mut s = space_with(4);
    for i in 0..4 {
        assert_eq!(
            copy_to_user(&mut s, UserAddr::new(BASE + i * PAGE), &[1]),
            Ok(())
        );
    }
    let (_, now, peak) = crate::mm::frame_stats().unwrap();
    // Four data frames and at least the root and three more tables.
    assert!(free - now >= 8, "{free} -> {now}");
    assert!(peak >= total - now);
    drop(s);
    assert_eq!(crate::mm::frame_stats().unwrap().1, free);
}

#[test]
fn running_out_of_frames_is_an_error_and_leaks_nothing() {
    let before = frames_in_use();
    let mut s = space_with(64);
    crate::mm::set_frame_limit(Some(frames_in_use() + 3));
    let mut failed = None;
    for i in 0..64 {
        if let Err(e) = copy_to_user(&mut s, UserAddr::new(BASE + i * PAGE), &[1]) {
            failed = Some(e);
            break;
        }
    }
    crate::mm::set_frame_limit(None);
    assert_eq!(failed, Some(Error::OutOfMemory));
    drop(s);
    assert_eq!(frames_in_use(), before);
}

#[test]
fn copies_between_spaces_go_frame_to_frame_and_name_the_failing_side() {
    let before = frames_in_use();
    let (mut a, mut b) = (space_with(2), space_with(3));
    let data: [u8; 100] = core::array::from_fn(|i| i as u8);
    copy_to_user(&mut a, UserAddr::new(BASE + PAGE - 40), &data).unwrap();
    // Across a page boundary on both sides, at different offsets.
    let (src, dst) = (
        UserAddr::new(BASE + PAGE - 40),
        UserAddr::new(BASE + 2 * PAGE - 10),
    );
    assert_eq!(copy_between(&mut a, src, Some(&mut b), dst, 100), Ok(()));
    let mut back = [0u8; 100];
    copy_from_user(&mut b, dst, &mut back).unwrap();
    assert_eq!(back, data);
    // Within one space (overlap allowed).
    assert_eq!(
        copy_between(&mut a, src, None, UserAddr::new(BASE), 100),
        Ok(())
    );
    copy_from_user(&mut a, UserAddr::new(BASE), &mut back).unwrap();
    assert_eq!(back, data);
    // Each side's failure is named; the destination is checked first.
    let out = UserAddr::new(BASE + 8 * PAGE);
    assert_eq!(
        copy_between(&mut a, out, Some(&mut b), out, 8),
        Err(CopyFault::Destination(Error::BadAddress))
    );
    assert_eq!(
        copy_between(&mut a, out, Some(&mut b), dst, 8),
        Err(CopyFault::Source(Error::BadAddress))
    );
    assert_eq!(
        copy_between(&mut a, UserAddr::new(0), None, dst, 8),
        Err(CopyFault::Source(Error::BadAddress))
    );
    assert_eq!(
        copy_between(&mut a, out, None, out, 0),
        Ok(()),
        "nothing to copy"
    );
    drop((a, b));
    assert_eq!(frames_in_use(), before);
}
