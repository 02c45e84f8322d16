//! The smallest executable a process can run: an ELF file of one
//! read-and-execute segment at [`USER_IMAGE_MIN`] holding the file
//! header, one program header and position-independent code (the
//! runtime's `minimal_program`, whose assembly is in `arch/`). The process
//! tests and benchmarks spawn it to measure what a process itself costs.
//!
//! And the smallest position-independent executable ([`minimal_pie_elf`],
//! around `minimal_pie_program`): text at 0, a writable word at
//! [`PIE_DATA`] with one relative relocation that makes it point at
//! itself, which the code checks.

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

/// Where the position-independent file has its code and its data word
/// (file offsets and unbiased addresses alike).
pub const PIE_CODE: usize = 0x100;
pub const PIE_DATA: usize = 0x1000;
/// Its dynamic section and relocation table, after the word.
const PIE_DYNAMIC: usize = PIE_DATA + 0x10;
const PIE_RELA: usize = PIE_DYNAMIC + 0x40;
/// Its length.
pub const PIE_LEN: usize = PIE_RELA + 24;

/// Writes the position-independent executable running `code` (at most
/// `PIE_DATA - PIE_CODE` bytes) on `machine` into `out`; its length, or
/// `None` if `out` is too small, the code too long or the machine unknown.
pub fn minimal_pie_elf(code: &[u8], machine: u16, out: &mut [u8]) -> Option<usize> {
    let relative = keel_elf::relative_type(machine)? as u64;
    let file = out.get_mut(..PIE_LEN)?;
    if code.len() > PIE_DATA - PIE_CODE {
        return None;
    }
    file.fill(0);
    let mut put = |at: usize, words: &[u64]| {
        for (i, w) in words.iter().enumerate() {
            if let Some(d) = file.get_mut(at + 8 * i..at + 8 * i + 8) {
                d.copy_from_slice(&w.to_le_bytes());
            }
        }
    };
    // File header: as `minimal_elf`'s, but ET_DYN (3) with three program
    // headers (the little-endian fields packed into words).
    put(0, &[0x0001_0102_464c_457f, 0]);
    put(
        16,
        &[
            (1 << 32) | u64::from(machine) << 16 | 3,
            PIE_CODE as u64,
            64,
            0,
        ],
    );
    put(48, &[(56 << 48) | (64 << 32), 3]);
    let (data_len, code_end) = ((PIE_LEN - PIE_DATA) as u64, (PIE_CODE + code.len()) as u64);
    // PT_LOAD R+X: headers and code; PT_LOAD R+W: the word, the dynamic
    // section and the table; PT_DYNAMIC.
    put(64, &[(5 << 32) | 1, 0, 0, 0, code_end, code_end, 4096]);
    let data = PIE_DATA as u64;
    put(
        120,
        &[(6 << 32) | 1, data, data, data, data_len, data_len, 4096],
    );
    let dynamic = PIE_DYNAMIC as u64;
    put(
        176,
        &[(6 << 32) | 2, dynamic, dynamic, dynamic, 0x40, 0x40, 8],
    );
    // DT_RELA, DT_RELASZ, DT_RELAENT, DT_NULL; the word points at itself.
    put(PIE_DYNAMIC, &[7, PIE_RELA as u64, 8, 24, 9, 24, 0, 0]);
    put(PIE_RELA, &[data, relative, data]);
    file.get_mut(PIE_CODE..PIE_CODE + code.len())?
        .copy_from_slice(code);
    Some(PIE_LEN)
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

    #[test]
    fn the_position_independent_file_has_one_relative_relocation() {
        let code = [0x90u8; 40];
        let mut out = std::vec![0xffu8; PIE_LEN];
        assert_eq!(minimal_pie_elf(&code, 62, &mut out), Some(PIE_LEN));
        assert!(keel_elf::parse(&out, 62).is_err(), "not static");
        let base = USER_IMAGE_MIN;
        let img = keel_elf::parse_headers_at(&out, out.len(), 62, base).unwrap();
        assert_eq!((img.bias, img.entry), (base, base + PIE_CODE));
        assert_eq!(img.segments.len(), 2);
        assert!(img.segments[0].exec && img.segments[1].write);
        let (at, len) = img.dynamic.unwrap();
        assert_eq!((at, len), (base + PIE_DYNAMIC, 0x40));
        let dynamic = &out[PIE_DYNAMIC..PIE_DYNAMIC + len];
        assert_eq!(keel_elf::rela_table(dynamic), Ok(Some((PIE_RELA, 1))));
        let rela = &out[PIE_RELA..PIE_RELA + 24];
        assert_eq!(keel_elf::relative(rela, 62), Ok((PIE_DATA, PIE_DATA)));
        assert_eq!(&out[PIE_CODE..PIE_CODE + 40], &code);
        // Too small a buffer, too much code, an unknown machine.
        assert_eq!(minimal_pie_elf(&code, 62, &mut out[..PIE_LEN - 1]), None);
        assert_eq!(minimal_pie_elf(&[0; 0xf01], 62, &mut out), None);
        assert_eq!(minimal_pie_elf(&code, 40, &mut out), None);
    }
}
