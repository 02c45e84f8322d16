//! A text console on a linear framebuffer: the kernel draws its log with it
//! on the screen the firmware set up (UEFI's graphics output, a device
//! tree's `simple-framebuffer`), and xtask uses [`lit`] to check a
//! screenshot of that screen.
//!
//! Characters are 8 × 16 cells drawn from the public-domain 8 × 8 glyphs of
//! the `font8x8` crate, each glyph line twice; pixels are 32 bits of
//! direct colour. The console keeps the text on the screen, so scrolling
//! redraws only the cells that change and never reads the framebuffer
//! (reading one is slow on real machines, where it is write-combined).
//!
//! Portable and host-tested; `no_std`, no allocation, no unsafe code: it
//! draws into a byte slice the caller maps, and every store is checked
//! against that slice.
#![no_std]
#![forbid(unsafe_code)]

use font8x8::legacy::BASIC_LEGACY;

/// Pixels across a character cell.
pub const CELL_WIDTH: usize = 8;
/// Pixels down a character cell.
pub const CELL_HEIGHT: usize = 16;
/// Most columns and rows used (1920 × 1200 pixels); a larger screen is
/// used from its top left.
pub const MAX_COLUMNS: usize = 240;
pub const MAX_ROWS: usize = 75;
/// Foreground and background colours, `0xRRGGBB`.
pub const FOREGROUND: u32 = 0x00c0_c0c0;
pub const BACKGROUND: u32 = 0x0000_0000;
/// What a character outside ASCII's printable range shows.
const REPLACEMENT: u8 = b'?';

/// A 32-bit direct-colour framebuffer layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    /// Visible pixels across and down.
    pub width: u32,
    pub height: u32,
    /// Bytes from the start of one pixel line to the next.
    pub pitch: u32,
    /// Bit position of the red, green and blue bytes in a pixel.
    pub shifts: [u8; 3],
}

impl Mode {
    /// Bytes the framebuffer spans.
    pub fn size(&self) -> u64 {
        u64::from(self.pitch) * u64::from(self.height)
    }

    /// Whether at least one cell fits, each line fits its pitch and each
    /// colour is a byte inside the pixel.
    pub fn is_valid(&self) -> bool {
        self.width as usize >= CELL_WIDTH
            && self.height as usize >= CELL_HEIGHT
            && u64::from(self.pitch) >= 4 * u64::from(self.width)
            && self.shifts.iter().all(|&s| s <= 24 && s % 8 == 0)
    }

    /// The pixel of colour `0xRRGGBB`, in memory order.
    pub fn pixel(&self, rgb: u32) -> [u8; 4] {
        let [_, r, g, b] = rgb.to_be_bytes();
        let [rs, gs, bs] = self.shifts.map(u32::from);
        (u32::from(r) << rs | u32::from(g) << gs | u32::from(b) << bs).to_le_bytes()
    }
}

/// Character `c`'s 8 × 8 glyph (a character outside ASCII's printable
/// range shows as `?`); a line's lowest bit is its leftmost pixel.
fn glyph(c: u8) -> [u8; 8] {
    let c = if c.is_ascii_graphic() || c == b' ' {
        c
    } else {
        REPLACEMENT
    };
    BASIC_LEGACY
        .get(usize::from(c))
        .copied()
        .unwrap_or_default()
}

/// Whether pixel (`x`, `y`) of character `c`'s cell is foreground.
pub fn lit(c: u8, x: usize, y: usize) -> bool {
    let line = glyph(c).get(y / 2).copied().unwrap_or(0);
    x < CELL_WIDTH && line >> x & 1 == 1
}

/// A text console on one framebuffer; writes before [`Console::attach`]
/// go nowhere.
pub struct Console<'a> {
    fb: &'a mut [u8],
    mode: Mode,
    /// Background and foreground pixels.
    pixels: [[u8; 4]; 2],
    columns: usize,
    rows: usize,
    column: usize,
    row: usize,
    /// The characters on the screen.
    text: [[u8; MAX_COLUMNS]; MAX_ROWS],
}

