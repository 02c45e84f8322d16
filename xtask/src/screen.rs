//! Reading a screenshot (QEMU's `screendump`: a binary PPM) for a line of
//! text as the kernel's framebuffer console draws it (`keel_fb`): each
//! character in its 8 × 16 cell, from the left edge of a text row.

use anyhow::{Context, Result, bail};
use keel_fb::{CELL_HEIGHT, CELL_WIDTH, lit};

/// An RGB image, 3 bytes a pixel, line after line.
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    /// A binary PPM (`P6`, 8 bits a colour).
    pub fn from_ppm(data: &[u8]) -> Result<Image> {
        // The header: magic, width, height, maximum, each after white
        // space, then one white-space byte before the pixels.
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while data.get(at).is_some_and(u8::is_ascii_whitespace) {
                at += 1;
            }
            let start = at;
            while data.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
                at += 1;
            }
            if start == at {
                bail!("truncated PPM header");
            }
            fields.push(std::str::from_utf8(&data[start..at])?);
        }
        if fields[0] != "P6" || fields[3] != "255" {
            bail!("not an 8-bit binary PPM file");
        }
        let width: usize = fields[1].parse().context("PPM width")?;
        let height: usize = fields[2].parse().context("PPM height")?;
        let rgb = data
            .get(at + 1..at + 1 + 3 * width * height)
            .context("PPM pixels cut short")?;
        Ok(Image {
            width,
            height,
            rgb: rgb.to_vec(),
        })
    }

    /// Whether pixel (`x`, `y`) is foreground: brighter than half the
    /// console's text colour.
    fn lit(&self, x: usize, y: usize) -> bool {
        let at = 3 * (y * self.width + x);
        let threshold = (keel_fb::FOREGROUND & 0xff) / 2;
        self.rgb
            .get(at..at + 3)
            .is_some_and(|p| p.iter().any(|&c| u32::from(c) > threshold))
    }

    /// The first text row that starts with `text`, every pixel of its
    /// cells as the font draws it.
    pub fn find_line(&self, text: &str) -> Option<usize> {
        let cells = text.len() * CELL_WIDTH;
        (0..self.height / CELL_HEIGHT).find(|&row| {
            cells <= self.width
                && text.bytes().enumerate().all(|(i, c)| {
                    (0..CELL_HEIGHT).all(|y| {
                        (0..CELL_WIDTH).all(|x| {
                            let (px, py) = (i * CELL_WIDTH + x, row * CELL_HEIGHT + y);
                            self.lit(px, py) == lit(c, x, y)
                        })
                    })
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_fb::{Console, Mode};

    /// A PPM of the console after `text` is written to it.
    fn screenshot(text: &str) -> Vec<u8> {
        let mode = Mode {
            width: 320,
            height: 96,
            pitch: 1280,
            shifts: [16, 8, 0],
        };
        let mut fb = vec![0u8; mode.size() as usize];
        let mut console = Console::new();
        assert!(console.attach(&mut fb, mode));
        console.write_bytes(text.as_bytes());
        let mut ppm = b"P6\n320 96\n255\n".to_vec();
        for px in fb.chunks_exact(4) {
            ppm.extend([px[2], px[1], px[0]]);
        }
        ppm
    }

    #[test]
    fn the_line_is_found_in_its_row() {
        let shot = Image::from_ppm(&screenshot("firmware\nKeel 0.1.0 (x86_64) booting\n"));
        let shot = shot.unwrap();
        assert_eq!((shot.width, shot.height), (320, 96));
        assert_eq!(shot.find_line("Keel 0.1.0 (x86_64) booting"), Some(1));
        assert_eq!(shot.find_line("Keel"), Some(1));
        assert_eq!(shot.find_line("Keel 0.1.0 (aarch64) booting"), None);
        assert_eq!(shot.find_line("eel"), None, "lines start at the left edge");
    }

    #[test]
    fn bad_ppm_files_are_refused() {
        let good = screenshot("x");
        assert!(Image::from_ppm(&good[..good.len() - 1]).is_err());
        assert!(Image::from_ppm(b"P3\n1 1\n255\n000").is_err());
        assert!(Image::from_ppm(b"P6\n1 1\n65535\n000000").is_err());
        assert!(Image::from_ppm(b"P6\n1").is_err());
    }
}
