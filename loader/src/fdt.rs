//! Device-tree editing, the little a loader needs: a copy of the
//! firmware's flattened device tree with properties set in `/chosen` (the
//! initrd's range, the command line), as Linux's EFI stub does for its
//! kernel. Portable and bounds-checked: a malformed tree is an error.

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// A property to set: name and value.
pub type Prop<'a> = (&'a str, &'a [u8]);

/// Writes into `out` the tree `dtb` with `props` set in `/chosen` (made if
/// missing; properties of those names already there are dropped); the new
/// tree's length.
pub fn with_chosen(dtb: &[u8], props: &[Prop<'_>], out: &mut [u8]) -> Result<usize, &'static str> {
    let bad = "malformed device tree";
    if be32(dtb, 0) != Some(MAGIC) {
        return Err("not a flattened device tree");
    }
    let word = |i: usize| be32(dtb, 4 * i).ok_or(bad);
    let (total, off_struct, off_strings, off_rsv) = (word(1)?, word(2)?, word(3)?, word(4)?);
    let (size_strings, size_struct) = (word(8)?, word(9)?);
    let region =
        |off: u32, len: u32| dtb.get(off as usize..(off as usize).checked_add(len as usize)?);
    let structs = region(off_struct, size_struct).ok_or(bad)?;
    let strings = region(off_strings, size_strings).ok_or(bad)?;
    let rsv = dtb
        .get(off_rsv as usize..off_struct.min(total) as usize)
        .ok_or(bad)?;
    let mut w = Out { buf: out, at: 40 };
    w.put(rsv)?;
    let new_struct = w.at;
    // The names of the new properties go after the old strings.
    let mut name_off = [0u32; 8];
    let mut extra = 0u32;
    for (i, (name, _)) in props.iter().enumerate() {
        *name_off.get_mut(i).ok_or("too many properties")? = size_strings + extra;
        extra += name.len() as u32 + 1;
    }
    let name_of = |off: u32| -> Option<&[u8]> {
        let s = strings.get(off as usize..)?;
        Some(&s[..s.iter().position(|&c| c == 0)?])
    };
    let emit_props = |w: &mut Out<'_>| -> Result<(), &'static str> {
        for (i, (_, value)) in props.iter().enumerate() {
            w.u32(PROP)?;
            w.u32(value.len() as u32)?;
            w.u32(name_off[i])?;
            w.put(value)?;
            w.pad()?;
        }
        Ok(())
    };
    let (mut at, mut depth, mut in_chosen, mut saw_chosen) = (0usize, 0u32, false, false);
    loop {
        let token = be32(structs, at).ok_or(bad)?;
        let start = at;
        at += 4;
        match token {
            BEGIN_NODE => {
                let rest = structs.get(at..).ok_or(bad)?;
                let len = rest.iter().position(|&c| c == 0).ok_or(bad)?;
                at += (len + 1).next_multiple_of(4);
                depth += 1;
                in_chosen = depth == 2 && &rest[..len] == b"chosen";
                saw_chosen |= in_chosen;
            }
            END_NODE => {
                if in_chosen && depth == 2 {
                    emit_props(&mut w)?;
                    in_chosen = false;
                }
                if depth == 1 && !saw_chosen {
                    w.u32(BEGIN_NODE)?;
                    w.put(b"chosen\0\0")?;
                    emit_props(&mut w)?;
                    w.u32(END_NODE)?;
                }
                depth = depth.checked_sub(1).ok_or(bad)?;
            }
            PROP => {
                let len = be32(structs, at).ok_or(bad)? as usize;
                let name = name_of(be32(structs, at + 4).ok_or(bad)?).ok_or(bad)?;
                at += 8 + len.next_multiple_of(4);
                let replaced = props.iter().any(|(n, _)| n.as_bytes() == name);
                if in_chosen && depth == 2 && replaced {
                    continue;
                }
            }
            NOP => {}
            END => {
                w.put(structs.get(start..at).ok_or(bad)?)?;
                break;
            }
            _ => return Err(bad),
        }
        w.put(structs.get(start..at).ok_or(bad)?)?;
    }
    let struct_len = w.at - new_struct;
    let new_strings = w.at;
    w.put(strings)?;
    for (name, _) in props {
        w.put(name.as_bytes())?;
        w.put(&[0])?;
    }
    let strings_len = w.at - new_strings;
    let total = w.at;
    // Header: as the old one, with the new sizes and offsets.
    let old = dtb.get(..40).ok_or(bad)?;
    w.at = 0;
    w.put(old)?;
    for (i, v) in [
        (1, total),
        (2, new_struct),
        (3, new_strings),
        (4, 40),
        (8, strings_len),
        (9, struct_len),
    ] {
        w.at = 4 * i;
        w.u32(v as u32)?;
    }
    Ok(total)
}

struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), &'static str> {
        let d = self
            .buf
            .get_mut(self.at..self.at + b.len())
            .ok_or("device tree buffer too small")?;
        d.copy_from_slice(b);
        self.at += b.len();
        Ok(())
    }

    fn u32(&mut self, v: u32) -> Result<(), &'static str> {
        self.put(&v.to_be_bytes())
    }

    fn pad(&mut self) -> Result<(), &'static str> {
        while !self.at.is_multiple_of(4) {
            self.put(&[0])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree: `/` with `model`, an optional `/chosen` with `bootargs`,
    /// and `/memory`.
    fn tree(chosen: bool) -> Vec<u8> {
        let strings = b"model\0bootargs\0device_type\0";
        let mut s: Vec<u8> = Vec::new();
        let mut w = |v: u32| s.extend(v.to_be_bytes());
        w(BEGIN_NODE);
        w(0);
        w(PROP);
        w(4);
        w(0);
        s.extend(b"qemu");
        if chosen {
            s.extend(BEGIN_NODE.to_be_bytes());
            s.extend(b"chosen\0\0");
            s.extend(PROP.to_be_bytes());
            s.extend(4u32.to_be_bytes());
            s.extend(6u32.to_be_bytes());
            s.extend(b"old\0");
            s.extend(END_NODE.to_be_bytes());
        }
        s.extend(BEGIN_NODE.to_be_bytes());
        s.extend(b"memory\0\0");
        s.extend(PROP.to_be_bytes());
        s.extend(7u32.to_be_bytes());
        s.extend(15u32.to_be_bytes());
        s.extend(b"memory\0\0");
        s.extend(END_NODE.to_be_bytes());
        s.extend(END_NODE.to_be_bytes());
        s.extend(END.to_be_bytes());
        let rsv = [0u8; 16];
        let total = 40 + rsv.len() + s.len() + strings.len();
        let mut h = Vec::new();
        for v in [
            MAGIC,
            total as u32,
            56,
            (56 + s.len()) as u32,
            40,
            17,
            16,
            0,
            strings.len() as u32,
            s.len() as u32,
        ] {
            h.extend(v.to_be_bytes());
        }
        h.extend(rsv);
        h.extend(&s);
        h.extend(strings);
        h
    }

    /// The properties of `/chosen` in `dtb`, by name.
    fn chosen(dtb: &[u8]) -> Vec<(String, Vec<u8>)> {
        let (off_struct, off_strings) = (
            be32(dtb, 8).unwrap() as usize,
            be32(dtb, 12).unwrap() as usize,
        );
        let mut at = off_struct;
        let (mut depth, mut here, mut out) = (0, false, Vec::new());
        loop {
            let t = be32(dtb, at).unwrap();
            at += 4;
            match t {
                BEGIN_NODE => {
                    let n = dtb[at..].iter().position(|&c| c == 0).unwrap();
                    depth += 1;
                    here = depth == 2 && &dtb[at..at + n] == b"chosen";
                    at += (n + 1).next_multiple_of(4);
                }
                END_NODE => depth -= 1,
                PROP => {
                    let (len, off) = (
                        be32(dtb, at).unwrap() as usize,
                        be32(dtb, at + 4).unwrap() as usize,
                    );
                    let s = &dtb[off_strings + off..];
                    let name =
                        String::from_utf8(s[..s.iter().position(|&c| c == 0).unwrap()].to_vec())
                            .unwrap();
                    if here && depth == 2 {
                        out.push((name, dtb[at + 8..at + 8 + len].to_vec()));
                    }
                    at += 8 + len.next_multiple_of(4);
                }
                END => return out,
                _ => {}
            }
        }
    }

    #[test]
    fn chosen_gets_the_properties_whether_or_not_it_was_there() {
        let start = 0x4800_0000u64.to_be_bytes();
        let props: [Prop<'_>; 2] = [("linux,initrd-start", &start), ("bootargs", b"log=debug\0")];
        for had in [true, false] {
            let dtb = tree(had);
            let mut out = vec![0u8; 4096];
            let len = with_chosen(&dtb, &props, &mut out).unwrap();
            let out = &out[..len];
            assert_eq!(be32(out, 4), Some(len as u32));
            let got = chosen(out);
            assert_eq!(got.len(), 2, "old bootargs replaced: {got:?}");
            assert_eq!(got[0], ("linux,initrd-start".to_string(), start.to_vec()));
            assert_eq!(got[1], ("bootargs".to_string(), b"log=debug\0".to_vec()));
        }
        assert!(
            with_chosen(&[0u8; 64], &props, &mut [0u8; 256]).is_err(),
            "not a tree"
        );
        assert!(
            with_chosen(&tree(true), &props, &mut [0u8; 64]).is_err(),
            "too small"
        );
        let mut cut = tree(true);
        cut.truncate(80);
        assert!(
            with_chosen(&cut, &props, &mut [0u8; 4096]).is_err(),
            "truncated"
        );
    }
}
