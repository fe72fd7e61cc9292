//! Counter-based random numbers for ops that draw on the device (dropout,
//! augmentation): every value is a pure function of `(seed, step, salt, index)`,
//! computed with 32-bit integer arithmetic that every backend does exactly the
//! same way (kernels/common.cuh has the CUDA copy). So a training step draws
//! the same numbers on the CPU and the GPU, a recorded step draws fresh ones
//! when the step counter on the device changes, and resuming at step `t` draws
//! what an uninterrupted run drew at step `t`.

/// A 32-bit integer hash with good avalanche (Chris Wellons' "lowbias32").
#[inline]
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The key of one stream: a seed, the training step and a salt that tells the
/// users of one step apart.
#[inline]
pub fn stream_key(seed: u32, step: u32, salt: u32) -> u32 {
    mix(mix(mix(seed) ^ step) ^ salt.wrapping_mul(0x9e37_79b9))
}

/// Draw `i` of a stream.
#[inline]
pub fn bits(key: u32, i: u32) -> u32 {
    mix(key ^ mix(i))
}

/// Uniform in [0, 1): the top 24 bits of a draw.
#[inline]
pub fn uniform(key: u32, i: u32) -> f32 {
    (bits(key, i) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Standard normal from draws 2i and 2i+1 (Box-Muller).
#[inline]
pub fn normal(key: u32, i: u32) -> f32 {
    let u1 = ((bits(key, 2 * i) >> 8) + 1) as f32 * (1.0 / 16_777_216.0); // (0, 1]
    let u2 = uniform(key, 2 * i + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// The 32-bit seed the device ops see for a 64-bit run seed.
pub fn device_seed(seed: u64) -> u32 {
    (seed ^ (seed >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_normal_have_the_right_moments() {
        let key = stream_key(7, 3, 1);
        let n = 200_000u32;
        let u: Vec<f64> = (0..n).map(|i| uniform(key, i) as f64).collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        let var = u.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005 && (var - 1.0 / 12.0).abs() < 0.002, "uniform mean {mean} var {var}");
        assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
        let z: Vec<f64> = (0..n).map(|i| normal(key, i) as f64).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "normal mean {mean} var {var}");
    }

    #[test]
    fn streams_differ_by_seed_step_and_salt() {
        let draw = |seed, step, salt| (0..64).map(|i| bits(stream_key(seed, step, salt), i)).collect::<Vec<_>>();
        let base = draw(1, 2, 3);
        assert_eq!(base, draw(1, 2, 3));
        for other in [draw(2, 2, 3), draw(1, 3, 3), draw(1, 2, 4)] {
            let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
            assert!(same <= 1, "{same} equal draws of 64");
        }
    }
}
