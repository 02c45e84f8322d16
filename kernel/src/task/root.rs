//! Building the root task: the first user process, from the boot module.
//!
//! The kernel validates the ELF file (the `keel-elf` crate), loads each segment
//! into its own eagerly allocated memory object (W^X as the file says),
//! gives the task a demand-zero stack and a read-only information page
//! (`keel_abi::boot::RootInfo`), and a capability space holding: a memory
//! pool with all memory the kernel does not keep, the boot image (read
//! only), and its own address space, capability space and thread.

use super::Kernel;
use crate::arch;
use crate::bootinfo::{BootInfo, RegionKind};
use crate::cap::Dest;
use crate::mm::kref::KArc;
use crate::mm::object::PAGE;
use crate::mm::paging::Attr;
use crate::mm::pool::MemoryPool;
use crate::mm::user::{MemoryObject, boot_module_bytes, write_object};
use crate::object::{AddressSpaceObject, CSpaceRef, DeviceControl, KObject, ThreadRef};
use keel_abi::Error;
use keel_abi::boot::{
    NO_LINE, ROOT_FLAG_TEST, ROOT_INFO_ADDR, ROOT_INFO_MAGIC, ROOT_INFO_VERSION, ROOT_STACK_PAGES,
    ROOT_STACK_TOP, RootInfo,
};
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_elf as elf;

/// Frames the kernel keeps for itself (page tables, thread control blocks,
/// capability tables) out of the root task's pool.
const KERNEL_RESERVE_FRAMES: u64 = 1024;
/// Capability slots of the root task (its process server keeps 8 per process).
const ROOT_SLOTS: u32 = 1 << 17;

/// Why the root task could not be made.
#[derive(Debug)]
pub enum RootError {
    /// The boot loader passed no boot module (or its memory is unreadable),
    /// so there is no root-task executable; boot treats this as "nothing to
    /// run", not as a failure.
    NoModule,
    /// The first boot module is not a valid executable for this machine.
    Elf(elf::ElfError),
    /// Creating a kernel object for the task failed (usually out of memory).
    Kernel(Error),
}

impl From<Error> for RootError {
    fn from(e: Error) -> Self {
        RootError::Kernel(e)
    }
}

