//! Per-CPU descriptor tables: each CPU's GDT with its TSS, and the stacks
//! the TSS names.
//!
//! GDT layout (fixed; the `syscall`/`sysret` MSRs in `user.rs` rely on
//! it): 0x08 kernel code, 0x10 kernel data (the pair `syscall` loads from
//! STAR[47:32]), 0x18 empty (the slot of a user 32-bit code segment, left
//! out so that user code cannot switch to compatibility mode), 0x20 user
//! data, 0x28 user 64-bit code (`sysretq` loads base + 16 and base + 8
//! with RPL 3 from STAR[63:48] = 0x18), 0x30 the TSS. There is no LDT.
//! The TSS gives entries from ring 3 this CPU's kernel stack (RSP0: the top
//! of the boot stack on the boot CPU), and double faults (IST1) and NMIs
//! (IST2) stacks of their own (`boot::cpu_stacks`, each over an unmapped
//! guard page), so they are reported even when the kernel stack is
//! exhausted. Each CPU has its own TSS (the CPU marks a loaded TSS busy),
//! hence its own GDT; all share the IDT.

use crate::bootinfo::MAX_CPUS;
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, FS, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// Interrupt stack table slot (1-based, as in the IDT) for double faults.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// Interrupt stack table slot for NMIs.
pub const IST_NMI: u8 = 2;
/// Kernel code segment selector.
pub const KERNEL_CS: u16 = 0x08;
/// The `sysret` selector base (STAR[63:48]): the empty slot before user
/// data (`sysretq` uses base + 8 and base + 16).
pub const USER_BASE_SELECTOR: u16 = 0x18;
/// User data (stack) selector with RPL 3.
pub const USER_SS: u16 = 0x20 | 3;
/// User 64-bit code selector with RPL 3.
pub const USER_CS: u16 = 0x28 | 3;

static TSS: [Once<TaskStateSegment>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static GDT: [Once<(GlobalDescriptorTable, SegmentSelector)>; MAX_CPUS] =
    [const { Once::new() }; MAX_CPUS];

/// Loads CPU `index`'s GDT, segment registers and TSS, the IDT, and its
/// per-CPU block and system-call MSRs (`user::init`). Called once per
/// CPU, first thing in its Rust entry.
pub fn init(index: usize) {
    let [kernel, double_fault, nmi] = super::boot::cpu_stacks(index);
    let tss = TSS[index].call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = |s: super::boot::KernelStack| VirtAddr::new(s.top as u64);
        tss.interrupt_stack_table[usize::from(IST_DOUBLE_FAULT - 1)] = top(double_fault);
        tss.interrupt_stack_table[usize::from(IST_NMI - 1)] = top(nmi);
        tss.privilege_stack_table[0] = top(kernel);
        tss
    });
    let (gdt, tss_sel) = GDT[index].call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        gdt.append(Descriptor::kernel_code_segment());
        gdt.append(Descriptor::kernel_data_segment());
        // Empty where `sysret` to 32-bit code would look: user code
        // cannot enter compatibility mode (whose `syscall` would go to
        // CSTAR) with a far jump or return.
        gdt.append(Descriptor::UserSegment(0));
        gdt.append(Descriptor::user_data_segment());
        gdt.append(Descriptor::user_code_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, tss_sel)
    });
    gdt.load();
    let code = SegmentSelector(KERNEL_CS);
    let data = SegmentSelector(0x10);
    // SAFETY: the GDT just loaded has a 64-bit ring-0 code segment at
    // KERNEL_CS, a ring-0 data segment at 0x10 and a valid, not yet busy
    // TSS descriptor at `tss_sel` whose TSS lives for the rest of the run.
    // GS keeps the null selector and the base (this CPU's block) the entry
    // code set: loading a selector would clear the base.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        FS::set_reg(SegmentSelector(0));
        load_tss(*tss_sel);
    }
    super::trap::init();
    super::user::init(index, kernel.top);
}

/// This CPU's TSS.RSP0: the stack entries from ring 3 start on.
#[cfg(feature = "ktest")]
pub fn rsp0() -> usize {
    TSS[super::user::cpu_index()]
        .get()
        .map_or(0, |tss| tss.privilege_stack_table[0].as_u64() as usize)
}

crate::ktest!(
    fn gdt_has_no_user_32_bit_code_segment() {
        let gdtr = x86_64::instructions::tables::sgdt();
        let entries = (usize::from(gdtr.limit) + 1) / 8;
        kassert!(entries >= 8); // null, 5 segments, the 16-byte TSS
        let base = gdtr.base.as_u64() as *const u64;
        // SAFETY: the GDTR names the loaded GDT (a static), `entries`
        // descriptors long.
        let gdt = unsafe { core::slice::from_raw_parts(base, entries) };
        let dpl = |d: u64| (d >> 45) & 3;
        let long = |d: u64| d & (1 << 53) != 0;
        kassert_eq!(gdt[usize::from(USER_BASE_SELECTOR / 8)], 0);
        let code = gdt[usize::from(USER_CS / 8)];
        kassert!(long(code) && dpl(code) == 3);
        kassert_eq!(dpl(gdt[usize::from(USER_SS / 8)]), 3);
        kassert!(long(gdt[usize::from(KERNEL_CS / 8)]));
        kassert_eq!(dpl(gdt[usize::from(KERNEL_CS / 8)]), 0);
        Ok(())
    }
);
