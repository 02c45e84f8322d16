extern crate std;

use super::*;
use core::fmt::Write;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

/// A 10 × 3 cell screen of BGR pixels with 8 bytes of padding a line.
const MODE: Mode = Mode {
    width: 80,
    height: 48,
    pitch: 80 * 4 + 8,
    shifts: [16, 8, 0],
};

fn screen() -> Vec<u8> {
    vec![0x55; MODE.size() as usize]
}

/// Whether the pixels of cell (`column`, `row`) show `c`.
fn shows(fb: &[u8], column: usize, row: usize, c: u8) -> bool {
    (0..CELL_HEIGHT).all(|y| {
        (0..CELL_WIDTH).all(|x| {
            let at = (row * CELL_HEIGHT + y) * MODE.pitch as usize + (column * CELL_WIDTH + x) * 4;
            let want = MODE.pixel(if lit(c, x, y) { FOREGROUND } else { BACKGROUND });
            fb[at..at + 4] == want
        })
    })
}

fn line(console: &Console<'_>, row: usize) -> Vec<u8> {
    (0..console.size().0)
        .map(|c| console.char_at(c, row))
        .collect()
}

#[test]
fn glyphs_come_from_the_font_with_each_line_doubled() {
    // 'A' is 0x0C, 0x1E, 0x33, ... with the lowest bit leftmost.
    assert!(lit(b'A', 2, 0) && lit(b'A', 3, 1) && !lit(b'A', 0, 0));
    assert!(lit(b'A', 0, 4) && lit(b'A', 1, 5) && !lit(b'A', 2, 4));
    assert!((0..8).all(|x| (0..16).all(|y| !lit(b' ', x, y))));
    // Outside ASCII's printable range: the replacement glyph.
    assert!((0..16).all(|y| (0..8).all(|x| lit(0xe9, x, y) == lit(b'?', x, y))));
    assert!(!lit(b'A', 8, 0) && !lit(b'A', 2, 16));
}

#[test]
fn pixels_follow_the_modes_colour_positions() {
    assert_eq!(MODE.pixel(0x12_34_56), [0x56, 0x34, 0x12, 0]);
    let rgb = Mode {
        shifts: [0, 8, 16],
        ..MODE
    };
    assert_eq!(rgb.pixel(0x12_34_56), [0x12, 0x34, 0x56, 0]);
}

#[test]
fn a_bad_mode_or_too_small_a_buffer_is_refused() {
    let mut fb = screen();
    let bad = [
        Mode { width: 7, ..MODE },
        Mode { height: 15, ..MODE },
        Mode {
            pitch: 79 * 4,
            ..MODE
        },
        Mode {
            shifts: [16, 8, 4],
            ..MODE
        },
        Mode {
            shifts: [32, 8, 0],
            ..MODE
        },
    ];
    for mode in bad {
        assert!(!mode.is_valid());
        assert!(!Console::new().attach(&mut fb, mode));
    }
    let short = MODE.size() as usize - 1;
    let mut c = Console::new();
    assert!(!c.attach(&mut fb[..short], MODE));
    // Writing to a detached console is harmless, and nothing was drawn.
    c.write_bytes(b"hello\n");
    assert_eq!(c.size(), (0, 0));
    assert!(fb.iter().all(|&b| b == 0x55));
}

#[test]
fn text_is_drawn_in_cells_after_the_screen_is_cleared() {
    let mut fb = screen();
    let mut c = Console::new();
    assert!(c.attach(&mut fb, MODE));
    assert_eq!(c.size(), (10, 3));
    write!(c, "Keel\n\tx").unwrap();
    assert_eq!(line(&c, 0), b"Keel      ");
    assert_eq!(line(&c, 1), b"        x ");
    for (i, ch) in b"Keel".iter().enumerate() {
        assert!(shows(&fb, i, 0, *ch));
    }
    assert!(shows(&fb, 8, 1, b'x') && shows(&fb, 0, 2, b' '));
    // The padding after each line was cleared too.
    assert_eq!(fb[MODE.pitch as usize - 4..MODE.pitch as usize], [0; 4]);
}

#[test]
fn long_lines_wrap_and_the_screen_scrolls() {
    let mut fb = screen();
    let mut c = Console::new();
    assert!(c.attach(&mut fb, MODE));
    c.write_bytes(b"0123456789abc\nline 2");
    assert_eq!(line(&c, 0), b"0123456789");
    assert_eq!(line(&c, 1), b"abc       ");
    assert_eq!(line(&c, 2), b"line 2    ");
    c.write_bytes(b"\nline 3");
    assert_eq!(line(&c, 0), b"abc       ");
    assert_eq!(line(&c, 2), b"line 3    ");
    c.write_bytes(b"\r\x07L\n");
    assert_eq!(line(&c, 0), b"line 2    ");
    assert_eq!(line(&c, 1), b"Line 3    ");
    assert_eq!(line(&c, 2), b"          ");
    assert!(shows(&fb, 0, 0, b'l') && shows(&fb, 7, 0, b' ') && shows(&fb, 0, 1, b'L'));
    assert!((0..10).all(|col| shows(&fb, col, 2, b' ')));
}

#[test]
fn a_large_screen_is_used_from_its_top_left() {
    let mode = Mode {
        width: 2000,
        height: 1300,
        pitch: 8000,
        shifts: [16, 8, 0],
    };
    let mut fb = vec![0u8; mode.size() as usize];
    let mut c = Console::new();
    assert!(c.attach(&mut fb, mode));
    assert_eq!(c.size(), (MAX_COLUMNS, MAX_ROWS));
    for _ in 0..2 * MAX_ROWS {
        c.write_bytes(&[b'x'; MAX_COLUMNS + 3]);
    }
    assert_eq!(c.char_at(MAX_COLUMNS, 0), b' ');
}

proptest! {
    #[test]
    fn any_output_keeps_to_the_buffer(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                      w in 0u32..100, h in 0u32..60, pad in 0u32..16) {
        let mode = Mode { width: w, height: h, pitch: w * 4 + pad, shifts: [0, 8, 16] };
        let mut fb = vec![0u8; mode.size() as usize];
        let mut c = Console::new();
        c.attach(&mut fb, mode);
        c.write_bytes(&bytes);
    }
}
