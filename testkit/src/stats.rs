//! Order statistics for the benchmark harnesses: on a shared machine single runs scatter
//! widely, so figures are medians, reported with how far the median itself can be trusted.

/// The median of `values` (the upper one of an even count); sorts them in place.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A distribution-free 95 % confidence interval of the median of `values`: the order
/// statistics k and n+1-k, with k the largest rank whose binomial tail stays within 2.5 %.
/// Fewer than six values give no such k, and the interval is their whole range. Sorts them in
/// place, like [`median`]: order statistics of unsorted values would be arbitrary ones.
pub fn median_interval(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let sorted = &*values;
    let n = sorted.len();
    let (mut tail, mut k) = (0.0, 0);
    let mut choose = 1.0; // C(n, i), built up one term at a time
    for i in 0..n {
        let next = tail + choose / 2f64.powi(n as i32);
        if next > 0.025 {
            break;
        }
        (tail, k) = (next, i + 1);
        choose = choose * (n - i) as f64 / (i + 1) as f64;
    }
    match k {
        0 => (sorted[0], sorted[n - 1]),
        k => (sorted[k - 1], sorted[n - k]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranks(n: usize) -> Vec<f64> {
        (1..=n).map(|i| i as f64).collect()
    }

    #[test]
    fn the_interval_is_the_textbook_pair_of_order_statistics() {
        // Binomial tables: n = 25 gives ranks 8 and 18 (95.7 %), n = 9 gives 2 and 8 (96.1 %).
        assert_eq!(median_interval(&mut ranks(25)), (8.0, 18.0));
        assert_eq!(median_interval(&mut ranks(9)), (2.0, 8.0));
        assert_eq!(median_interval(&mut ranks(6)), (1.0, 6.0));
        assert_eq!(median_interval(&mut ranks(3)), (1.0, 3.0));
    }

    #[test]
    fn the_interval_sorts_first() {
        // Harness rounds arrive in the order they ran.
        let mut shuffled = ranks(25);
        shuffled.reverse();
        shuffled.swap(3, 17);
        assert_eq!(median_interval(&mut shuffled), (8.0, 18.0));
    }

    #[test]
    fn the_median_sorts_first() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
