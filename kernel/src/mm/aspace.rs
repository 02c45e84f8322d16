//! User address spaces: ranges of memory objects mapped with permissions,
//! filled in on demand, with copy-on-write cloning for fork. Written by
//! hand: core competence.
//!
//! An address space is a page-table tree (sharing the kernel half where the
//! architecture has one root for both halves) plus a sorted list of
//! regions. Page-table entries are a cache of the regions: any user page
//! may be unmapped from the tree at any time and is rebuilt by [`fault`]
//! from its region and object.
//!
//! Invariants:
//! - Regions are page-aligned, non-empty, sorted, non-overlapping and lie
//!   in `[USER_BASE, USER_END)`; their attributes are a subset of
//!   `WRITE | EXEC` and never both (W^X), and a mapped page's attributes
//!   are its region's, less `WRITE` while its frame is shared
//!   copy-on-write.
//! - Every mapped page maps the current frame of its object's page.
//! - Every page table of the space (root and intermediate) is charged one
//!   page to the space's pool, if it has one, for as long as it exists; a
//!   map the pool cannot pay tables for fails and changes nothing.
//!   Unmapping a region frees the tables whose block no region touches any
//!   more (known from the regions, without reading tables), except the
//!   path to the last such 2 MiB block, which stays in the tree (charged)
//!   for the next map there until another block takes its place.
//! - Dropping an address space frees its page tables and its references to
//!   objects; objects free their frames when the last reference goes.
//! - When a call that changed entries returns, no TLB holds an old one:
//!   on this CPU each page is flushed if the space is loaded; if not, the
//!   space drops its address-space id, so it gets a fresh one (with no TLB
//!   entries) when next loaded. The other CPUs that loaded it are shot
//!   down once per call (unmap: per region, before its frames can go).
//!
//! [`fault`]: AddressSpace::fault

use super::kref::{KArc, ensure, oom};
use super::machine::Machine;
use super::object::{Backing, MemObject, PAGE};
use super::paging::{
    Attr, ENTRIES, MapError, Mapping, PageSize, PageTable, PteFormat, TableMemory,
};
use super::pool::MemoryPool;
use alloc::vec::Vec;
use keel_abi::Error;

/// Lowest user address that can be mapped: page 0 stays unmapped so null
/// pointers fault.
pub const USER_BASE: usize = PAGE;
/// End of the user half (47-bit user addresses on every architecture).
pub use keel_abi::boot::USER_END;

/// A user virtual address as user space passed it: unchecked until a copy
/// helper (`mm::user`) or an address-space operation resolves it, and
/// never dereferenced by the kernel as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserAddr(usize);

impl UserAddr {
    /// Wraps a raw address from user space; nothing is checked here.
    pub const fn new(raw: usize) -> UserAddr {
        UserAddr(raw)
    }

    /// The address as a number, for the operations that check it.
    pub const fn get(self) -> usize {
        self.0
    }

    /// `self + n`, unless that wraps.
    pub fn offset(self, n: usize) -> Option<UserAddr> {
        self.0.checked_add(n).map(UserAddr)
    }
}

/// The kind of access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A load; allowed in every mapped region.
    Read,
    /// A store; needs a writable region and breaks copy-on-write sharing.
    Write,
    /// An instruction fetch; needs an executable region.
    Exec,
}

struct Region<M: Machine> {
    start: usize,
    end: usize,
    object: KArc<MemObject<M>>,
    /// Object page mapped at `start`.
    offset: usize,
    attr: Attr,
    /// The most `attr` may become: what it was mapped with.
    max: Attr,
}

impl<M: Machine> Region<M> {
    fn object_page(&self, va: usize) -> usize {
        self.offset + (va - self.start) / PAGE
    }

    /// Its part from `start` on, as a region mapping `object`.
    fn from(&self, start: usize, object: KArc<MemObject<M>>) -> Region<M> {
        Region {
            start,
            object,
            offset: self.object_page(start),
            ..*self
        }
    }

    fn leaf_attr(&self, shared: bool) -> Attr {
        let mut a = self.attr | Attr::USER;
        a.set(Attr::WRITE, self.attr.contains(Attr::WRITE) && !shared);
        let device = matches!(
            self.object.backing(),
            Backing::Physical { device: true, .. }
        );
        a.set(Attr::DEVICE, device);
        a
    }
}

