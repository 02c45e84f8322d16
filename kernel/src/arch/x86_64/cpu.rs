//! Per-CPU descriptor tables: the GDT with its TSS, and the interrupt stacks
//! the TSS names. Currently for the boot CPU only.
//!
//! GDT layout (fixed; the `syscall`/`sysret` MSR setup will rely on it):
//! 0x08 kernel code, 0x10 kernel data, 0x18 user 32-bit code (unused, placed
//! for `sysret`), 0x20 user data, 0x28 user 64-bit code, 0x30 the TSS.
//! The TSS gives double faults (IST1) and NMIs (IST2) stacks of their own
//! (defined in `boot.rs`, each over an unmapped guard page), so they are
//! reported even when the kernel stack is exhausted.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, FS, GS, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, DescriptorFlags, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// Interrupt stack table slot (1-based, as in the IDT) for double faults.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// Interrupt stack table slot for NMIs.
pub const IST_NMI: u8 = 2;
/// Kernel code segment selector.
pub const KERNEL_CS: u16 = 0x08;

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, SegmentSelector)> = Once::new();

/// Loads the GDT, the segment registers, the TSS and the IDT on the boot
/// CPU. Called once, first thing in the Rust entry.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = |s: super::boot::KernelStack| VirtAddr::new(s.top as u64);
        tss.interrupt_stack_table[usize::from(IST_DOUBLE_FAULT - 1)] =
            top(super::boot::double_fault_stack());
        tss.interrupt_stack_table[usize::from(IST_NMI - 1)] = top(super::boot::nmi_stack());
        tss
    });
    let (gdt, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        gdt.append(Descriptor::kernel_code_segment());
        gdt.append(Descriptor::kernel_data_segment());
        gdt.append(Descriptor::UserSegment(DescriptorFlags::USER_CODE32.bits()));
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
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        load_tss(*tss_sel);
    }
    super::trap::init();
}
