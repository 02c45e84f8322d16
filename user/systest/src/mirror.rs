//! A second address space that maps this program's text segment, taken
//! from the boot image, at the addresses it has here, so that threads can
//! run the runtime's text routines (`keel_rt::probe::*_address`) in it: a
//! second process for the two-address-space yield benchmark and test.
//!
//! The text segment is found by parsing the ELF program headers of the boot
//! image (the root task's own file), mapped read-only into this address
//! space only while they are read. The kernel's loader requires a
//! segment's file offset and address to agree modulo the page size, so the
//! boot-image pages from `p_offset / PAGE` map at `p_vaddr & !(PAGE - 1)`
//! (executable, never writable: the boot image has no `WRITE` right).
//!
//! Invariants: every thread made here has no stack, starts inside the
//! mapped text, and runs in a capability space of its own (so a fault kills
//! only it, never the root task). A [`TextMirror`] or [`Process`] dropped
//! without [`release`](TextMirror::release) kills, unmaps and deletes what
//! it owns on a best-effort basis.

use core::ops::Range;
use keel_abi::Error;
use keel_abi::boot::RootInfo;
use keel_abi::cap::CapToken;
use keel_abi::syscall::PROT_EXEC;
use keel_rt::syscall::{
    aspace_create, cap_delete, cap_space_create, map, mem_size, thread_create, thread_kill,
    thread_resume, thread_set_affinity, thread_set_priority, unmap,
};

/// Page size (4 KiB on every architecture Keel supports).
const PAGE: usize = 4096;
/// Capability slots of each thread's own capability space (it needs none).
const PROCESS_SLOTS: usize = 4;

/// A step that failed: what was being done, and the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    pub what: &'static str,
    pub error: Error,
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        f.error
    }
}

trait Step<T> {
    fn step(self, what: &'static str) -> Result<T, Failed>;
}

impl<T> Step<T> for Result<T, Error> {
    fn step(self, what: &'static str) -> Result<T, Failed> {
        self.map_err(|error| Failed { what, error })
    }
}

/// A loadable segment of an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: usize,
    pub vaddr: usize,
    pub filesz: usize,
    pub memsz: usize,
}

impl Segment {
    /// Where its pages go: `(first page address, first page of the file,
    /// pages)`, if its offset and address agree modulo the page size and
    /// all of it comes from the file.
    fn pages(&self) -> Option<(usize, usize, usize)> {
        if self.offset % PAGE != self.vaddr % PAGE || self.memsz == 0 || self.memsz > self.filesz {
            return None;
        }
        let pages = (self.vaddr % PAGE).checked_add(self.memsz)?.div_ceil(PAGE);
        Some((self.vaddr - self.vaddr % PAGE, self.offset / PAGE, pages))
    }
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
/// Size of an ELF64 program header.
const PHDR_SIZE: usize = 56;

fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    bytes_at(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    bytes_at(b, at).map(u32::from_le_bytes)
}

fn usize_at(b: &[u8], at: usize) -> Option<usize> {
    bytes_at(b, at)
        .map(u64::from_le_bytes)
        .and_then(|v| usize::try_from(v).ok())
}

/// The first loadable, executable segment of a little-endian ELF64 file;
/// `None` if `elf` is not one, or has no such segment (program headers
/// that lie outside the file count as absent).
pub fn text_segment(elf: &[u8]) -> Option<Segment> {
    if elf.get(..4)? != ELF_MAGIC || *elf.get(4)? != ELFCLASS64 || *elf.get(5)? != ELFDATA2LSB {
        return None;
    }
    let phoff = usize_at(elf, 32)?;
    let phentsize = usize::from(u16_at(elf, 54)?);
    let phnum = usize::from(u16_at(elf, 56)?);
    if phentsize < PHDR_SIZE {
        return None;
    }
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let executable_load = u32_at(elf, ph)? == PT_LOAD && u32_at(elf, ph + 4)? & PF_X != 0;
        executable_load.then_some(Segment {
            offset: usize_at(elf, ph + 8)?,
            vaddr: usize_at(elf, ph + 16)?,
            filesz: usize_at(elf, ph + 32)?,
            memsz: usize_at(elf, ph + 40)?,
        })
    })
}

/// Maps the boot image read-only at `scratch_va(pages)` in this address
/// space, finds its text segment, and unmaps it again.
fn read_text_segment(info: &RootInfo, scratch_va: fn(usize) -> usize) -> Result<Segment, Failed> {
    let image = CapToken::from_raw(info.boot_image);
    let own = CapToken::from_raw(info.aspace);
    let pages = mem_size(image).step("mem_size of the boot image")?;
    let bytes = usize::try_from(info.boot_image_bytes)
        .unwrap_or(usize::MAX)
        .min(pages.saturating_mul(PAGE));
    let va = scratch_va(pages);
    map(own, image, va, 0, pages, 0).step("map the boot image")?;
    let segment = {
        // SAFETY: `bytes` (at most `pages` pages) at `va` are mapped
        // readable from here to the unmap below, after this borrow ends;
        // nothing writes them (the boot image has no WRITE right).
        let elf = unsafe { core::slice::from_raw_parts(va as *const u8, bytes) };
        text_segment(elf)
    };
    // SAFETY: nothing refers to the range any more.
    let unmapped = unsafe { unmap(own, va, pages) }.step("unmap the boot image");
    let segment = segment.ok_or(Failed {
        what: "no executable PT_LOAD segment in the boot image",
        error: Error::InvalidArgument,
    })?;
    unmapped?;
    Ok(segment)
}