/// A user address space.
pub struct AddressSpace<M: Machine> {
    table: PageTable<M::Format>,
    regions: Vec<Region<M>>,
    /// Address-space id in the low 16 bits, its `mm::asid` generation above.
    tag: u64,
    /// The CPUs that loaded it (bit per CPU): their TLBs may hold its
    /// translations.
    cpus: u64,
    /// The pool every page table is charged to (none: kernel-owned).
    pool: Option<KArc<MemoryPool>>,
    /// A 2 MiB block no region touches whose (empty) leaf table, with the
    /// tables above it, is left in the tree for the next map there.
    kept: Option<usize>,
}

/// The block one leaf table maps: 2 MiB.
const BLOCK: usize = 1 << 21;

/// Table memory that charges each table one page of `pool` while it
/// exists.
struct Charged<'a, T> {
    mem: T,
    pool: Option<&'a MemoryPool>,
}

fn charged<M: Machine>(pool: &Option<KArc<MemoryPool>>) -> Charged<'_, M::Tables> {
    Charged {
        mem: M::tables(),
        pool: pool.as_deref(),
    }
}

// SAFETY: every table comes from and goes back to `mem`, which keeps the
// contract; the pool only decides whether a table may be allocated.
unsafe impl<T: TableMemory> TableMemory for Charged<'_, T> {
    fn alloc_table(&mut self) -> Option<u64> {
        if let Some(p) = self.pool {
            p.charge(1).ok()?;
        }
        let pa = self.mem.alloc_table();
        if let (None, Some(p)) = (pa, self.pool) {
            p.credit(1);
        }
        pa
    }

    fn free_table(&mut self, pa: u64) {
        self.mem.free_table(pa);
        if let Some(p) = self.pool {
            p.credit(1);
        }
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        self.mem.table(pa)
    }
}

fn map_err(e: MapError) -> Error {
    match e {
        MapError::OutOfMemory => Error::OutOfMemory,
        MapError::AlreadyMapped => Error::AlreadyExists,
        _ => Error::InvalidArgument,
    }
}

fn check_attr(attr: Attr) -> Result<(), Error> {
    let wx = Attr::WRITE | Attr::EXEC;
    let valid = wx.contains(attr) && !attr.contains(wx);
    ensure(valid, Error::InvalidArgument)
}

/// The end of `[va, va + pages * PAGE)` if it is a page-aligned, non-empty
/// user range.
fn check_range(va: usize, pages: usize) -> Result<usize, Error> {
    let end = pages
        .checked_mul(PAGE)
        .and_then(|len| va.checked_add(len))
        .ok_or(Error::InvalidArgument)?;
    let valid = pages > 0 && va.is_multiple_of(PAGE) && va >= USER_BASE && end <= USER_END;
    ensure(valid, Error::InvalidArgument).map(|()| end)
}

impl<M: Machine> AddressSpace<M> {
    /// An empty address space tagged `asid`, whose page tables are charged
    /// to `pool`.
    pub fn new(asid: u16, pool: Option<KArc<MemoryPool>>) -> Result<Self, Error> {
        let mut t = charged::<M>(&pool);
        let mut table = PageTable::new(&mut t).map_err(map_err)?;
        // SAFETY: the kernel root is a live tree in the same table memory;
        // only its root entries are read.
        let kernel = unsafe { PageTable::from_root(M::kernel_root()) };
        table.share_root_entries(&mut t, &kernel, M::KERNEL_ENTRIES);
        drop(t);
        Ok(AddressSpace {
            table,
            regions: Vec::new(),
            tag: u64::from(asid),
            cpus: 0,
            pool,
            kept: None,
        })
    }

    /// The pool the page tables are charged to.
    pub fn pool(&self) -> Option<&KArc<MemoryPool>> {
        self.pool.as_ref()
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.table.root()
    }

    /// The address-space id the TLB tags this space's entries with.
    pub fn asid(&self) -> u16 {
        self.tag as u16
    }

    /// The id and its generation (see `mm::asid`).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Re-tags the space (the caller flushes the new id before use).
    pub fn set_tag(&mut self, tag: u64) {
        self.tag = tag;
    }

    /// Notes that the CPU of mask `cpu` loaded the space; whether it was
    /// not in the mask (it flushes the space's id: see `M::shootdown`).
    pub fn loaded_on(&mut self, cpu: u64) -> bool {
        let new = self.cpus & cpu == 0;
        self.cpus |= cpu;
        new
    }

