//! Starting the other CPUs: the real-mode start-up code, the mailbox it
//! reads, and each new CPU's first Rust code.
//!
//! The start-up page: the lowest usable page from 4 KiB up to 1 MiB in
//! the firmware's memory map, which [`reserve_start_page`] marks as the
//! kernel's before the frame allocator is built, so nothing else ever
//! uses it. For each CPU, [`cpu_start`] (on the boot CPU, one CPU at a
//! time) maps the CPU's stacks (`boot::cpu_stacks`, without the guards),
//! copies the code `keel_ap_start`..`keel_ap_end` there with its data
//! ([`StartData`]) filled in, writes [`MAILBOX`] and sends INIT-SIPI-SIPI
//! naming the page. The CPU starts in real mode at the page's first byte
//! and:
//! 1. loads the page's GDT (flat 64-bit code at 0x08, data at 0x10), the
//!    boot CPU's CR4 less PCIDE (PAE, PGE, OSFXSR, OSXMMEXCPT, SMEP,
//!    SMAP: whatever it has), CR3 = the transit tables, the boot CPU's
//!    EFER (LME, NXE, SCE) and CR0 (PG, PE, WP, NE, MP; caches on), which
//!    enters long mode directly, and far-jumps to 64-bit code in the page;
//! 2. jumps to `keel_ap_entry64` in the kernel image, which loads the
//!    kernel root into CR3, the boot CPU's full CR4 (PCIDE needs long
//!    mode), the CPU's kernel stack and its GS base (its per-CPU block)
//!    from the mailbox and calls `keel_ap_main(index)`: GDT, TSS, IDT,
//!    system-call MSRs and FP state (`cpu::init`, as on the boot CPU),
//!    the local APIC (`apic::init_local`), then `smp::cpu_main`.
//!
//! The transit tables ([`TRANSIT`], in `.bss`, so below 4 GiB as a
//! 32-bit CR3 needs) map the kernel half as the kernel root does and the
//! first 2 MiB (the start-up page) identically. Until `cpu::init` has
//! loaded its GDT and IDT, a fault on the new CPU resets the machine.
//! The mailbox is shared: a CPU that starts later than the portable
//! caller waits for may find it rewritten for the next.

use super::apic;
use super::mm::kernel_root;
use super::phys_to_virt;
use crate::bootinfo::{BootInfo, BootInfoError, MAX_CPUS, MemoryMap, MemoryRegion, RegionKind};
use crate::mm::KernelTables;
use crate::mm::kref::ensure;
use crate::mm::paging::{Attr, MapError, PageSize, PageTable};
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::control::{Cr0, Cr4};

const PAGE: u64 = 4096;
const CR4_PCIDE: u64 = 1 << 17;
const EFER_LMA: u64 = 1 << 10;

/// The start-up page's physical address (0: none found).
static START_PAGE: AtomicU64 = AtomicU64::new(0);

/// The values the start-up code loads, at [`DATA_AT`] in the page.
#[repr(C)]
struct StartData {
    /// GDTR: limit, then the 32-bit linear base of the page's GDT.
    gdtr: [u16; 3],
    /// The far jump into 64-bit code: 32-bit offset, then selector.
    far_jump: [u16; 3],
    cr0: u32,
    cr4: u32,
    efer: u32,
    cr3: u32,
}

/// What `keel_ap_entry64` loads: CR3, CR4, RSP, GS base, CPU index.
static MAILBOX: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The transit page tables: PML4, PDPT and PD.
#[repr(C, align(4096))]
struct Transit([[AtomicU64; 512]; 3]);

static TRANSIT: Transit = Transit([const { [const { AtomicU64::new(0) }; 512] }; 3]);

