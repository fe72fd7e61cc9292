//! Patch whitening (the frozen first layer of airbench's CIFAR-10 network):
//! a k x k conv whose filters are the eigenvectors of the covariance of the
//! training images' k x k patches, each scaled by 1 / sqrt(eigenvalue + eps),
//! and their negatives. Its output has decorrelated channels of unit variance
//! (the negated copies let a following GELU keep both signs).

use rayon::prelude::*;

/// Output channels of a whitening conv of `kernel` x `kernel` patches of `c_in` channels.
pub fn filters(c_in: usize, kernel: usize) -> usize {
    2 * c_in * kernel * kernel
}

/// The added to each eigenvalue before the square root (airbench's).
pub const EPS: f32 = 5e-4;

/// The uncentred covariance `sum p p^T / count` of every `k` x `k` patch
/// (stride 1, no padding) of `images` (n, c, h, w): (d, d) with d = c k k,
/// patch elements in (c, ky, kx) order, as `torch.unfold` makes them.
pub fn patch_covariance(images: &[f32], [c, h, w]: [usize; 3], k: usize) -> Vec<f64> {
    let d = c * k * k;
    let plane = c * h * w;
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    // Patch element i is pixel (ch, y + ky, x + kx) of the patch at (y, x).
    let at = |i: usize| (i / (k * k), i / k % k, i % k);
    let pairs: Vec<(usize, usize)> = (0..d).flat_map(|i| (i..d).map(move |j| (i, j))).collect();
    // Per image and pair: the sum over patch positions of the two shifted
    // planes' product, row by row (contiguous, so the products vectorize).
    let per_image = |img: &[f32]| -> Vec<f64> {
        pairs
            .iter()
            .map(|&(i, j)| {
                let ((ci, yi, xi), (cj, yj, xj)) = (at(i), at(j));
                (0..oh)
                    .map(|y| {
                        let a = &img[ci * h * w + (y + yi) * w + xi..][..ow];
                        let b = &img[cj * h * w + (y + yj) * w + xj..][..ow];
                        a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>() as f64
                    })
                    .sum()
            })
            .collect()
    };
    let sums = images
        .par_chunks(plane.max(1))
        .map(per_image)
        .reduce(|| vec![0f64; pairs.len()], |a, b| a.iter().zip(&b).map(|(a, b)| a + b).collect());
    let count = (images.len() / plane.max(1) * oh * ow).max(1) as f64;
    let mut cov = vec![0f64; d * d];
    for (&(i, j), sum) in pairs.iter().zip(&sums) {
        cov[i * d + j] = sum / count;
        cov[j * d + i] = sum / count;
    }
    cov
}

/// Eigenvalues and eigenvectors of the symmetric (d, d) matrix `a` by cyclic
/// Jacobi rotations: (values, vectors) with vector j in column j (`v[i * d + j]`).
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v: Vec<f64> = (0..d * d).map(|i| if i / d == i % d { 1.0 } else { 0.0 }).collect();
    for _sweep in 0..100 {
        let off: f64 = (0..d).flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * d + j].powi(2)).sum();
        if off <= 1e-30 * (0..d).map(|i| a[i * d + i].powi(2)).sum::<f64>().max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub & Van Loan, 8.4.2).
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (cs, sn) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = cs * akp - sn * akq;
                    a[k * d + q] = sn * akp + cs * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = cs * apk - sn * aqk;
                    a[q * d + k] = sn * apk + cs * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = cs * vkp - sn * vkq;
                    v[k * d + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// The whitening filters for `images` (n, c, h, w, normalized as the model
/// sees them): (2 d, c, k, k) with d = c k k, eigenvectors in order of
/// decreasing eigenvalue, then their negatives (airbench's `init_whitening_conv`).
pub fn whitening_filters(images: &[f32], shape: [usize; 3], k: usize, eps: f32) -> Vec<f32> {
    let d = shape[0] * k * k;
    let (values, vectors) = symmetric_eigen(&patch_covariance(images, shape, k), d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut out = Vec::with_capacity(2 * d * d);
    for sign in [1.0, -1.0] {
        for &j in &order {
            let scale = sign / (values[j].max(0.0) + eps as f64).sqrt();
            out.extend((0..d).map(|i| (vectors[i * d + j] * scale) as f32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let d = 12;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let b: Vec<f64> = (0..d * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        // a = b b^T: symmetric positive semi-definite, like a covariance.
        let a: Vec<f64> = (0..d * d).map(|ij| (0..d).map(|k| b[ij / d * d + k] * b[ij % d * d + k]).sum()).collect();
        let (values, v) = symmetric_eigen(&a, d);
        for (i, j) in (0..d).flat_map(|i| (0..d).map(move |j| (i, j))) {
            let back: f64 = (0..d).map(|k| v[i * d + k] * values[k] * v[j * d + k]).sum();
            assert!((back - a[i * d + j]).abs() < 1e-9, "({i}, {j}): {back} vs {}", a[i * d + j]);
            let dot: f64 = (0..d).map(|k| v[k * d + i] * v[k * d + j]).sum();
            assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "eigenvectors not orthonormal at ({i}, {j})");
        }
    }

    #[test]
    fn whitened_patches_have_unit_variance_and_no_correlation() {
        // Correlated images: smooth noise (neighbouring pixels share most of their value) in 3 channels.
        let (n, shape) = (40, [3, 8, 8]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let base: Vec<f32> = (0..n * 3 * 9 * 9).map(|_| rng.random_range(-1.0..1.0)).collect();
        let images: Vec<f32> = (0..n * 3 * 64)
            .map(|i| {
                let (img, ch, y, x) = (i / 192, i / 64 % 3, i / 8 % 8, i % 8);
                let at = |dy: usize, dx: usize| base[((img * 3 + ch) * 9 + y + dy) * 9 + x + dx];
                at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1) + 0.5 * base[(img * 3) * 81 + y * 9 + x]
            })
            .collect();
        let k = 2;
        let f = whitening_filters(&images, shape, k, 0.0);
        assert_eq!(f.len(), filters(3, k) * 12);
        // The covariance of the first d filters' responses is the identity.
        let cov = patch_covariance(&images, shape, k);
        let d = 12;
        for (a, b) in (0..d).flat_map(|a| (0..d).map(move |b| (a, b))) {
            let r: f64 = (0..d)
                .flat_map(|i| (0..d).map(move |j| (i, j)))
                .map(|(i, j)| f[a * d + i] as f64 * cov[i * d + j] * f[b * d + j] as f64)
                .sum();
            assert!((r - if a == b { 1.0 } else { 0.0 }).abs() < 1e-3, "response covariance ({a}, {b}) = {r}");
        }
        // The second half is the negated first.
        assert!(f[..d * d].iter().zip(&f[d * d..]).all(|(a, b)| *a == -*b));
    }
}