    /// Makes sure no TLB keeps the old translation of `va` (see the module
    /// invariants), or with `None` any walk cached through freed tables. A
    /// free function over the fields it needs, so callers can hold borrows
    /// of the regions.
    fn flush(tag: &mut u64, cpus: &mut u64, root: u64, va: Option<usize>) {
        *cpus = M::shootdown(*cpus, root);
        match (M::is_loaded(root), va) {
            (true, Some(va)) => M::flush_page(*tag as u16, va),
            (true, None) => M::flush_space(*tag as u16),
            (false, _) => *tag = 0,
        }
    }

    /// How `va` is mapped in the page tables right now.
    pub fn translate(&self, va: usize) -> Option<Mapping> {
        self.table.translate(&M::tables(), va)
    }

    /// Index of the region containing `va`.
    fn find(&self, va: usize) -> Option<usize> {
        let after = self.regions.partition_point(|r| r.start <= va);
        let i = after.checked_sub(1)?;
        (self.regions.get(i)?.end > va).then_some(i)
    }

    /// The region containing `va` (`BadAddress` if none).
    fn region(&self, va: usize) -> Result<&Region<M>, Error> {
        self.find(va)
            .and_then(|i| self.regions.get(i))
            .ok_or(Error::BadAddress)
    }

    fn maps_object(&self, object: &KArc<MemObject<M>>) -> bool {
        self.regions.iter().any(|r| KArc::ptr_eq(&r.object, object))
    }

    /// Maps `pages` pages of `object`, starting at its page `offset`, at
    /// `va` with `attr` (a subset of `WRITE | EXEC`, not both).
    pub fn map(
        &mut self,
        va: usize,
        object: KArc<MemObject<M>>,
        offset: usize,
        pages: usize,
        attr: Attr,
    ) -> Result<(), Error> {
        check_attr(attr)?;
        let end = check_range(va, pages)?;
        let in_object = offset
            .checked_add(pages)
            .is_some_and(|e| e <= object.pages());
        ensure(in_object, Error::InvalidArgument)?;

        let at = self.regions.partition_point(|r| r.start < end);
        let overlap = at > 0 && self.regions.get(at - 1).is_some_and(|r| r.end > va);
        ensure(!overlap, Error::AlreadyExists)?;
        self.regions.try_reserve(1).map_err(oom)?;
        if !self.maps_object(&object) {
            object.add_space()?;
        }
        let region = Region {
            start: va,
            end,
            object,
            offset,
            attr,
            max: attr,
        };
        // Map what already has frames, so device and eager memory need no
        // faults.
        // New entries: flushed here page by page where the hardware may
        // cache missing ones, and on the other CPUs once for all.
        let mut any = false;
        let result = (0..pages)
            .filter_map(|p| Some((p, region.object.present(offset + p)?)))
            .try_for_each(|(p, pa)| {
                let a = region.leaf_attr(region.object.is_shared(offset + p));
                any = true;
                self.install(va + p * PAGE, pa, a, false)
            });
        if M::FLUSH_NEW_ENTRIES && any {
            self.cpus = M::shootdown(self.cpus, self.table.root());
        }
        self.regions.insert(at, region);
        if result.is_err() {
            // Undone completely: no new table kept.
            let _ = self.unmap(va, pages);
            self.release_kept();
        }
        result
    }

    /// Frees the kept path of tables, if no region has come to use it.
    fn release_kept(&mut self) {
        if let Some(k) = self.kept.take()
            && self.free_tables_in(k, k + BLOCK)
        {
            self.flush_walks();
        }
    }

    /// After tables were unlinked from the tree: no TLB may keep a cached
    /// walk through them.
    fn flush_walks(&mut self) {
        Self::flush(&mut self.tag, &mut self.cpus, self.table.root(), None);
    }

