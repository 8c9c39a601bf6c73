//! Statistics and number formatting shared by the benchmarks and the soak: medians,
//! milliseconds, MiB, ratios.

/// min / median / max of a list (None when empty).
pub fn min_median_max(values: &mut [u64]) -> Option<(u64, u64, u64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some((
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    ))
}

/// The median of `v`, `None` when empty.
pub fn median(mut v: Vec<u64>) -> Option<u64> {
    min_median_max(&mut v).map(|(_, m, _)| m)
}

/// Microseconds as milliseconds with `decimals` places, or `n/a`.
pub fn ms(us: Option<u64>, decimals: usize) -> String {
    us.map_or("n/a".into(), |v| {
        format!("{:.*} ms", decimals, v as f64 / 1000.0)
    })
}

/// KiB as MiB with `decimals` places, or `n/a`.
pub fn mib(kib: Option<u64>, decimals: usize) -> String {
    kib.map_or("n/a".into(), |v| {
        format!("{:.*} MiB", decimals, v as f64 / 1024.0)
    })
}

/// `a / b` as `1.23x`, or `n/a`.
pub fn ratio(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => format!("{:.2}x", a as f64 / b as f64),
        _ => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(median(vec![5, 1, 3]), Some(3));
        assert_eq!(median(vec![]), None);
        assert_eq!(ms(Some(1500), 1), "1.5 ms");
        assert_eq!(mib(Some(2048), 0), "2 MiB");
        assert_eq!(ratio(Some(3), Some(2)), "1.50x");
        assert_eq!(ratio(Some(3), Some(0)), "n/a");
    }
}