/// Loads the root task into `k` and makes its thread runnable.
pub fn load(k: &mut Kernel, info: &BootInfo<'_>, flags: u64) -> Result<(), RootError> {
    let module = info
        .memory
        .regions()
        .iter()
        .find(|r| r.kind == RegionKind::BootModule)
        .ok_or(RootError::NoModule)?;
    let file = boot_module_bytes(module).ok_or(RootError::NoModule)?;
    // Drivers may map device registers, never RAM or the interrupt
    // controller the kernel drives.
    let mut forbidden = alloc::vec::Vec::new();
    forbidden
        .try_reserve(info.memory.regions().len() + 8)
        .map_err(|_| Error::OutOfMemory)?;
    forbidden.extend(info.memory.regions().iter().map(|r| (r.start, r.end)));
    forbidden.extend(
        info.irq
            .windows()
            .iter()
            .map(|&(s, l)| (s, s.saturating_add(l))),
    );
    k.set_forbidden(forbidden);
    let image = elf::parse(file, arch::ELF_MACHINE).map_err(RootError::Elf)?;

    let free = crate::mm::frame_stats().map_or(0, |s| s.1);
    let pool = KArc::try_new(MemoryPool::new(free.saturating_sub(KERNEL_RESERVE_FRAMES)))?;
    let cell = AddressSpaceObject::new(0, Some(pool.clone()))?;
    {
        let mut space = cell.lock();
        for seg in &image.segments {
            let (first, pages) = seg.pages();
            let obj = MemoryObject::anonymous_charged(pages, true, Some(pool.clone()))?;
            let bytes = file
                .get(seg.offset..seg.offset + seg.file_size)
                .ok_or(RootError::Elf(elf::ElfError::Truncated))?;
            write_object(&obj, seg.vaddr - first, bytes)?;
            let mut attr = Attr::empty();
            attr.set(Attr::WRITE, seg.write);
            attr.set(Attr::EXEC, seg.exec);
            space.map(first, obj, 0, pages, attr)?;
        }
        let stack = MemoryObject::anonymous_charged(ROOT_STACK_PAGES, false, Some(pool.clone()))?;
        space.map(
            ROOT_STACK_TOP - ROOT_STACK_PAGES * PAGE,
            stack,
            0,
            ROOT_STACK_PAGES,
            Attr::WRITE,
        )?;
    }

    let cspace = k.caps.create_space(ROOT_SLOTS)?;
    k.set_root(cspace);
    // The root task's capability space and threads are charged to its pool
    // like everyone else's.
    let cspace_pages = crate::cap::CapSpace::<KObject>::charge_pages(ROOT_SLOTS);
    pool.charge(cspace_pages)?;
    let cspace_ref = CSpaceRef::new(k.orphans(), cspace, 0, Some((pool.clone(), cspace_pages)))?;
    // Whole pages from the one holding the module's first byte.
    let boot_pages = ((module.start % PAGE as u64) as usize + module.len() as usize).div_ceil(PAGE);
    let boot_image = MemoryObject::physical(module.start & !0xfff, boot_pages, false)?;
    let insert = |k: &mut Kernel, obj: KObject, ty: ObjectType, rights: Rights| {
        k.caps
            .insert(cspace, Dest::Any, obj, ty, rights, NO_BADGE)
            .map(CapToken::raw)
    };
    let pool_pages = pool.limit();
    let t_pool = insert(
        k,
        KObject::Pool(pool.clone()),
        ObjectType::MemoryPool,
        Rights::ALL,
    )?;
    let read_only = Rights::READ | Rights::EXECUTE | Rights::GRANT;
    let t_image = insert(
        k,
        KObject::Memory(boot_image),
        ObjectType::MemoryObject,
        read_only,
    )?;
    let t_space = insert(
        k,
        KObject::AddressSpace(cell.clone()),
        ObjectType::AddressSpace,
        Rights::ALL,
    )?;
    let t_cspace = insert(
        k,
        KObject::CSpace(cspace_ref.clone()),
        ObjectType::CapSpace,
        Rights::ALL,
    )?;
    let thread = k.create_thread(
        cell.clone(),
        cspace_ref.home(),
        image.entry,
        ROOT_STACK_TOP,
        ROOT_INFO_ADDR,
    )?;
    let thread_ref = ThreadRef::new(k.orphans(), thread)?;
    let t_thread = insert(
        k,
        KObject::Thread(thread_ref),
        ObjectType::Thread,
        Rights::ALL,
    )?;

    let t_devices = insert(
        k,
        KObject::DeviceControl(KArc::try_new(DeviceControl)?),
        ObjectType::DeviceControl,
        Rights::ALL,
    )?;
    let (console_kind, console_base) = crate::arch::console_uart();
    let root_info = RootInfo {
        magic: ROOT_INFO_MAGIC,
        version: ROOT_INFO_VERSION,
        pool: t_pool,
        boot_image: t_image,
        aspace: t_space,
        cspace: t_cspace,
        thread: t_thread,
        boot_image_bytes: module.len(),
        pool_pages,
        cpu_count: k.cpu_count() as u64,
        flags,
        device_control: t_devices,
        console_kind: console_kind as u64,
        console_base,
        console_irq: info.irq.uart.map_or(NO_LINE, |l| u64::from(l.number)),
    };
    let page = MemoryObject::anonymous_charged(1, true, Some(pool.clone()))?;
    let fields = [
        root_info.magic,
        root_info.version,
        root_info.pool,
        root_info.boot_image,
        root_info.aspace,
        root_info.cspace,
        root_info.thread,
        root_info.boot_image_bytes,
        root_info.pool_pages,
        root_info.cpu_count,
        root_info.flags,
        root_info.device_control,
        root_info.console_kind,
        root_info.console_base,
        root_info.console_irq,
    ];
    const _: () = assert!(core::mem::size_of::<RootInfo>() == 15 * 8);
    for (i, f) in fields.iter().enumerate() {
        write_object(&page, i * 8, &f.to_le_bytes())?;
    }
    cell.lock().map(ROOT_INFO_ADDR, page, 0, 1, Attr::empty())?;
    k.resume(thread)?;
    log::info!(
        "root task: entry {:#x}, {} segments, pool {} pages{}",
        image.entry,
        image.segments.len(),
        pool_pages,
        if flags & ROOT_FLAG_TEST != 0 {
            ", test mode"
        } else {
            ""
        }
    );
    Ok(())
}