    /// Points the page at `va` to `pa` with `attr`, replacing any mapping;
    /// flushes this CPU's TLB and, with `shoot`, the other CPUs'.
    fn install(&mut self, va: usize, pa: u64, attr: Attr, shoot: bool) -> Result<(), Error> {
        let mut t = charged::<M>(&self.pool);
        let replaced = self.table.unmap(&mut t, va).is_ok();
        let cpus = &mut if shoot { self.cpus } else { 0 };
        if replaced {
            Self::flush(&mut self.tag, cpus, self.table.root(), Some(va));
        }
        if let Err(e) = self.table.map(&mut t, va, pa, PageSize::Size4K, attr) {
            // The walk may have linked new tables before it ran out and
            // unlinked them again: cached walks may lead through them.
            self.flush_walks();
            return Err(map_err(e));
        }
        if M::FLUSH_NEW_ENTRIES && !replaced {
            Self::flush(&mut self.tag, cpus, self.table.root(), Some(va));
        }
        self.cpus = if shoot { *cpus } else { self.cpus };
        Ok(())
    }

    /// Clears the entry of `va` and flushes it on this CPU; whether there
    /// was one. The caller shoots down the other CPUs once for all its
    /// pages, before their frames or tables can be freed.
    fn unmap_page(&mut self, va: usize) -> bool {
        let gone = self.table.unmap(&mut M::tables(), va).is_ok();
        if gone {
            Self::flush(&mut self.tag, &mut 0, self.table.root(), Some(va));
        }
        gone
    }

    /// Splits the region containing `at` so that a region starts there.
    fn split_at(&mut self, at: usize) -> Result<(), Error> {
        let Some(i) = self.find(at) else {
            return Ok(());
        };
        let Some(r) = self.regions.get_mut(i) else {
            return Ok(());
        };
        if r.start == at {
            return Ok(());
        }
        let upper = r.from(at, r.object.clone());
        // Reserve before shortening `r`, so a failure changes nothing.
        self.regions.try_reserve(1).map_err(oom)?;
        if let Some(r) = self.regions.get_mut(i) {
            r.end = at;
        }
        self.regions.insert(i + 1, upper);
        Ok(())
    }

    /// Removes every mapping in `[va, va + pages * PAGE)`. Parts of the
    /// range that are not mapped are ignored.
    pub fn unmap(&mut self, va: usize, pages: usize) -> Result<(), Error> {
        let end = check_range(va, pages)?;
        self.split_at(va)?;
        self.split_at(end)?;
        let lo = self.regions.partition_point(|r| r.start < va);
        let hi = self.regions.partition_point(|r| r.start < end);
        let mut freed = false;
        for _ in lo..hi {
            let r = self.regions.remove(lo);
            let pages = (r.start..r.end).step_by(PAGE);
            if pages.fold(false, |gone, page| self.unmap_page(page) | gone) {
                self.cpus = M::shootdown(self.cpus, self.table.root());
            }
            freed |= self.free_tables(r.start, r.end);
            if !self.maps_object(&r.object) {
                r.object.remove_space();
            }
        }
        if freed {
            self.flush_walks();
        }
        Ok(())
    }

    /// Frees the page tables under `[start, end)` (a range just unmapped)
    /// whose whole block no region touches any more: they map nothing,
    /// which the regions tell without reading the tables. The last such
    /// 2 MiB block keeps its leaf table and the tables above it in the tree
    /// (`kept`, still charged) for the next map there, and the block kept
    /// before is freed instead; so mapping and unmapping a page over and
    /// over neither allocates tables nor flushes cached walks.
    fn free_tables(&mut self, start: usize, end: usize) -> bool {
        let old = self.kept;
        let last = (start & !(BLOCK - 1)..end)
            .step_by(BLOCK)
            .rfind(|&b| !self.used(b, BLOCK));
        if last.is_some() {
            self.kept = last;
        }
        let mut freed = self.free_tables_in(start, end);
        if let Some(old) = old
            && Some(old) != self.kept
        {
            freed |= self.free_tables_in(old, old + BLOCK);
        }
        freed
    }

    /// Frees the tables under `[start, end)` whose block no region touches,
    /// lowest level first (a table goes after the tables below it), except
    /// the path to the kept block. Regions still to be removed by the same
    /// unmap still count, so a table they share goes with the last of them.
    fn free_tables_in(&mut self, start: usize, end: usize) -> bool {
        let mut freed = false;
        let mut t = charged::<M>(&self.pool);
        for level in 0..M::Format::levels() - 1 {
            let block = BLOCK << (9 * level);
            for at in (start & !(block - 1)..end).step_by(block) {
                let kept = self.kept.is_some_and(|k| k & !(block - 1) == at);
                if !kept && !self.used(at, block) {
                    freed |= self.table.free_table(&mut t, at, level);
                }
            }
        }
        freed
    }

