//! RGBA/BGRA → I420 colour conversion on the CPU (BT.601, limited range), the encoders' input
//! format. Rendered frames are RGBA; frames captured from an X display are BGRx.
//!
//! On lavapipe a compute shader costs more CPU than this loop (see ARCHITECTURE.md's measured
//! facts), and on an NVIDIA GPU the readback dominates anyway, so conversion stays here.
//! Fixed-point arithmetic, two rows per pass so each 2x2 block's chroma is computed once.

/// One I420 picture's three planes and their strides, borrowed from wherever they live
/// (a GStreamer buffer, a `Vec`).
#[derive(Debug)]
pub struct I420Planes<'a> {
    /// Luma, `height` rows of `y_stride` bytes.
    pub y: &'a mut [u8],
    /// Bytes per luma row.
    pub y_stride: usize,
    /// Blue-difference chroma, `height / 2` rows.
    pub u: &'a mut [u8],
    /// Bytes per U row.
    pub u_stride: usize,
    /// Red-difference chroma, `height / 2` rows.
    pub v: &'a mut [u8],
    /// Bytes per V row.
    pub v_stride: usize,
}

#[inline(always)]
fn luma(r: i32, g: i32, b: i32) -> u8 {
    (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8
}

/// The byte order of a 4-byte pixel; the fourth byte is alpha or padding and is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelOrder {
    /// Red, green, blue, alpha (what the renderer reads back).
    #[default]
    Rgba,
    /// Blue, green, red, padding (what an X server's 24-bit visual holds).
    Bgrx,
}

/// Converts an RGBA picture (`src_stride` bytes per row) to I420. `width` and `height` must be
/// even and the planes large enough; violating that panics rather than reading out of bounds.
pub fn rgba_to_i420(
    src: &[u8],
    src_stride: usize,
    width: usize,
    height: usize,
    out: I420Planes<'_>,
) {
    convert_rows::<false>(src, src_stride, width, height, out)
}

/// Converts a picture in `order` to I420; see [`rgba_to_i420`].
pub fn to_i420(
    order: PixelOrder,
    src: &[u8],
    src_stride: usize,
    width: usize,
    height: usize,
    out: I420Planes<'_>,
) {
    match order {
        PixelOrder::Rgba => convert_rows::<false>(src, src_stride, width, height, out),
        PixelOrder::Bgrx => convert_rows::<true>(src, src_stride, width, height, out),
    }
}