core::arch::global_asm!(
    // Copied to the start-up page; runs at CS = page >> 4, IP = 0, DS =
    // CS: the GDT and the data are at fixed offsets (GDT_AT, DATA_AT).
    ".section .rodata.keel_ap_start, \"a\"",
    ".code16",
    ".global keel_ap_start, keel_ap_long, keel_ap_end",
    "keel_ap_start:",
    "jmp 2f",
    ".org {gdt_at}",
    trampoline_gdt!(),
    ".org {data_at}",
    ".skip {data_size}",
    "2:",
    "cli",
    "mov ax, cs",
    "mov ds, ax",
    "lgdt [{data_at} + {gdtr}]",
    "mov eax, dword ptr [{data_at} + {cr4}]",
    "mov cr4, eax",
    "mov eax, dword ptr [{data_at} + {cr3}]",
    "mov cr3, eax",
    "mov eax, dword ptr [{data_at} + {efer}]",
    "xor edx, edx",
    "mov ecx, 0xC0000080",
    "wrmsr",
    "mov eax, dword ptr [{data_at} + {cr0}]",
    "mov cr0, eax",
    // Long mode (compatibility, 16-bit CS until the jump): o32 jmp far
    // m16:32 to 64-bit code.
    ".byte 0x66, 0xff, 0x2e",
    ".short {data_at} + {far_jump}",
    ".code64",
    "keel_ap_long:",
    "movabs rax, offset keel_ap_entry64",
    "jmp rax",
    "keel_ap_end:",
    //
    // In the kernel image, on the transit tables, interrupts off.
    ".section .text.keel_ap, \"ax\"",
    "keel_ap_entry64:",
    "mov rax, qword ptr [rip + {mailbox}]",
    "mov cr3, rax",
    "mov rax, qword ptr [rip + {mailbox} + 8]",
    "mov cr4, rax",
    "mov rsp, qword ptr [rip + {mailbox} + 16]",
    "mov eax, dword ptr [rip + {mailbox} + 24]",
    "mov edx, dword ptr [rip + {mailbox} + 28]",
    "mov ecx, 0xC0000101",                      // IA32_GS_BASE
    "wrmsr",
    "mov rdi, qword ptr [rip + {mailbox} + 32]",
    "xor ebp, ebp",                             // ends the frame-pointer chain
    "call {main}",
    "ud2",
    gdtr = const offset_of!(StartData, gdtr),
    far_jump = const offset_of!(StartData, far_jump),
    cr0 = const offset_of!(StartData, cr0),
    cr4 = const offset_of!(StartData, cr4),
    efer = const offset_of!(StartData, efer),
    cr3 = const offset_of!(StartData, cr3),
    data_size = const size_of::<StartData>(),
    gdt_at = const GDT_AT,
    data_at = const DATA_AT,
    mailbox = sym MAILBOX,
    main = sym keel_ap_main,
);

/// Offsets in the start-up page of the GDT and of the [`StartData`].
const GDT_AT: usize = 8;
const DATA_AT: usize = 32;

unsafe extern "C" {
    static keel_ap_start: u8;
    static keel_ap_long: u8;
    static keel_ap_end: u8;
}