impl core::fmt::Debug for Console<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Console").field("mode", &self.mode).finish()
    }
}

impl Default for Console<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Console<'a> {
    /// A console with no framebuffer yet (a `static`'s initial value).
    pub const fn new() -> Self {
        Console {
            fb: &mut [],
            mode: Mode {
                width: 0,
                height: 0,
                pitch: 0,
                shifts: [0; 3],
            },
            pixels: [[0; 4]; 2],
            columns: 0,
            rows: 0,
            column: 0,
            row: 0,
            text: [[b' '; MAX_COLUMNS]; MAX_ROWS],
        }
    }

    /// Draws from now on into `fb`, laid out as `mode`, after clearing it;
    /// `false` (and nothing changed) if the mode is not valid or does not
    /// fit `fb`.
    pub fn attach(&mut self, fb: &'a mut [u8], mode: Mode) -> bool {
        if !mode.is_valid() || mode.size() > fb.len() as u64 {
            return false;
        }
        let background = mode.pixel(BACKGROUND);
        for pixel in fb.chunks_exact_mut(4) {
            pixel.copy_from_slice(&background);
        }
        *self = Console {
            fb,
            mode,
            pixels: [background, mode.pixel(FOREGROUND)],
            columns: (mode.width as usize / CELL_WIDTH).min(MAX_COLUMNS),
            rows: (mode.height as usize / CELL_HEIGHT).min(MAX_ROWS),
            ..Console::new()
        };
        true
    }

    /// Columns and rows of text (0 before [`Console::attach`]).
    pub fn size(&self) -> (usize, usize) {
        (self.columns, self.rows)
    }

    /// The character at `column`, `row` (a space outside the screen).
    pub fn char_at(&self, column: usize, row: usize) -> u8 {
        let at = self.text.get(row).and_then(|r| r.get(column));
        at.copied()
            .filter(|_| column < self.columns)
            .unwrap_or(b' ')
    }

    /// Writes `bytes`: `\n` starts a line, `\r` returns to its start, `\t`
    /// goes to the next multiple of 8 columns, other control characters are
    /// ignored; a full line wraps, and the screen scrolls up a line when
    /// the last one is full.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        if self.rows == 0 {
            return;
        }
        for &c in bytes {
            match c {
                b'\n' => self.newline(),
                b'\r' => self.column = 0,
                b'\t' => {
                    let to = (self.column / 8 + 1) * 8;
                    while self.column < to.min(self.columns) {
                        self.put(b' ');
                    }
                }
                c if c.is_ascii_control() => {}
                c => self.put(c),
            }
        }
    }

    fn put(&mut self, c: u8) {
        if self.column == self.columns {
            self.newline();
        }
        self.set(self.column, self.row, c);
        self.column += 1;
    }

    fn newline(&mut self) {
        self.column = 0;
        if self.row + 1 < self.rows {
            self.row += 1;
            return;
        }
        for row in 0..self.rows {
            for column in 0..self.columns {
                self.set(column, row, self.char_at(column, row + 1));
            }
        }
    }

    /// Puts `c` at `column`, `row`, drawing it if it differs.
    fn set(&mut self, column: usize, row: usize, c: u8) {
        let Some(cell) = self.text.get_mut(row).and_then(|r| r.get_mut(column)) else {
            return;
        };
        if *cell == c {
            return;
        }
        *cell = c;
        let (pitch, glyph) = (self.mode.pitch as usize, glyph(c));
        for y in 0..CELL_HEIGHT {
            let at = (row * CELL_HEIGHT + y) * pitch + column * CELL_WIDTH * 4;
            let Some(line) = self.fb.get_mut(at..at + CELL_WIDTH * 4) else {
                return;
            };
            // Each glyph line is drawn twice.
            let bits = glyph[y / 2];
            for (x, pixel) in line.chunks_exact_mut(4).enumerate() {
                pixel.copy_from_slice(&self.pixels[usize::from(bits >> x & 1)]);
            }
        }
    }
}

impl core::fmt::Write for Console<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
