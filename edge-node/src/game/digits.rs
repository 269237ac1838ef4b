//! Seven-segment digits drawn as rectangles, for on-screen counters.

use super::DrawList;

// Segments a..g of each digit 0-9, as bits 0..6:
//  aaa
// f   b
//  ggg
// e   c
//  ddd
const SEGMENTS: [u8; 10] = [
    0b011_1111, 0b000_0110, 0b101_1011, 0b100_1111, 0b110_0110, 0b110_1101, 0b111_1101, 0b000_0111,
    0b111_1111, 0b110_1111,
];

/// Draws `value` in decimal with its top-left at (x, y); each digit is `size` pixels tall.
pub(crate) fn draw_number(
    out: &mut DrawList,
    value: u64,
    x: f32,
    y: f32,
    size: f32,
    color: [f32; 4],
) {
    let text = value.to_string();
    let w = size * 0.5;
    let t = (size * 0.12).max(1.0);
    let advance = w + size * 0.25;
    for (i, ch) in text.bytes().enumerate() {
        let bits = SEGMENTS[usize::from(ch - b'0')];
        let ox = x + i as f32 * advance;
        let half = size * 0.5;
        let segs: [(f32, f32, f32, f32); 7] = [
            (ox, y, w, t),                   // a
            (ox + w - t, y, t, half),        // b
            (ox + w - t, y + half, t, half), // c
            (ox, y + size - t, w, t),        // d
            (ox, y + half, t, half),         // e
            (ox, y, t, half),                // f
            (ox, y + half - t * 0.5, w, t),  // g
        ];
        for (bit, (sx, sy, sw, sh)) in segs.into_iter().enumerate() {
            if bits & (1 << bit) != 0 {
                out.rect(sx, sy, sw, sh, color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_lights_every_segment_and_one_lights_two() {
        let mut out = DrawList::default();
        draw_number(&mut out, 8, 0.0, 0.0, 20.0, [1.0; 4]);
        assert_eq!(out.rects.len(), 7);
        out.rects.clear();
        draw_number(&mut out, 1, 0.0, 0.0, 20.0, [1.0; 4]);
        assert_eq!(out.rects.len(), 2);
    }
}
