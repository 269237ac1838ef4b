//! Seven-segment digits drawn as rectangles, for on-screen counters.

use super::DrawList;

use pixelgrid_proto::challenge::{SEGMENTS, advance, segment_rects};

/// Draws `value` in decimal with its top-left at (x, y); each digit is `size` pixels tall.
pub(crate) fn draw_number(
    out: &mut DrawList,
    value: u64,
    x: f32,
    y: f32,
    size: f32,
    color: [f32; 4],
) {
    draw_digits(out, &value.to_string(), x, y, size, color);
}

/// Draws a string of decimal digits with its top-left at (x, y).
pub(crate) fn draw_digits(
    out: &mut DrawList,
    text: &str,
    x: f32,
    y: f32,
    size: f32,
    color: [f32; 4],
) {
    for (i, ch) in text.bytes().filter(u8::is_ascii_digit).enumerate() {
        let bits = SEGMENTS[usize::from(ch - b'0')];
        let ox = x + i as f32 * advance(size);
        for (bit, (sx, sy, sw, sh)) in segment_rects(ox, y, size).into_iter().enumerate() {
            if bits & (1 << bit) != 0 {
                out.rect(sx, sy, sw, sh, color);
            }
        }
    }
}

/// Draws a render challenge's nonce where [`pixelgrid_proto::challenge::read`] looks for it.
pub(crate) fn draw_challenge(out: &mut DrawList, nonce: u32, width: u32, height: u32) {
    use pixelgrid_proto::challenge::{DIGITS, layout};
    let ((px, py, pw, ph), (x, y, size)) = layout(width, height);
    out.rect(px, py, pw, ph, [0.0, 0.0, 0.0, 1.0]);
    let text = format!("{nonce:0width$}", width = DIGITS);
    draw_digits(out, &text, x, y, size, [1.0; 4]);
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
