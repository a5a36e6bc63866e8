//! The shard's f32 arrays: a part's values and its optimizer state are
//! [`ArcArray1<f32>`], shared copy-on-write.
//!
//! Cloning one is shallow: no element is copied, so a snapshot for a pull
//! reply or a checkpoint shares what the part holds. Writing through
//! [`make_mut`] copies the elements once if, and only if, something else
//! still shares them; [`ArcArray1::is_unique`] tells beforehand whether it
//! will.
//!
//! Every such array is built by [`shared`] from a `Vec` and is never
//! sliced, reshaped or transposed (clones and copies keep its layout), so
//! it is always contiguous in standard order: the kernels get plain slices
//! ([`as_slice`], [`make_mut`]) and run exactly as on a `Vec`.

use ndarray::ArcArray1;

/// `values` as a shared array, in the same allocation (no copy).
pub fn shared(values: Vec<f32>) -> ArcArray1<f32> {
    ArcArray1::from_vec(values)
}

/// The elements of `array`, in order, without a copy.
///
/// # Panics
/// If `array` is not contiguous in standard order, which an array from
/// [`shared`], or any clone of one, always is.
pub fn as_slice(array: &ArcArray1<f32>) -> &[f32] {
    array.as_slice().expect("the shard's arrays are contiguous")
}

/// The elements of `array`, in order, to change in place: when something
/// else shares them they are first copied (once) into an allocation of
/// `array`'s own, which the others never see; otherwise nothing is copied.
///
/// # Panics
/// As [`as_slice`].
pub fn make_mut(array: &mut ArcArray1<f32>) -> &mut [f32] {
    array.as_slice_mut().expect("the shard's arrays are contiguous")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_the_elements_and_the_first_write_copies_them_once() {
        let v = vec![1.0f32, 2.0, 3.0];
        let at = v.as_ptr();
        let mut a = shared(v);
        assert_eq!(as_slice(&a).as_ptr(), at, "shared() moved the elements");
        let b = a.clone();
        assert_eq!(as_slice(&b).as_ptr(), at, "a clone copied the elements");
        assert!(!a.is_unique());

        make_mut(&mut a)[0] = 9.0;
        let copy = as_slice(&a).as_ptr();
        assert_ne!(copy, at, "a write to shared elements changed them in place");
        assert_eq!(as_slice(&b), [1.0, 2.0, 3.0], "the other holder saw the write");
        assert!(a.is_unique() && b.is_unique());

        make_mut(&mut a)[1] = 8.0;
        assert_eq!(as_slice(&a).as_ptr(), copy, "a write to unshared elements copied them");
        assert_eq!(as_slice(&a), [9.0, 8.0, 3.0]);
    }

    #[test]
    fn an_empty_array_is_a_slice_too() {
        let mut a = shared(Vec::new());
        let b = a.clone();
        assert!(make_mut(&mut a).is_empty());
        assert!(as_slice(&b).is_empty());
    }
}