/// A second address space holding only this program's text, at the
/// addresses it has in ours.
pub struct TextMirror {
    /// `None` once released.
    aspace: Option<CapToken>,
    text: Range<usize>,
}

impl TextMirror {
    /// A new address space, charged to the root task's pool, with the
    /// text segment mapped executable. `scratch_va(pages)` must return a
    /// free range of `pages` pages of this address space, where the boot
    /// image is mapped while its headers are read.
    pub fn create(info: &RootInfo, scratch_va: fn(usize) -> usize) -> Result<Self, Failed> {
        let segment = read_text_segment(info, scratch_va)?;
        let (va, first, pages) = segment.pages().ok_or(Failed {
            what: "text segment offset and address disagree",
            error: Error::InvalidArgument,
        })?;
        let end = pages
            .checked_mul(PAGE)
            .and_then(|len| va.checked_add(len))
            .ok_or(Failed {
                what: "text segment size",
                error: Error::InvalidArgument,
            })?;
        let aspace = aspace_create(CapToken::from_raw(info.pool)).step("aspace_create")?;
        // Built before mapping, so that a failure below cleans up.
        let mirror = TextMirror {
            aspace: Some(aspace),
            text: va..end,
        };
        let image = CapToken::from_raw(info.boot_image);
        map(aspace, image, va, first, pages, PROT_EXEC).step("map the text")?;
        Ok(mirror)
    }

    /// The mapped range (whole pages).
    pub fn text(&self) -> Range<usize> {
        self.text.clone()
    }

    /// A new, suspended thread in this address space, in a capability
    /// space of its own charged to `pool`, starting at `entry` (which must
    /// lie in the text) with `arg` in its first argument register, no stack
    /// (stack pointer 0), and `priority`.
    pub fn spawn(
        &self,
        pool: CapToken,
        entry: usize,
        arg: usize,
        priority: usize,
    ) -> Result<Process, Failed> {
        let aspace = self.aspace.ok_or(Failed {
            what: "spawn in a released mirror",
            error: Error::InvalidState,
        })?;
        if !self.text.contains(&entry) {
            return Err(Failed {
                what: "entry outside the mirrored text",
                error: Error::InvalidArgument,
            });
        }
        let cspace = cap_space_create(pool, PROCESS_SLOTS).step("cap_space_create")?;
        let mut process = Process {
            thread: None,
            cspace: Some(cspace),
        };
        // SAFETY: the thread runs in another address space, never in ours,
        // at code that needs no stack.
        let thread =
            unsafe { thread_create(aspace, cspace, entry, 0, arg) }.step("thread_create")?;
        process.thread = Some(thread);
        thread_set_priority(thread, priority).step("thread_set_priority")?;
        Ok(process)
    }

    /// Unmaps the text and deletes the address space. Threads still
    /// running in it fault at their next instruction.
    pub fn release(&mut self) -> Result<(), Failed> {
        let Some(aspace) = self.aspace.take() else {
            return Ok(());
        };
        let pages = self.text.len() / PAGE;
        // SAFETY: not this program's address space.
        let unmapped = unsafe { unmap(aspace, self.text.start, pages) }.step("unmap the text");
        let deleted = cap_delete(aspace).step("delete the address space");
        unmapped.and(deleted)
    }
}

impl Drop for TextMirror {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// A thread of a [`TextMirror`] and the capability space that makes it a
/// process of its own.
pub struct Process {
    /// `None` once released (or never created).
    thread: Option<CapToken>,
    cspace: Option<CapToken>,
}

impl Process {
    /// The thread's capability (the null token once released).
    pub fn thread(&self) -> CapToken {
        self.thread.unwrap_or(CapToken::NULL)
    }

    /// Makes the thread runnable.
    pub fn resume(&self) -> Result<(), Error> {
        thread_resume(self.thread())
    }

    /// Whether the thread still exists (it has not exited, been killed,
    /// or died of a fault). Asks by setting its CPU mask to all CPUs,
    /// which it already is.
    pub fn alive(&self) -> Result<bool, Error> {
        match thread_set_affinity(self.thread(), usize::MAX) {
            Ok(()) => Ok(true),
            Err(Error::InvalidState) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Kills the thread if it still exists and deletes both capabilities.
    pub fn release(&mut self) -> Result<(), Failed> {
        let mut result = Ok(());
        if let Some(thread) = self.thread.take() {
            match thread_kill(thread) {
                // Already gone: it exited, or died with its process.
                Ok(()) | Err(Error::InvalidState) => {}
                Err(error) => {
                    result = Err(Failed {
                        what: "thread_kill",
                        error,
                    })
                }
            }
            result = result.and(cap_delete(thread).step("delete the thread"));
        }
        if let Some(cspace) = self.cspace.take() {
            result = result.and(cap_delete(cspace).step("delete the capability space"));
        }
        result
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.release();
    }
}