/// Marks the start-up page as the kernel's in `info`'s memory map (none
/// found: CPUs are not started).
pub fn reserve_start_page(mut info: BootInfo<'static>) -> Result<BootInfo<'static>, BootInfoError> {
    let page = info.memory.usable().find_map(|r| {
        let page = r.start.max(PAGE);
        (page + PAGE <= r.end.min(0x10_0000)).then_some(page)
    });
    if let Some(page) = page {
        let reserved = MemoryRegion {
            start: page,
            end: page + PAGE,
            kind: RegionKind::Kernel,
        };
        info.memory = MemoryMap::build(info.memory.regions().iter().copied().chain([reserved]))?;
        START_PAGE.store(page, Ordering::Relaxed);
    }
    Ok(info)
}

/// Starts the CPU whose local APIC id is `hw_id` as CPU `index` (see the
/// module documentation); does not wait for it.
pub fn cpu_start(_info: &BootInfo<'_>, index: usize, hw_id: u64) -> Result<(), &'static str> {
    let page = START_PAGE.load(Ordering::Relaxed);
    ensure(page != 0, "no free page below 1 MiB for the start-up code")?;
    let apic_id = u32::try_from(hw_id)
        .ok()
        .filter(|&id| id < 0xff && (1..MAX_CPUS).contains(&index))
        .ok_or("no such CPU index or xAPIC id")?;
    map_stacks(index).map_err(|_| "no memory to map the CPU's stacks")?;
    let [pml4, pdpt, pd] = &TRANSIT.0;
    let phys = |table: &[AtomicU64; 512]| super::kernel_virt_to_phys(table.as_ptr() as usize);
    let root = phys_to_virt(kernel_root()) as *const u64;
    for (i, entry) in pml4.iter().enumerate().skip(256) {
        // SAFETY: the kernel root is a page-table page (512 entries) in
        // RAM, which the direct map covers; only the boot CPU changes it
        // and it is doing this.
        entry.store(unsafe { root.add(i).read() }, Ordering::Relaxed);
    }
    pml4[0].store(phys(pdpt) | 3, Ordering::Relaxed); // present, writable
    pdpt[0].store(phys(pd) | 3, Ordering::Relaxed);
    pd[0].store(0x83, Ordering::Relaxed); // 2 MiB at 0, present, writable
    let (start, cr4) = (&raw const keel_ap_start as usize, Cr4::read_raw());
    let split = |v: usize| [v as u16, (v >> 16) as u16];
    let [gdt_lo, gdt_hi] = split(page as usize + GDT_AT);
    let [far_lo, far_hi] = split(page as usize + (&raw const keel_ap_long as usize - start));
    let data = StartData {
        gdtr: [23, gdt_lo, gdt_hi],
        far_jump: [far_lo, far_hi, super::cpu::KERNEL_CS],
        cr0: Cr0::read_raw() as u32,
        cr4: (cr4 & !CR4_PCIDE) as u32,
        efer: (x86_64::registers::model_specific::Efer::read_raw() & !EFER_LMA) as u32,
        cr3: phys(pml4) as u32,
    };
    let dst = phys_to_virt(page) as *mut u8;
    let len = &raw const keel_ap_end as usize - start;
    // SAFETY: the start-up page is RAM reserved for this (so direct-mapped
    // and used by nothing else) and no started CPU runs from it any more;
    // the code and its data take a few hundred bytes of it.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, dst, len);
        dst.add(DATA_AT).cast::<StartData>().write_unaligned(data);
    }
    let stack = super::boot::cpu_stacks(index)[0].top;
    let gs = &raw const super::user::PER_CPU[index] as u64;
    let mailbox = [kernel_root(), cr4, stack as u64, gs, index as u64];
    for (slot, v) in MAILBOX.iter().zip(mailbox) {
        slot.store(v, Ordering::Relaxed);
    }
    apic::start_cpu(index, apic_id, page)
}

/// Maps CPU `index`'s stacks, but not their guards, in the kernel root
/// (again after a failed start: already mapped is fine).
fn map_stacks(index: usize) -> Result<(), MapError> {
    // SAFETY: the kernel root is a valid tree in frames reached through
    // the direct map; the boot CPU alone changes it, and it is here.
    let mut root = unsafe { PageTable::<super::PageFormat>::from_root(kernel_root()) };
    let rw = Attr::WRITE | Attr::GLOBAL;
    for s in super::boot::cpu_stacks(index) {
        for va in (s.bottom..s.top).step_by(PAGE as usize) {
            let pa = super::kernel_virt_to_phys(va);
            match root.map(&mut KernelTables, va, pa, PageSize::Size4K, rw) {
                Ok(()) | Err(MapError::AlreadyMapped) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// A started CPU's first Rust code, on its kernel stack with its GS base
/// set and interrupts masked.
extern "C" fn keel_ap_main(index: usize) -> ! {
    super::cpu::init(index);
    apic::init_local();
    crate::smp::cpu_main(index)
}
