//! The smallest executable a process can run: an ELF file of one
//! read-and-execute segment at [`USER_IMAGE_MIN`] holding the file
//! header, one program header and position-independent code (the
//! runtime's `minimal_program`, whose assembly is in `arch/`). The process
//! tests and benchmarks spawn it to measure what a process itself costs.

use keel_abi::boot::USER_IMAGE_MIN;

/// Where the code starts in the file (and past [`USER_IMAGE_MIN`]).
pub const CODE_OFFSET: usize = 128;

/// Writes the executable running `code` on machine `machine` (`e_machine`)
/// into `out`; its length, or `None` if `out` is too small.
pub fn minimal_elf(code: &[u8], machine: u16, out: &mut [u8]) -> Option<usize> {
    let len = CODE_OFFSET.checked_add(code.len())?;
    let file = out.get_mut(..len)?;
    file.fill(0);
    let vaddr = USER_IMAGE_MIN as u64;
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(d) = file.get_mut(at..at + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    };
    // File header: ELFCLASS64, little-endian, EV_CURRENT; ET_EXEC.
    put(0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(16, &2u16.to_le_bytes());
    put(18, &machine.to_le_bytes());
    put(20, &1u32.to_le_bytes());
    put(24, &(vaddr + CODE_OFFSET as u64).to_le_bytes());
    put(32, &64u64.to_le_bytes()); // e_phoff
    put(52, &64u16.to_le_bytes()); // e_ehsize
    put(54, &56u16.to_le_bytes()); // e_phentsize
    put(56, &1u16.to_le_bytes()); // e_phnum
    // Program header: PT_LOAD, PF_R | PF_X, the whole file.
    put(64, &1u32.to_le_bytes());
    put(68, &5u32.to_le_bytes());
    put(72, &0u64.to_le_bytes());
    put(80, &vaddr.to_le_bytes());
    put(88, &vaddr.to_le_bytes());
    put(96, &(len as u64).to_le_bytes());
    put(104, &(len as u64).to_le_bytes());
    put(112, &4096u64.to_le_bytes());
    put(CODE_OFFSET, code);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_a_valid_executable_of_one_segment() {
        let code = [0x90u8; 40];
        let mut out = [0xffu8; 512];
        let len = minimal_elf(&code, 62, &mut out).unwrap();
        assert_eq!(len, CODE_OFFSET + 40);
        let img = keel_elf::parse(&out[..len], 62).unwrap();
        assert_eq!(img.entry, USER_IMAGE_MIN + CODE_OFFSET);
        assert_eq!(img.segments.len(), 1);
        let s = &img.segments[0];
        assert!(s.exec && !s.write && s.file_size == s.mem_size);
        assert_eq!((s.vaddr, s.offset, s.file_size), (USER_IMAGE_MIN, 0, len));
        assert_eq!(&out[CODE_OFFSET..len], &code);
        // Another machine's loader refuses it; a short buffer is refused.
        assert!(keel_elf::parse(&out[..len], 183).is_err());
        assert_eq!(minimal_elf(&code, 62, &mut out[..100]), None);
    }
}
