//! Device-tree editing, the little a loader needs: a copy of the
//! firmware's flattened device tree with properties set in `/chosen` (the
//! initrd's range, the command line), a child node added to it (the
//! framebuffer) and memory reservations added, as Linux's EFI stub does
//! for its kernel. Portable and bounds-checked: a malformed tree is an
//! error.

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

/// What [`edit`] changes.
#[derive(Clone, Copy, Default)]
pub struct Edit<'a> {
    /// Properties set in `/chosen` (made if missing; properties of those
    /// names already there are dropped).
    pub chosen: &'a [Prop<'a>],
    /// A node added under `/chosen`: its name and properties.
    pub child: Option<(&'a str, &'a [Prop<'a>])>,
    /// `(address, size)` ranges added to the memory reservation block.
    pub reserve: &'a [(u64, u64)],
}

/// Writes into `out` the tree `dtb` changed as `edit` says; the new tree's
/// length.
pub fn edit(dtb: &[u8], edit: &Edit<'_>, out: &mut [u8]) -> Result<usize, &'static str> {
    let props = edit.chosen;
    let child = edit.child.unwrap_or_default();
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
    for (at, len) in edit.reserve {
        w.put(&at.to_be_bytes())?;
        w.put(&len.to_be_bytes())?;
    }
    w.put(rsv)?;
    let new_struct = w.at;
    // The names of the new properties go after the old strings.
    let mut name_off = [0u32; 16];
    let mut extra = 0u32;
    let names = props.iter().chain(child.1).map(|(name, _)| name);
    for (i, name) in names.clone().enumerate() {
        *name_off.get_mut(i).ok_or("too many properties")? = size_strings + extra;
        extra += name.len() as u32 + 1;
    }
    let name_of = |off: u32| -> Option<&[u8]> {
        let s = strings.get(off as usize..)?;
        Some(&s[..s.iter().position(|&c| c == 0)?])
    };
    let emit_props = |w: &mut Out<'_>| -> Result<(), &'static str> {
        for (i, (_, value)) in props.iter().chain(child.1).enumerate() {
            if i == props.len() {
                w.u32(BEGIN_NODE)?;
                w.put(child.0.as_bytes())?;
                w.put(&[0])?;
                w.pad()?;
            }
            w.u32(PROP)?;
            w.u32(value.len() as u32)?;
            w.u32(name_off[i])?;
            w.put(value)?;
            w.pad()?;
        }
        if !child.1.is_empty() {
            w.u32(END_NODE)?;
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
    for name in names {
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
        props_at(dtb, &["chosen"])
    }

    /// The properties of the node at `path` (names below the root).
    fn props_at(dtb: &[u8], path: &[&str]) -> Vec<(String, Vec<u8>)> {
        let (off_struct, off_strings) = (
            be32(dtb, 8).unwrap() as usize,
            be32(dtb, 12).unwrap() as usize,
        );
        let mut at = off_struct;
        let (mut depth, mut on, mut out) = (0, 0, Vec::new());
        loop {
            let t = be32(dtb, at).unwrap();
            at += 4;
            match t {
                BEGIN_NODE => {
                    let n = dtb[at..].iter().position(|&c| c == 0).unwrap();
                    depth += 1;
                    let name = &dtb[at..at + n];
                    if on + 2 == depth && path.get(on).is_some_and(|p| p.as_bytes() == name) {
                        on += 1;
                    }
                    at += (n + 1).next_multiple_of(4);
                }
                END_NODE => {
                    depth -= 1;
                    on = on.min(depth.max(1) - 1);
                }
                PROP => {
                    let (len, off) = (
                        be32(dtb, at).unwrap() as usize,
                        be32(dtb, at + 4).unwrap() as usize,
                    );
                    let s = &dtb[off_strings + off..];
                    let name =
                        String::from_utf8(s[..s.iter().position(|&c| c == 0).unwrap()].to_vec())
                            .unwrap();
                    if on == path.len() && depth == on + 1 {
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
            let e = Edit {
                chosen: &props,
                ..Edit::default()
            };
            let len = edit(&dtb, &e, &mut out).unwrap();
            let out = &out[..len];
            assert_eq!(be32(out, 4), Some(len as u32));
            let got = chosen(out);
            assert_eq!(got.len(), 2, "old bootargs replaced: {got:?}");
            assert_eq!(got[0], ("linux,initrd-start".to_string(), start.to_vec()));
            assert_eq!(got[1], ("bootargs".to_string(), b"log=debug\0".to_vec()));
        }
        let e = Edit {
            chosen: &props,
            ..Edit::default()
        };
        assert!(edit(&[0u8; 64], &e, &mut [0u8; 256]).is_err(), "not a tree");
        assert!(edit(&tree(true), &e, &mut [0u8; 64]).is_err(), "too small");
        let mut cut = tree(true);
        cut.truncate(80);
        assert!(edit(&cut, &e, &mut [0u8; 4096]).is_err(), "truncated");
    }

    #[test]
    fn a_child_of_chosen_and_reservations_are_added() {
        let width = 1024u32.to_be_bytes();
        let fb: [Prop<'_>; 2] = [("compatible", b"simple-framebuffer\0"), ("width", &width)];
        let e = Edit {
            chosen: &[("bootargs", b"x\0")],
            child: Some(("framebuffer@80000000", &fb)),
            reserve: &[(0x8000_0000, 0x30_0000)],
        };
        for had in [true, false] {
            let mut out = vec![0u8; 4096];
            let len = edit(&tree(had), &e, &mut out).unwrap();
            let out = &out[..len];
            assert_eq!(chosen(out), vec![("bootargs".into(), b"x\0".to_vec())]);
            let got = props_at(out, &["chosen", "framebuffer@80000000"]);
            assert_eq!(got.len(), 2);
            assert_eq!(
                got[0],
                ("compatible".into(), b"simple-framebuffer\0".to_vec())
            );
            assert_eq!(got[1], ("width".into(), width.to_vec()));
            // The memory node after `/chosen` is still there.
            assert_eq!(props_at(out, &["memory"]).len(), 1);
            // The new reservation, then the old (empty) block's end.
            assert_eq!(be32(out, 16), Some(40));
            assert_eq!(
                &out[40..56],
                [0x8000_0000u64.to_be_bytes(), 0x30_0000u64.to_be_bytes()].concat()
            );
            assert_eq!(&out[56..72], [0u8; 16]);
        }
    }
}
