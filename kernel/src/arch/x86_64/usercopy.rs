//! Copying to and from user memory: `keel_user_copy`, an assembly routine
//! whose every load and store is listed in the exception-fixup table, so a
//! fault on either side ends the copy with the exact faulting address.
//!
//! Invariants:
//! - User memory is open (RFLAGS.AC set with `stac`, when SMAP is on) only
//!   between the routine's entry and its return, on every path; the trap
//!   entry closes it (`clac`) for the handlers and `iretq` reopens it.
//! - The copy runs forwards in 8-byte words, then bytes. A faulting word
//!   access resumes in the byte loop at the same position, so the byte
//!   loop finds the first byte that faults: the returned address is that
//!   byte's, for a page fault and for a non-canonical address (#GP) alike.

core::arch::global_asm!(
    ".section .text.keel_user_copy, \"ax\"",
    ".balign 16",
    // CopyResult keel_user_copy(dst: rdi, src: rsi, len: rdx)
    // -> rax = 0 on success, 1 on a fault with rdx = the faulting address.
    ".global keel_user_copy",
    "keel_user_copy:",
    "cmpb $0, {smap}(%rip)",
    "je 1f",
    "stac",
    "1:",
    "movq %rdx, %rcx",
    "cmpq $8, %rcx",
    "jb .Lkeel_uc_bytes",
    ".Lkeel_uc_words:",
    ".Lkeel_uc_word_load:",
    "movq (%rsi), %rax",
    ".Lkeel_uc_word_store:",
    "movq %rax, (%rdi)",
    "addq $8, %rsi",
    "addq $8, %rdi",
    "subq $8, %rcx",
    "cmpq $8, %rcx",
    "jae .Lkeel_uc_words",
    ".Lkeel_uc_bytes:",
    "testq %rcx, %rcx",
    "jz .Lkeel_uc_done",
    ".Lkeel_uc_byte_loop:",
    ".Lkeel_uc_byte_load:",
    "movb (%rsi), %al",
    ".Lkeel_uc_byte_store:",
    "movb %al, (%rdi)",
    "incq %rsi",
    "incq %rdi",
    "decq %rcx",
    "jnz .Lkeel_uc_byte_loop",
    ".Lkeel_uc_done:",
    "xorl %eax, %eax",
    "xorl %edx, %edx",
    "jmp .Lkeel_uc_close",
    ".Lkeel_uc_load_fault:",
    "movl $1, %eax",
    "movq %rsi, %rdx",
    "jmp .Lkeel_uc_close",
    ".Lkeel_uc_store_fault:",
    "movl $1, %eax",
    "movq %rdi, %rdx",
    ".Lkeel_uc_close:",
    "cmpb $0, {smap}(%rip)",
    "je 1f",
    "clac",
    "1:",
    "ret",
    ".pushsection __ex_table, \"a\"",
    ".balign 8",
    ".quad .Lkeel_uc_word_load, .Lkeel_uc_bytes",
    ".quad .Lkeel_uc_word_store, .Lkeel_uc_bytes",
    ".quad .Lkeel_uc_byte_load, .Lkeel_uc_load_fault",
    ".quad .Lkeel_uc_byte_store, .Lkeel_uc_store_fault",
    ".popsection",
    smap = sym super::mm::SMAP_ENABLED,
    options(att_syntax),
);
