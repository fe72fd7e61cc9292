//! Datasets: the IDX file format and MNIST-style datasets built from it.

pub mod idx;
pub mod mnist;

pub use idx::{parse_idx, read_idx, IdxArray};
pub use mnist::{Dataset, Mnist, MNIST_MEAN, MNIST_STD};