    /// Whether any region touches `[at, at + len)`.
    fn used(&self, at: usize, len: usize) -> bool {
        let first = self.regions.partition_point(|r| r.end <= at);
        self.regions
            .get(first)
            .is_some_and(|r| r.start < at.saturating_add(len))
    }

    /// Changes the permissions of `[va, va + pages * PAGE)`, which must be
    /// entirely mapped, and never beyond what each part was mapped with
    /// (`AccessDenied`).
    pub fn protect(&mut self, va: usize, pages: usize, attr: Attr) -> Result<(), Error> {
        check_attr(attr)?;
        let end = check_range(va, pages)?;
        let mut at = va;
        while at < end {
            let r = self.region(at)?;
            ensure(r.max.contains(attr), Error::AccessDenied)?;
            at = r.end;
        }
        self.split_at(va)?;
        self.split_at(end)?;
        let lo = self.regions.partition_point(|r| r.start < va);
        let hi = self.regions.partition_point(|r| r.start < end);
        let mut t = M::tables();
        let mut changed = false;
        for i in lo..hi {
            self.regions[i].attr = attr;
            let r = &self.regions[i];
            for page in (r.start..r.end).step_by(PAGE) {
                if self.table.translate(&t, page).is_some() {
                    let a = r.leaf_attr(r.object.is_shared(r.object_page(page)));
                    if self.table.protect(&mut t, page, a).is_ok() {
                        Self::flush(&mut self.tag, &mut 0, self.table.root(), Some(page));
                        changed = true;
                    }
                }
            }
        }
        // The other CPUs once for the whole range.
        if changed {
            self.cpus = M::shootdown(self.cpus, self.table.root());
        }
        Ok(())
    }

    /// Handles a user fault at `va`: allocates a demand-zero page, breaks
    /// copy-on-write sharing on a write, and maps the page. `BadAddress` if
    /// no region allows the access. Returns the frame now mapped.
    pub fn fault(&mut self, va: usize, access: Access) -> Result<u64, Error> {
        let r = self.region(va)?;
        let allowed = match access {
            Access::Read => true,
            Access::Write => r.attr.contains(Attr::WRITE),
            Access::Exec => r.attr.contains(Attr::EXEC),
        };
        ensure(allowed, Error::BadAddress)?;
        let page_va = va & !(PAGE - 1);
        let page = r.object_page(page_va);
        let object = r.object.clone();
        let (pa, shared) = if access == Access::Write {
            let (pa, changed) = object.unshare(page)?;
            if changed {
                self.drop_other_views(&object, page, page_va);
            }
            (pa, false)
        } else {
            (object.frame(page)?, object.is_shared(page))
        };
        let attr = self.region(va)?.leaf_attr(shared);
        self.install(page_va, pa, attr, true)?;
        Ok(pa)
    }

    /// Unmaps every other address in this space that shows page `page` of
    /// `object` (it has just been given a new frame).
    fn drop_other_views(&mut self, object: &KArc<MemObject<M>>, page: usize, except: usize) {
        let views: Vec<usize> = self
            .regions
            .iter()
            .filter(|r| KArc::ptr_eq(&r.object, object))
            .filter(|r| (r.offset..r.object_page(r.end)).contains(&page))
            .map(|r| r.start + (page - r.offset) * PAGE)
            .filter(|&va| va != except)
            .collect();
        if views
            .into_iter()
            .fold(false, |gone, va| self.unmap_page(va) | gone)
        {
            self.cpus = M::shootdown(self.cpus, self.table.root());
        }
    }

    /// The frame behind `va` for a kernel access on the user's behalf,
    /// faulting it in (demand-zero, copy-on-write) as a user access would.
    pub fn resolve(&mut self, va: usize, access: Access) -> Result<u64, Error> {
        if let Some(m) = self.translate(va)
            && m.attr.contains(Attr::USER)
            && (access != Access::Write || m.attr.contains(Attr::WRITE))
            && (access != Access::Exec || m.attr.contains(Attr::EXEC))
        {
            return Ok(m.pa);
        }
        ensure(va < USER_END, Error::BadAddress)?;
        self.fault(va, access).map(|pa| pa + (va % PAGE) as u64)
    }