// One monomorphised loop per byte order keeps the inner loop free of branches.
fn convert_rows<const BGR: bool>(
    src: &[u8],
    src_stride: usize,
    width: usize,
    height: usize,
    out: I420Planes<'_>,
) {
    assert!(
        width.is_multiple_of(2) && height.is_multiple_of(2),
        "I420 needs even sizes"
    );
    assert!(
        src.len() >= src_stride * (height - 1) + width * 4,
        "source too small"
    );
    let I420Planes {
        y,
        y_stride,
        u,
        u_stride,
        v,
        v_stride,
    } = out;
    for row in 0..height / 2 {
        let top = &src[2 * row * src_stride..][..width * 4];
        let bottom = &src[(2 * row + 1) * src_stride..][..width * 4];
        let (y_top, y_rest) = y[2 * row * y_stride..].split_at_mut(y_stride);
        let y_top = &mut y_top[..width];
        let y_bottom = &mut y_rest[..width];
        let u_row = &mut u[row * u_stride..][..width / 2];
        let v_row = &mut v[row * v_stride..][..width / 2];
        let blocks = top
            .chunks_exact(8)
            .zip(bottom.chunks_exact(8))
            .zip(y_top.chunks_exact_mut(2))
            .zip(y_bottom.chunks_exact_mut(2))
            .zip(u_row.iter_mut().zip(v_row.iter_mut()));
        for ((((t, b), yt), yb), (uo, vo)) in blocks {
            let px = |p: &[u8], i: usize| {
                let (r, g, b) = (i32::from(p[i]), i32::from(p[i + 1]), i32::from(p[i + 2]));
                if BGR { (b, g, r) } else { (r, g, b) }
            };
            let (r0, g0, b0) = px(t, 0);
            let (r1, g1, b1) = px(t, 4);
            let (r2, g2, b2) = px(b, 0);
            let (r3, g3, b3) = px(b, 4);
            yt[0] = luma(r0, g0, b0);
            yt[1] = luma(r1, g1, b1);
            yb[0] = luma(r2, g2, b2);
            yb[1] = luma(r3, g3, b3);
            // Sums of four pixels: scale the coefficients' shift by 2 more bits.
            let (r, g, b) = (r0 + r1 + r2 + r3, g0 + g1 + g2 + g3, b0 + b1 + b2 + b3);
            *uo = (((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128) as u8;
            *vo = (((112 * r - 94 * g - 18 * b + 512) >> 10) + 128) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(rgba: &[u8], w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let (mut y, mut u, mut v) = (vec![0; w * h], vec![0; w * h / 4], vec![0; w * h / 4]);
        rgba_to_i420(
            rgba,
            w * 4,
            w,
            h,
            I420Planes {
                y: &mut y,
                y_stride: w,
                u: &mut u,
                u_stride: w / 2,
                v: &mut v,
                v_stride: w / 2,
            },
        );
        (y, u, v)
    }

    #[test]
    fn primaries_land_on_their_bt601_values() {
        // (rgb, expected Y, U, V) for limited-range BT.601.
        let cases = [
            ([0, 0, 0], 16, 128, 128),
            ([255, 255, 255], 235, 128, 128),
            ([255, 0, 0], 82, 90, 240),
            ([0, 255, 0], 144, 54, 34),
            ([0, 0, 255], 41, 240, 110),
        ];
        for (rgb, ey, eu, ev) in cases {
            let px = [rgb[0], rgb[1], rgb[2], 255];
            let rgba: Vec<u8> = px.iter().copied().cycle().take(4 * 4 * 2).collect();
            let (y, u, v) = convert(&rgba, 4, 2);
            assert!(y.iter().all(|&s| s.abs_diff(ey) <= 1), "{rgb:?}: Y {y:?}");
            assert!(u.iter().all(|&s| s.abs_diff(eu) <= 1), "{rgb:?}: U {u:?}");
            assert!(v.iter().all(|&s| s.abs_diff(ev) <= 1), "{rgb:?}: V {v:?}");
        }
    }

    #[test]
    fn chroma_averages_each_two_by_two_block() {
        // Left block white, right block black: chroma neutral in both, luma follows pixels.
        let w = 4;
        let mut rgba = vec![0u8; w * 2 * 4];
        for row in 0..2 {
            for x in 0..2 {
                rgba[(row * w + x) * 4..][..4].copy_from_slice(&[255, 255, 255, 255]);
            }
        }
        let (y, u, v) = convert(&rgba, w, 2);
        assert_eq!(y, [235, 235, 16, 16, 235, 235, 16, 16]);
        assert_eq!(u, [128, 128]);
        assert_eq!(v, [128, 128]);
    }

    #[test]
    fn bgrx_reads_blue_first() {
        let px = [255u8, 0, 0, 0]; // blue in BGRx
        let src: Vec<u8> = px.iter().copied().cycle().take(4 * 2 * 2).collect();
        let (mut y, mut u, mut v) = (vec![0; 4], vec![0; 1], vec![0; 1]);
        super::to_i420(
            PixelOrder::Bgrx,
            &src,
            8,
            2,
            2,
            I420Planes {
                y: &mut y,
                y_stride: 2,
                u: &mut u,
                u_stride: 1,
                v: &mut v,
                v_stride: 1,
            },
        );
        assert!(y.iter().all(|&s| s.abs_diff(41) <= 1), "{y:?}");
        assert!(u[0].abs_diff(240) <= 1 && v[0].abs_diff(110) <= 1);
    }

    #[test]
    #[should_panic(expected = "even")]
    fn odd_sizes_are_refused() {
        convert(&[0; 3 * 2 * 4], 3, 2);
    }
}
