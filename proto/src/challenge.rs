//! Render challenges: a number a node must draw into its live picture, and how to read it back
//! from a decoded frame. A checker sends a fresh nonce on the data channel and must see it in
//! the pictures it decodes within a deadline — proof that the node renders and encodes this
//! stream live, not a recording.
//!
//! The nonce is drawn as [`DIGITS`] seven-segment digits (zero-padded), white on a black plate
//! at the bottom-left corner; the geometry depends only on the picture size, so the reader
//! knows where to look. Segment geometry is shared with the built-in games' on-screen counters.

/// Digits of a drawn nonce (zero-padded).
pub const DIGITS: usize = 9;
/// The largest nonce that can be drawn.
pub const MAX_NONCE: u32 = 999_999_999;

/// Segments a..g of each digit 0-9, as bits 0..6:
/// ```text
///  aaa
/// f   b
///  ggg
/// e   c
///  ddd
/// ```
pub const SEGMENTS: [u8; 10] = [
    0b011_1111, 0b000_0110, 0b101_1011, 0b100_1111, 0b110_0110, 0b110_1101, 0b111_1101, 0b000_0111,
    0b111_1111, 0b110_1111,
];

/// The rectangles `(x, y, w, h)` of segments a..g of a digit `size` pixels tall at (x, y).
pub fn segment_rects(x: f32, y: f32, size: f32) -> [Rect; 7] {
    let w = size * 0.5;
    let t = (size * 0.12).max(1.0);
    let half = size * 0.5;
    [
        (x, y, w, t),                   // a
        (x + w - t, y, t, half),        // b
        (x + w - t, y + half, t, half), // c
        (x, y + size - t, w, t),        // d
        (x, y + half, t, half),         // e
        (x, y, t, half),                // f
        (x, y + half - t * 0.5, w, t),  // g
    ]
}

/// Horizontal distance from one digit to the next.
pub fn advance(size: f32) -> f32 {
    size * 0.75
}

/// A rectangle `(x, y, w, h)` in pixels.
pub type Rect = (f32, f32, f32, f32);

/// Where a nonce goes in a `width`×`height` picture: the plate, and the top-left corner
/// `(x, y)` and height of its first digit.
pub fn layout(width: u32, height: u32) -> (Rect, (f32, f32, f32)) {
    let _ = width;
    let size = (height as f32 / 18.0).max(12.0);
    let plate = (
        0.0,
        height as f32 - size * 1.5,
        size * 0.5 + advance(size) * DIGITS as f32,
        size * 1.5,
    );
    (plate, (size * 0.25, height as f32 - size * 1.25, size))
}

/// Reads a drawn nonce from an RGBA picture; `None` when the plate does not hold one.
pub fn read(rgba: &[u8], width: u32, height: u32) -> Option<u32> {
    let (_, (x0, y0, size)) = layout(width, height);
    let lit = |x: f32, y: f32| -> Option<bool> {
        let (px, py) = (x.round() as usize, y.round() as usize);
        if px >= width as usize || py >= height as usize {
            return None;
        }
        let i = (py * width as usize + px) * 4;
        let p = rgba.get(i..i + 3)?;
        Some((u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3 > 128)
    };
    let mut value: u32 = 0;
    for d in 0..DIGITS {
        let x = x0 + advance(size) * d as f32;
        // The holes inside the digit must be dark: a plain bright picture holds no nonce.
        if lit(x + size * 0.25, y0 + size * 0.25)? || lit(x + size * 0.25, y0 + size * 0.75)? {
            return None;
        }
        let mut bits = 0u8;
        for (s, (sx, sy, sw, sh)) in segment_rects(x, y0, size).into_iter().enumerate() {
            // The centre of the segment's long side, away from where segments meet.
            if lit(sx + sw / 2.0, sy + sh / 2.0)? {
                bits |= 1 << s;
            }
        }
        let digit = SEGMENTS.iter().position(|&b| b == bits)? as u32;
        value = value.checked_mul(10)?.checked_add(digit)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paints what a node draws: the plate and the digits.
    fn paint(nonce: u32, width: u32, height: u32) -> Vec<u8> {
        let mut img = vec![90u8; (width * height * 4) as usize];
        let mut fill = |(x, y, w, h): (f32, f32, f32, f32), v: u8| {
            for py in y.round() as u32..((y + h).round() as u32).min(height) {
                for px in x.round() as u32..((x + w).round() as u32).min(width) {
                    let i = ((py * width + px) * 4) as usize;
                    img[i..i + 3].fill(v);
                }
            }
        };
        let (plate, (x0, y0, size)) = layout(width, height);
        fill(plate, 0);
        let text = format!("{nonce:0width$}", width = DIGITS);
        for (d, ch) in text.bytes().enumerate() {
            let bits = SEGMENTS[usize::from(ch - b'0')];
            let x = x0 + advance(size) * d as f32;
            for (s, r) in segment_rects(x, y0, size).into_iter().enumerate() {
                if bits & (1 << s) != 0 {
                    fill(r, 255);
                }
            }
        }
        img
    }

    #[test]
    fn a_drawn_nonce_reads_back_at_every_mode() {
        for (w, h) in [(320, 240), (640, 360), (1280, 720), (1920, 1080)] {
            for nonce in [0, 7, 123_456_789, MAX_NONCE, 40_302_010] {
                assert_eq!(
                    read(&paint(nonce, w, h), w, h),
                    Some(nonce),
                    "{nonce} at {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn a_picture_without_a_nonce_reads_as_none() {
        assert_eq!(read(&vec![0u8; 640 * 360 * 4], 640, 360), None);
        assert_eq!(read(&vec![255u8; 640 * 360 * 4], 640, 360), None);
        assert_eq!(read(&[], 640, 360), None);
    }
}