    /// A new memory object (charged to `pool`) with the `pages` pages at
    /// `va`, which must lie in one region of an anonymous object only this
    /// space maps: with `take` the pages move to it and the range is
    /// unmapped here (this space loses them); otherwise it shares them
    /// copy-on-write and this space keeps them, write-protected until it
    /// writes (zero-copy transfer, DESIGN.md §4).
    pub fn split_off(
        &mut self,
        va: usize,
        pages: usize,
        take: bool,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<MemObject<M>>, Error> {
        let end = check_range(va, pages)?;
        let r = self.region(va)?;
        ensure(end <= r.end, Error::BadAddress)?;
        // Only this mapping may reach the pages: another (here or in
        // another space) would keep the moved frames, or write under the
        // copy-on-write snapshot.
        let views = self
            .regions
            .iter()
            .filter(|x| KArc::ptr_eq(&x.object, &r.object))
            .count();
        let only = r.object.backing() == Backing::Anonymous && r.object.spaces() == 1;
        ensure(only && views == 1, Error::InvalidState)?;
        let (offset, attr, object) = (r.object_page(va), r.attr, r.object.clone());
        // Unmapping the middle of a region splits it twice: room first, so
        // that nothing can fail once the frames have moved.
        self.regions.try_reserve(2).map_err(oom)?;
        let new = object.split_off(offset, pages, take, pool)?;
        if take {
            // Cannot fail for lack of memory: unmapping only frees tables.
            self.unmap(va, pages)?;
        } else if attr.contains(Attr::WRITE) {
            self.write_protect(va, end, attr);
        }
        Ok(new)
    }

    /// Write-protects the mapped pages of `[start, end)` (mapped with
    /// `attr`), whose frames became shared copy-on-write.
    fn write_protect(&mut self, start: usize, end: usize, attr: Attr) {
        let (mut t, attr) = (M::tables(), (attr - Attr::WRITE) | Attr::USER);
        for page in (start..end).step_by(PAGE) {
            // Unmapped pages are left alone (`protect` refuses them).
            if self.table.protect(&mut t, page, attr).is_ok() {
                Self::flush(&mut self.tag, &mut self.cpus, self.table.root(), Some(page));
            }
        }
    }

    /// A copy of this space for fork, its tables and private memory
    /// charged to `pool`: private anonymous memory becomes copy-on-write
    /// in both (this space's writable pages are write-protected), shared
    /// memory stays shared.
    pub fn clone_cow(
        &mut self,
        asid: u16,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<AddressSpace<M>, Error> {
        let mut child = AddressSpace::new(asid, pool.clone())?;
        child.regions.try_reserve(self.regions.len()).map_err(oom)?;
        // Objects already cloned: (original, copy).
        let mut cloned: Vec<[KArc<MemObject<M>>; 2]> = Vec::new();
        for i in 0..self.regions.len() {
            let Some(r) = self.regions.get(i) else { break };
            let private = r.object.backing() == Backing::Anonymous && r.object.spaces() == 1;
            let object = if !private {
                r.object.clone()
            } else if let Some([_, copy]) = cloned.iter().find(|[o, _]| KArc::ptr_eq(o, &r.object))
            {
                copy.clone()
            } else {
                let copy = r.object.cow_clone(pool.clone())?;
                cloned.try_reserve(1).map_err(oom)?;
                cloned.push([r.object.clone(), copy.clone()]);
                copy
            };
            if !child.maps_object(&object) {
                object.add_space()?;
            }
            let (start, end, attr) = (r.start, r.end, r.attr);
            child.regions.push(r.from(start, object));
            if private && attr.contains(Attr::WRITE) {
                self.write_protect(start, end, attr);
            }
        }
        Ok(child)
    }
}

impl<M: Machine> Drop for AddressSpace<M> {
    fn drop(&mut self) {
        while let Some(r) = self.regions.pop() {
            if !self.maps_object(&r.object) {
                r.object.remove_space();
            }
        }
        let owned = if M::KERNEL_ENTRIES.is_empty() {
            0..ENTRIES
        } else {
            0..M::KERNEL_ENTRIES.start
        };
        M::release_root(self.table.root());
        // SAFETY: `self.table` is being dropped; the copy is its last user.
        let table = unsafe { PageTable::<M::Format>::from_root(self.table.root()) };
        table.destroy(&mut charged::<M>(&self.pool), owned);
    }
}

#[cfg(test)]
mod tests;
